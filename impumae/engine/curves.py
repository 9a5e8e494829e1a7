"""Validation curves and the fixed epoch of a configuration.

Each fold's fine-tuning records its validation metrics after every epoch (its curve). A
configuration gets **one** epoch count: the epoch at which the mean of its folds' validation
CS-score curves is highest (ties: the earliest). Its validation metrics are read at that epoch in
every fold, and the refit trains that many epochs. No fold's own best epoch is used: picking each
fold's best epoch on the fold's validation patients peeks at them and inflates the validation
scores (and the refit cannot reproduce a per-fold choice). :func:`peek_metrics` computes that
optimistic number only to report it beside the honest one.
"""
from __future__ import annotations

import warnings

import numpy as np

FOLD_METRICS = ("val_c_index", "val_c_index_harrell", "val_ibs", "val_cs_score")
SELECTION_METRIC = "val_cs_score"   # the curve whose mean chooses the epoch (higher is better)


def validation_curve(history: list[dict]) -> dict[str, np.ndarray]:
    """``{metric: values per epoch}`` for each of :data:`FOLD_METRICS` (NaN where an epoch has none,
    e.g. the refit, which has no validation patients). Index ``e - 1`` holds epoch ``e``."""
    return {m: np.array([row.get(m, np.nan) for row in history], dtype=float) for m in FOLD_METRICS}


def mean_curve(curves: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per epoch and metric, the mean over folds (NaN-aware) of their validation curves."""
    lengths = {len(c[SELECTION_METRIC]) for c in curves}
    if len(lengths) != 1:
        raise ValueError(f"the folds' validation curves have different lengths {sorted(lengths)}; "
                         f"a configuration's folds train the same number of epochs")
    with warnings.catch_warnings():  # an epoch with no finite value in any fold stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {m: np.nanmean(np.stack([c[m] for c in curves]), axis=0) for m in FOLD_METRICS}


def fixed_epoch(curve: dict[str, np.ndarray]) -> int:
    """The epoch (1-based) where ``curve``'s CS-score is highest; ties go to the earliest epoch. A
    curve without any finite CS-score (no validation patients) gives its last epoch."""
    scores = curve[SELECTION_METRIC]
    if not np.isfinite(scores).any():
        return len(scores)
    return int(np.argmax(np.where(np.isfinite(scores), scores, -np.inf))) + 1


def at_epoch(curve: dict[str, np.ndarray], epoch: int) -> dict[str, float]:
    """The metrics of ``curve`` at ``epoch`` (1-based)."""
    return {m: float(values[epoch - 1]) for m, values in curve.items()}


def peek_metrics(curve: dict[str, np.ndarray]) -> dict[str, float]:
    """One fold's metrics at the epoch its own validation CS-score is highest: an optimistic number
    (the epoch is chosen on the same patients that score it), reported only to show the optimism."""
    return at_epoch(curve, fixed_epoch(curve))


def summarise_folds(curves: list[dict[str, np.ndarray]]) -> dict:
    """What a configuration's folds say: ``fixed_epoch`` (from the mean curve), ``mean_<metric>`` and
    ``std_<metric>`` over folds at that epoch, ``mean_<metric>_peek`` (the mean over folds of each
    fold's metrics at its own best epoch) and ``fold_mean_curve`` (``{metric: [value per epoch]}``)."""
    mean = mean_curve(curves)
    epoch = fixed_epoch(mean)
    out: dict = {"fixed_epoch": epoch}
    at_fixed = [at_epoch(c, epoch) for c in curves]
    peeks = [peek_metrics(c) for c in curves]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for m in FOLD_METRICS:
            values = np.array([f[m] for f in at_fixed])
            out[f"mean_{m}"] = float(np.nanmean(values))
            out[f"std_{m}"] = float(np.nanstd(values))
            out[f"mean_{m}_peek"] = float(np.nanmean([p[m] for p in peeks]))
    out["fold_mean_curve"] = {m: [float(v) for v in values] for m, values in mean.items()}
    return out
