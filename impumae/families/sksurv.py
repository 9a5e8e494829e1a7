"""The scikit-survival families: one :class:`SksurvFamily` per model of :mod:`impumae.survival.baselines`.

=========  ====================================================================================
linear     Cox with an elastic net at ONE penalty the search chooses (``linear_alpha_ratio``: the
           penalty as a fraction of the data's largest useful one; ``linear_l1_ratio``)
coxnet     Cox with an elastic net whose penalty is chosen inside each fold's training patients by
           inner cross-validation (the report's CoxNet baseline)
coxph      Cox with a small ridge penalty, PCA to 32 components above 32 features
rsf        random survival forest
gbsa       gradient-boosted Cox trees (scikit-survival's ``GradientBoostingSurvivalAnalysis``)
=========  ====================================================================================

Why ``linear`` is an elastic-net Cox and not the logistic-hazard model on impuTMAE's linear path
alone: the scikit-survival model is a well-tested standard estimator, needs no training loop or
epoch choice, and its penalty is exactly the kind of hyperparameter the search is for; the
linear path inside impuTMAE remains searched as part of ``impumae`` (``linear_l2``).

They need no pretraining. Their settings are the config keys ``<family>_<setting>`` for the
settings of :data:`impumae.survival.baselines.MODEL_PARAMS` (``rsf_min_samples_leaf`` ->
``min_samples_leaf``); the space declares them conditional on their family (``family: rsf``).
Their features are :func:`impumae.data.baseline_features.baseline_features` under the fold's
transforms, fitted by :func:`impumae.data.cohort_view.fit_transforms` on the fold's training
patients with the space's ``transforms:`` options: the call the fold's pretraining job makes for
the tokenised modalities (and the engine's ``model_and_transforms`` for the clinical ones), so the
transforms are the ones impuTMAE's fold uses (tested). A fold's history is one row (``epoch`` 1):
``fit_seconds`` and the validation metrics, computed as the fine-tuning loop computes them
(:func:`impumae.survival.metrics.evaluate` of the survival curves at the fold's grid, the
``TimeBins`` cuts of its training times; Harrell's C from minus the restricted mean survival time,
for every family alike). Such a configuration's fixed epoch is 1. The selected model keeps the
fitted pipeline (:class:`SksurvPredictor`, pickled as ``estimator.pkl``).
"""
from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from impumae import families
from impumae.data.baseline_features import baseline_features
from impumae.data.cohort_view import CohortArrays, fit_transforms, load_cohort_arrays
from impumae.data.transforms import FoldTransforms
from impumae.modalities import parse_subset
from impumae.survival.baselines import MODEL_PARAMS, common_grid, fit_baseline, on_grid, predict_baseline
from impumae.survival.metrics import evaluate
from impumae.train.finetune_loop import FinetuneConfig

ESTIMATOR_FILE = "estimator.pkl"


@dataclass
class SksurvFoldFit(families.FittedFold):
    """A scikit-survival model of one (subset, fold): the fitted-fold surface that trials, the
    holdout and exports use (``history``, ``grid``, ``survival(rows)``, the rows)."""
    family: str
    cohort: CohortArrays
    subset: tuple[str, ...]
    fold: int                      # REFIT for the refit on every non-holdout patient
    transforms: FoldTransforms
    estimator: Pipeline            # preprocessing + model (impumae.survival.baselines.fit_baseline)
    grid: np.ndarray               # the TimeBins cuts of the training times
    train_rows: np.ndarray
    val_rows: np.ndarray
    history: list[dict]            # one row: epoch 1, fit_seconds, val_* metrics (none for the refit)

    def features(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), F]: the subset's baseline features after the fold's transforms."""
        return np.concatenate(list(baseline_features(self.cohort, self.subset, self.transforms, rows).values()), axis=1)

    def clinical_columns(self) -> np.ndarray:
        """A boolean per feature column: whether it comes from a clinical-kind modality."""
        widths = {m: b.shape[1] for m, b in baseline_features(self.cohort, self.subset, self.transforms,
                                                              self.train_rows[:1]).items()}
        return np.concatenate([np.full(w, self.cohort.specs[m].kind == "clinical") for m, w in widths.items()])

    def survival(self, rows: np.ndarray) -> np.ndarray:
        """Survival probabilities [len(rows), len(grid)]: the model's step functions read at :attr:`grid`."""
        return on_grid(predict_baseline(self.estimator, self.features(rows)), self.grid).surv

    def risk(self, rows: np.ndarray) -> np.ndarray:
        """The model's own risk score (higher = earlier death), for Harrell's C in the report's baseline rows."""
        return predict_baseline(self.estimator, self.features(rows)).risk


