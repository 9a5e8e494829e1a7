"""Model families of the search: which kinds of survival model a trial can be, and how a
scikit-survival family fits one fold.

A search space may search ``family`` (``search: family: {type: categorical, choices: [...]}``;
absent = ``impumae`` only, exactly as before). Every family is trained and validated on the same
folds and populations (:func:`impumae.engine.fold.fold_populations`: a fold's training / validation
patients with the anchor modality; the refit: every non-holdout patient with it), from the same
fold-fitted transforms, and scored on the same grid with the same metrics, so one trial table ranks
them all:

=========  ====================================================================================
impumae    the multimodal MAE: pretrained per (subset, fold), fine-tuned (:func:`fit_fold`); one
           validation row per epoch, one epoch per configuration from the mean curve
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

The scikit-survival families (:data:`SKSURV_FAMILIES`) need no pretraining. Their settings are
the config keys ``<family>_<setting>`` for the settings of
:data:`impumae.survival.baselines.MODEL_PARAMS` (``rsf_min_samples_leaf`` -> ``min_samples_leaf``);
the space declares them conditional on their family (``family: rsf``). Their features are
:func:`impumae.data.baseline_features.baseline_features` under the fold's transforms,
fitted by :func:`impumae.data.cohort_view.fit_transforms` on the fold's training patients with
the space's ``transforms:`` options: the call the fold's pretraining job makes for the tokenised
modalities (and :func:`impumae.engine.fold.model_and_transforms` for the clinical ones), so the
transforms are the ones impuTMAE's fold uses (tested). A fold's history is one row (``epoch`` 1):
``fit_seconds`` and the validation metrics, computed as the fine-tuning loop computes them
(:func:`impumae.survival.metrics.evaluate` of the survival curves at the fold's grid, the
``TimeBins`` cuts of its training times; Harrell's C from minus the restricted mean survival time,
for every family alike). Such a configuration's fixed epoch is 1.

The one entry that fits a (configuration, fold) of any family is
:func:`impumae.engine.trial.fit_search_fold` (trials' folds and the refit); it hands the
scikit-survival families to :func:`fit_sksurv_family_fold`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.pipeline import Pipeline

from impumae.data.transforms import FoldTransforms
from impumae.data.cohort_view import CohortArrays, fit_transforms, load_cohort_arrays
from impumae.engine.fold import FittedFold, finetune_config, fold_populations
from impumae.data.baseline_features import baseline_features
from impumae.family_names import ENSEMBLE, FAMILIES, FAMILY_PARAM, IMPUMAE, LABELS, SKSURV_FAMILIES  # noqa: F401
from impumae.modalities import parse_subset
from impumae.survival.baselines import MODEL_PARAMS, common_grid, fit_baseline, on_grid, predict_baseline
from impumae.survival.metrics import evaluate


def family_of(config: dict) -> str:
    """The family of a configuration (``impumae`` when it names none); an unknown one is an error."""
    family = str(config.get(FAMILY_PARAM, IMPUMAE))
    if family not in (*FAMILIES, ENSEMBLE):
        raise ValueError(f"configuration {config}: unknown model family {family!r}; choose from {FAMILIES}")
    return family


def needs_pretraining(family: str) -> bool:
    """Whether a family's folds load a pretrained MAE (only impuTMAE's do)."""
    return family == IMPUMAE


def member_families(config: dict) -> list[str]:
    """The families a configuration fits: its own, or an ensemble's members'."""
    if family_of(config) == ENSEMBLE:
        return [family_of(m["config"]) for m in config["members"]]
    return [family_of(config)]


def setting_name(family: str, key: str) -> str | None:
    """The setting of ``family``'s model that config ``key`` names (``rsf_min_samples_leaf`` ->
    ``min_samples_leaf``), or None when it names none."""
    prefix = f"{family}_"
    if family in SKSURV_FAMILIES and key.startswith(prefix) and key[len(prefix):] in MODEL_PARAMS[family]:
        return key[len(prefix):]
    return None


def family_params(config: dict) -> dict:
    """The model settings a scikit-survival configuration sets (see :func:`setting_name`)."""
    family = family_of(config)
    return {setting_name(family, k): v for k, v in config.items() if setting_name(family, k)}


@dataclass
class SksurvFoldFit(FittedFold):
    """A scikit-survival model of one (subset, fold): the surface of :class:`FoldFit` that trials,
    the holdout and exports use (``history``, ``curve``, ``grid``, ``survival(rows)``, the rows)."""
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
    """Fit scikit-survival ``family`` on a fold's training patients (or the refit's, ``fold=REFIT``)
    and score its validation patients, as :func:`impumae.engine.fold.fit_fold` does for impuTMAE."""
    if family not in SKSURV_FAMILIES:
        raise ValueError(f"{family!r} is not a scikit-survival family ({SKSURV_FAMILIES})")
    subset = tuple(subset)
    transforms = fit_transforms(ca, subset, ca.train_indices(fold), **(transform_options or {}))
    train_rows, val_rows = fold_populations(ca, subset, fold)
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


def fit_sksurv_family_fold(ctx, config: dict, fold: int, seed: int) -> SksurvFoldFit:
    """:func:`fit_sksurv_fold` of a configuration with a search's fixed settings (``ctx``: a
    :class:`impumae.engine.trial.SearchContext`): its cohort, the transforms' options, and the
    grid's bin count (the fine-tuning's ``n_bins``, so every family shares impuTMAE's grid)."""
    subset = parse_subset(config["subset"])
    ca = load_cohort_arrays(ctx.cohort_url, subset, ctx.outer)
    return fit_sksurv_fold(ca, subset, fold, family_of(config), family_params(config), seed=seed,
                           n_bins=finetune_config(ctx.finetune, {}).n_bins, transform_options=ctx.transforms)
