"""How well the pretrained MAE's decoder imputes a missing modality, against plain reference imputers.

For each tokenised modality ``m`` of a pretrained MAE, the evaluated patients are those who *have*
``m`` and at least one other modality of the model: ``m`` is hidden from the model
(``present[m] = False`` at input, so it is fully masked exactly as a truly missing modality is) and
the decoder's reconstruction is compared with the real values. The references, fitted on the
MAE's own pretraining patients (never the evaluated ones):

- ``mean``: the training mean of each feature of ``m`` (over training patients that have ``m``);
- ``knn``: scikit-learn ``KNNImputer`` (5 neighbours, nan-Euclidean distance) on the concatenated
  *tabular* modalities of the model; for an evaluated patient the columns of ``m`` are set to NaN
  and filled from the training patients nearest on the modalities the patient has;
- ``ridge``: multi-output ``RidgeCV`` of ``m`` on the model's other tabular modalities (penalty by
  5-fold CV on the training rows; a source the patient lacks = its training mean + an indicator);
- ``iterative``: scikit-learn ``IterativeImputer`` (BayesianRidge) on [other tabular modalities | m].
  (:mod:`impumae.train.imputers` has the details.) The three are computed for tabular ``m``
  only (a 64^3 volume or ten RGB tiles per patient is not a kNN problem); volume and image rows
  report NaN for them, with a note.

Everything is compared in the model's input space (after the fold-fitted transforms the MAE was
pretrained with). Metrics per (modality, method): MSE over all values; per-feature R^2
(``r2_per_feature``, NaN for a feature that does not vary among the evaluated patients) with its
median and the number of features above 0.3; and R^2 =
``sklearn.metrics.r2_score(..., multioutput="variance_weighted")`` (1 - total squared error /
total variance of the evaluated values around their own per-feature mean; 0 = as good as the
evaluated set's own mean, which the training mean can only approach).

Which patients: the refit checkpoint (fold ``REFIT``, pretrained on every non-holdout patient) is
scored on the holdout patients; a fold checkpoint on that fold's validation patients. Both are
disjoint from the pretraining patients by construction, and this is checked.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import r2_score

from impumae.data.transforms import FoldTransforms
from impumae.data.cohort_view import REFIT, load_cohort_arrays
from impumae.engine.pretrain_jobs import PretrainJob, load_pretrained
from impumae.train.imputers import ReferenceImputer, per_feature_r2, r2_summary

METHODS = ("decoder", "mean", "knn", "ridge", "iterative")


def evaluation_indices(ca, fold: int) -> np.ndarray:
    """The patients a checkpoint of ``fold`` is scored on: holdout for REFIT, else the validation fold."""
    return ca.holdout_indices() if fold == REFIT else ca.validation_indices(fold)


def imputation_quality(job: PretrainJob, storage: str, eval_idx: np.ndarray | None = None,
                       cohort_url: str | None = None, device: str | torch.device = "cpu",
                       batch_size: int = 128, methods=METHODS) -> list[dict]:
    """Rows ``{modality, method, n_patients, r2, mse}`` for every tokenised modality of ``job``'s MAE.

    ``eval_idx`` defaults to `evaluation_indices` of the job's fold. ``cohort_url`` overrides the
    cohort location recorded in the job (a moved store). ``methods``: which of ``METHODS`` to score
    (all by default; IterativeImputer on 1,544 genes takes minutes).
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown imputation methods {sorted(unknown)}; expected some of {METHODS}")
    url = cohort_url or job.cohort_url
    ca = load_cohort_arrays(url, tuple(job.modalities))
    pretrained = load_pretrained(job, storage, device)
    mae, transforms = pretrained.model, pretrained.transforms
    train_idx = np.flatnonzero(np.isin(ca.ids, np.asarray(pretrained.train_ids, dtype=str)))
    eval_idx = evaluation_indices(ca, job.fold) if eval_idx is None else np.asarray(eval_idx)
    overlap = np.intersect1d(train_idx, eval_idx)
    if overlap.size:
        raise ValueError(f"{overlap.size} evaluated patients were pretraining patients of this MAE "
                         f"(e.g. {ca.ids[overlap[0]]}); score a checkpoint on patients it never saw")
    names = list(mae.names)
    # Transform only what is scored: every modality of the evaluated patients, every training row of
    # the tabular modalities (kNN), and of an image or volume only the training rows that have it
    # (its mean). The open TCGA cohort's slides for all patients are 2.1 GB even as uint8.
    eval_values = transformed_values(ca, names, transforms, eval_idx)
    train_values = transformed_values(ca, [m for m in names if mae.kinds[m].has_feature_names], transforms, train_idx)
    train_present = {m: ca.present[m][train_idx] for m in names}
    eval_present = {m: ca.present[m][eval_idx] for m in names}

    rows = []
    for m in names:
        others = [o for o in names if o != m]
        has_other = np.any([eval_present[o] for o in others], axis=0) if others else np.zeros(len(eval_idx), bool)
        chosen = np.flatnonzero(eval_present[m] & has_other)
        if chosen.size == 0:
            reason = "the model has no other modality" if not others else "no evaluated patient has it and another modality"
            rows += [{"modality": m, "method": method, "fold": int(job.fold), "n_patients": 0, "r2": np.nan,
                      "mse": np.nan, "note": reason}
                     for method in methods]
            continue
        truth = _as_float(eval_values[m][chosen]).reshape(len(chosen), -1)
        train_with_m = (train_values[m][train_present[m]] if m in train_values  # the training patients who have m
                        else transformed_values(ca, [m], transforms, train_idx[train_present[m]])[m])
        predictions = {}
        if "decoder" in methods:
            predictions["decoder"] = decoder_imputation(mae, eval_values, eval_present, m, chosen, device, batch_size)
        if "mean" in methods:
            predictions["mean"] = np.broadcast_to(_as_float(train_with_m).reshape(len(train_with_m), -1).mean(0),
                                                  truth.shape)
        tabular_others = tuple(o for o in others if mae.kinds[o].has_feature_names)
        for method in [k for k in ("knn", "ridge", "iterative") if k in methods]:
            if not mae.kinds[m].has_feature_names:
                predictions[method] = f"{method} is not computed for {mae.specs[m].kind} modalities"
            elif not tabular_others:
                predictions[method] = f"{method} needs another tabular modality in the model"
            else:
                predictions[method] = reference_imputation(method, m, tabular_others, train_values, train_present,
                                                           eval_values, eval_present, chosen)
        for method, pred in predictions.items():
            row = {"modality": m, "method": method, "fold": int(job.fold), "n_patients": int(chosen.size)}
            if isinstance(pred, str):
                rows.append({**row, "r2": np.nan, "mse": np.nan, "note": pred})
                continue
            pred = np.asarray(pred, dtype=np.float64).reshape(truth.shape)
            per_feature = per_feature_r2(truth, pred)
            rows.append({**row, "r2": _r2(truth, pred), "mse": float(np.mean((truth - pred) ** 2)), "note": "",
                         **r2_summary(per_feature), "r2_per_feature": per_feature.tolist()})
    return rows


