"""Which imputer fills each missing modality, chosen on validation folds, and the filling itself.

``impute.py`` (and, through :func:`impute_chosen`, any caller with a pretrained MAE and its training
patients) uses it like this:

1. :func:`validation_rows`: the ``imputation_quality`` rows of the fold checkpoints of the same
   pretraining (same modalities, model, settings, seed; folds 0..K-1 of the stored split), each
   scored on its own validation patients. Missing fold checkpoints are pretrained only if asked.
2. :func:`impumae.train.imputers.choose_imputers`: per modality, the best of decoder, ridge,
   kNN and mean by mean validation R^2 (the holdout is never read).
3. :func:`impute_chosen`: the decoder fills the modalities it won (and every non-tabular one); the
   chosen reference imputers are fitted on the checkpoint's own training patients, in its model
   space, and their imputations mapped back with ``FoldTransforms.inverse``.
4. The store records ``provenance["imputers"][modality]`` = the choice (method, validation R^2,
   per-feature validation R^2, folds); ``imputers.imputation_provenance`` reads it back.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from impumae.data.transforms import FoldTransforms
from impumae.data.cohort_view import REFIT, load_cohort_arrays
from impumae.train.imputation import impute_missing
from impumae.engine.pretrain_jobs import PretrainJob, checkpoint_url, ensure_pretrained
from impumae.train.imputers import (
    CHOOSABLE, PROVENANCE_KEY, ImputerError, choose_imputers, fit_chosen, impute_with_references, unvalidated)
from impumae import storage as _storage

FORCED = tuple(CHOOSABLE)


def fold_jobs(job: PretrainJob, n_folds: int) -> list[PretrainJob]:
    """The same pretraining on folds 0..n_folds-1 (the jobs a search builds for those folds)."""
    return [dataclasses.replace(job, fold=k) for k in range(n_folds)]


def validation_rows(job: PretrainJob, storage_url: str, cohort_url: str | None = None, pretrain_missing: bool = False,
                    echo=print) -> list[dict]:
    """``imputation_quality`` rows of every fold checkpoint of ``job``'s pretraining that exists under
    ``storage_url`` (or is pretrained, with ``pretrain_missing``), each on its validation patients."""
    from impumae.evaluation.imputation_quality import imputation_quality

    url = cohort_url or job.cohort_url
    n_folds = load_cohort_arrays(url, tuple(job.modalities), job.split).n_folds
    rows = []
    for fold_job in fold_jobs(job, n_folds):
        if not _storage.exists(checkpoint_url(storage_url, fold_job.key)):
            if not pretrain_missing:
                continue
            ensure_pretrained(fold_job, storage_url, workers=0, echo=lambda *a, **k: None)
        echo(f"  scoring the imputers on validation fold {fold_job.fold}")
        rows += imputation_quality(fold_job, storage_url, cohort_url=url)
    return rows


def read_validation_rows(path: str, job: PretrainJob, cohort_url: str | None = None) -> list[dict]:
    """Rows written by ``experiments/bench/imputation.py``, checked to come from ``job``'s own fold
    checkpoints (their ``key``); rows of another pretraining are refused."""
    import json
    from pathlib import Path

    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ImputerError(f"{path}: expected a JSON list of rows from experiments/bench/imputation.py")
    n_folds = load_cohort_arrays(cohort_url or job.cohort_url, tuple(job.modalities), job.split).n_folds
    keys = {j.key for j in fold_jobs(job, n_folds)}
    foreign = [r for r in rows if r.get("key") not in keys]
    if foreign:
        raise ImputerError(f"{path}: {len(foreign)} of {len(rows)} rows are not from this checkpoint's fold "
                           "pretrainings (their key differs or is absent); score this checkpoint's folds")
    return rows


def choose(rows: list[dict], modalities, method: str = "auto") -> dict[str, dict]:
    """The provenance entry of each modality: ``method="auto"`` = the validation choice (the decoder,
    marked unvalidated, where no fold scored a modality); a forced method is recorded with its
    validation R^2 where the rows have it, and ``forced: True``."""
    if method != "auto" and method not in FORCED:
        raise ImputerError(f"imputer {method!r}: expected auto or one of {FORCED}")
    chosen = choose_imputers(rows) if rows else {}
    out = {}
    for m in modalities:
        c = chosen.get(m)
        if method == "auto":
            out[m] = c if c is not None else unvalidated(
                [m], reason="no validation fold scored this modality; the decoder fills it unvalidated")[m]
            out[m] = {**out[m], "forced": False}
            continue
        by_method = c["validation_r2_by_method"] if c else {}
        out[m] = {**unvalidated([m], method, "forced by the user")[m], "forced": True,
                  "validation_r2": by_method.get(method), "validation_r2_by_method": by_method,
                  "folds": c["folds"] if c else []}
        if c and c["method"] == method:
            out[m]["validation_r2_per_feature"] = c["validation_r2_per_feature"]
    return out


def impute_chosen(mae, transforms: FoldTransforms, arrays, present, train_idx, choice: dict[str, dict],
                  batch_size: int = 128, seed: int = 0) -> tuple[dict, dict[str, dict]]:
    """``({modality: (rows, values in the store's input space)}, provenance per modality)`` for the rows
    lacking each modality: the decoder where ``choice`` says ``decoder`` (or the modality is not
    tabular), else the chosen reference, fitted on ``train_idx`` (the checkpoint's training patients)."""
    names = list(mae.names)
    tabular = [m for m in names if mae.kinds[m].has_feature_names]
    choice = {m: dict(choice.get(m) or unvalidated([m], reason="not in the choice")[m]) for m in names}
    for m in names:
        if m not in tabular and choice[m]["method"] != "decoder":
            raise ImputerError(f"modality {m!r} ({mae.specs[m].kind}): only the decoder imputes it, "
                               f"not {choice[m]['method']}")
    filled = impute_missing(mae, transforms, arrays, present, batch_size)
    references = {m: c for m, c in choice.items() if c["method"] != "decoder"}
    if references:
        train_idx = np.asarray(train_idx, dtype=np.int64)
        model_space = transforms.apply({m: arrays[m] for m in tabular}, {m: present[m] for m in tabular})
        fitted = fit_chosen(references, tabular, model_space, {m: present[m] for m in tabular}, train_idx, seed)
        for m, (rows, values) in impute_with_references(fitted, model_space, present).items():
            assert np.array_equal(rows, filled[m][0])
            filled[m] = (rows, transforms.transforms[m].inverse(values.astype(np.float32)) if len(rows) else None)
            choice[m]["fitted_on_patients"] = int(fitted[m].n_train)
            choice[m]["reference_info"] = {k: v for k, v in fitted[m].info.items() if k == "alpha"}
    return filled, choice


def provenance_entry(choice: dict[str, dict]) -> dict:
    """What goes into the imputed store's provenance (``{"imputers": ...}``)."""
    return {PROVENANCE_KEY: choice}


def training_indices(cohort_ids, train_ids) -> np.ndarray:
    """Rows of ``cohort_ids`` that are the checkpoint's training patients (all must be there)."""
    ids = np.asarray(cohort_ids).astype(str)
    idx = np.flatnonzero(np.isin(ids, np.asarray(train_ids, dtype=str)))
    if len(idx) != len(train_ids):
        raise ImputerError(f"{len(train_ids) - len(idx)} of the checkpoint's {len(train_ids)} training patients are "
                           "not in this cohort; the reference imputers are fitted on them, so use the cohort the "
                           "checkpoint was pretrained on or --imputer decoder")
    return idx


__all__ = ["FORCED", "REFIT", "choose", "read_validation_rows", "fold_jobs", "impute_chosen", "provenance_entry", "training_indices",
           "validation_rows"]