def fit_sksurv_fold(ca: CohortArrays, subset, fold: int, family: str, params: dict | None = None, *, seed: int = 0,
                    n_bins: int = 20, transform_options: dict | None = None) -> SksurvFoldFit:
    """Fit scikit-survival model ``family`` on a fold's training patients (or the refit's,
    ``fold=REFIT``) and score its validation patients, as impuTMAE's fold is fitted and scored."""
    if family not in MODEL_PARAMS:
        raise ValueError(f"{family!r} is not a scikit-survival family ({tuple(MODEL_PARAMS)})")
    subset = tuple(subset)
    transforms = fit_transforms(ca, subset, ca.train_indices(fold), **(transform_options or {}))
    train_rows, val_rows = families.fold_populations(ca, subset, fold)
    fit = SksurvFoldFit(family=family, cohort=ca, subset=subset, fold=fold, transforms=transforms, estimator=None,
                        grid=common_grid(ca.time[train_rows], n_bins), train_rows=train_rows, val_rows=val_rows,
                        history=[])
    started = time.perf_counter()
    fit.estimator = fit_baseline(family, fit.features(train_rows), fit.train_time, fit.train_event, seed, params,
                                 unpenalized=fit.clinical_columns())
    row = {"epoch": 1, "fit_seconds": time.perf_counter() - started}
    if len(val_rows):
        metrics = evaluate(fit.survival(val_rows), fit.grid, ca.time[val_rows], ca.event[val_rows], fit.train_time,
                           fit.train_event)
        row.update({f"val_{k}": v for k, v in metrics.items()})
    fit.history = [row]
    return fit


@dataclass
class SksurvPredictor:
    """A scikit-survival family in the selected model: the estimator (or pipeline) fitted on the
    concatenated :func:`baseline_features` of the subset (in subset order) under the same
    fold-fitted transforms."""
    estimator: Any
    family: str
    fills_missing_tokenised: bool = True   # a missing modality's features are the training means

    def survival(self, selected, view: CohortArrays, rows: np.ndarray) -> np.ndarray:
        """The estimator's step functions read at the grid, as the fitted fold reads them
        (:func:`impumae.survival.baselines.on_grid`)."""
        features = baseline_features(view, selected.subset, selected.transforms, rows)
        x = np.concatenate([features[m] for m in selected.subset], axis=1)
        return on_grid(predict_baseline(self.estimator, x), selected.grid).surv

    def decoder(self) -> None:
        return None

    def state(self) -> dict:
        return {}

    def save_extra(self, directory: Path) -> None:
        (directory / ESTIMATOR_FILE).write_bytes(pickle.dumps(self.estimator))


class SksurvFamily(families.Family):
    """A model of :data:`impumae.survival.baselines.MODEL_PARAMS` as a family of the search."""

    def __init__(self, name: str, label: str):
        self.name, self.label = name, label

    def setting_name(self, key: str) -> str | None:
        prefix = f"{self.name}_"
        if key.startswith(prefix) and key[len(prefix):] in MODEL_PARAMS[self.name]:
            return key[len(prefix):]
        return None

    def check_parameter(self, name: str, where: str) -> None:
        if self.setting_name(name) is None:
            raise ValueError(f"{where}: a {self.name} parameter is named {self.name}_<setting> for a setting of "
                             f"{sorted(MODEL_PARAMS[self.name])}")

    def fit(self, ctx: families.FitContext, config: dict, fold: int, device, **overrides) -> SksurvFoldFit:
        """:func:`fit_sksurv_fold` with the search's fixed settings: its cohort, the transforms'
        options, the grid's bin count (the fine-tuning's ``n_bins``, so every family shares
        impuTMAE's grid); seed ``ctx.seed + fold`` unless ``overrides`` say otherwise (their other
        keys are fine-tuning fields, which a one-shot model has none of)."""
        subset = parse_subset(config["subset"])
        ca = load_cohort_arrays(ctx.cohort_url, subset, ctx.outer)
        return fit_sksurv_fold(ca, subset, fold, self.name, self.settings(config),
                               seed=overrides.get("seed", ctx.seed + fold),
                               n_bins=FinetuneConfig.from_dict(dict(ctx.finetune)).n_bins,
                               transform_options=ctx.transforms)

    def predictor(self, fitted: SksurvFoldFit) -> SksurvPredictor:
        return SksurvPredictor(fitted.estimator, self.name)

    def load_predictor(self, state: dict, directory: Path) -> SksurvPredictor:
        path = directory / ESTIMATOR_FILE
        try:
            return SksurvPredictor(pickle.loads(path.read_bytes()), self.name)
        except Exception as e:  # noqa: BLE001
            raise families.ModelLoadError(f"{path}: cannot unpickle the {self.name} estimator "
                                          f"({type(e).__name__}: {e})") from None


LABELS = {"linear": "Cox elastic net (searched penalty)", "coxnet": "CoxNet", "coxph": "CoxPH", "rsf": "RSF",
          "gbsa": "GBSA"}
FAMILIES = tuple(families.register(SksurvFamily(name, label)) for name, label in LABELS.items())