def transformed_values(ca, names, transforms: FoldTransforms, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The model-input values of ``rows`` (missing modality rows = 0). Images stay uint8: as float
    the slides of the open TCGA cohort alone are 8.7 GB; :func:`_as_float` converts what is scored."""
    return transforms.apply({m: ca.arrays[m][rows] for m in names}, {m: ca.present[m][rows] for m in names})


def _as_float(values: np.ndarray) -> np.ndarray:
    """Model-input values as floats on the decoder's output scale (uint8 images -> [0, 1])."""
    return values.astype(np.float32) / 255.0 if values.dtype == np.uint8 else values


@torch.no_grad()
def decoder_imputation(mae, values, present, modality, chosen, device, batch_size) -> np.ndarray:
    out = []
    for start in range(0, len(chosen), batch_size):
        rows = chosen[start:start + batch_size]
        x = {m: torch.as_tensor(values[m][rows], device=device) for m in mae.names}
        hidden = {m: torch.as_tensor(present[m][rows] & (m != modality), device=device) for m in mae.names}
        out.append(mae.reconstruct(x, hidden)[modality].float().cpu().numpy().reshape(len(rows), -1))
    return np.concatenate(out)


def reference_imputation(method, modality, sources, train_values, train_present, eval_values, eval_present,
                         chosen) -> np.ndarray:
    """``method``'s imputation of ``modality`` for the evaluated rows ``chosen``, fitted on every
    training row (the MAE's pretraining patients) and never on an evaluated one."""
    names = (modality, *sources)
    values = {m: np.concatenate([np.asarray(train_values[m], np.float64).reshape(len(train_values[m]), -1),
                                 np.asarray(eval_values[m], np.float64).reshape(len(eval_values[m]), -1)])
              for m in names}
    present = {m: np.concatenate([train_present[m], eval_present[m]]) for m in names}
    n_train = len(train_present[modality])
    imputer = ReferenceImputer(method, modality, sources).fit(values, present, np.arange(n_train))
    return imputer.predict(values, present, n_train + np.asarray(chosen))


def _r2(truth: np.ndarray, pred: np.ndarray) -> float:
    if truth.shape[0] < 2 or float(np.var(truth, axis=0).sum()) == 0.0:
        return float("nan")
    return float(r2_score(truth, pred, multioutput="variance_weighted"))
