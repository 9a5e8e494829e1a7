"""Validation curves, the fixed epoch of a configuration, and its validation score.

Each fold's fine-tuning records its validation metrics after every epoch (its curve). A
configuration gets **one** epoch count for its refit: the epoch at which the mean of its folds'
validation CS-score curves is highest (ties: the earliest), and the refit trains that many epochs.

**Its validation score is read at a held-out epoch.** The epoch is one more hyperparameter fitted
on validation folds: read at the epoch chosen from the mean curve of the *same* folds, an
epoch-wise family (impuTMAE, 12 epochs) gets a score that is tuned on the patients who score it,
while a one-shot family (scikit-survival, one row) does not, so selection across families favoured
the most tuned one. Here fold j's metrics are read at the epoch chosen from the mean curve of the
*other* folds (leave-one-fold-out, :func:`held_out_epochs`), and the configuration's validation
metrics (``mean_<metric>``) are the mean over folds of those: as unbiased as a one-shot family's.
The number read at the shared epoch is kept beside it (``mean_<metric>_shared_epoch``), and so is
the per-fold best epoch's (``mean_<metric>_peek``, :func:`peek_metrics`), the most optimistic; both
only to show the optimism. With one fold done there is no other fold to choose from: its own
curve's best epoch stands in (a running value; ASHA acts from two folds on).
"""
from __future__ import annotations

import warnings

import numpy as np

FOLD_METRICS = ("val_c_index", "val_c_index_strict", "val_c_index_harrell", "val_ibs", "val_cs_score",
                "val_constant_predictions")
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


def held_out_epochs(curves: list[dict[str, np.ndarray]]) -> list[int]:
    """For each fold j, the epoch :func:`fixed_epoch` chooses from the mean curve of the other folds
    (with a single fold: its own best epoch)."""
    if len(curves) == 1:
        return [fixed_epoch(curves[0])]
    return [fixed_epoch(mean_curve(curves[:j] + curves[j + 1:])) for j in range(len(curves))]


def summarise_folds(curves: list[dict[str, np.ndarray]]) -> dict:
    """What a configuration's folds say: ``fixed_epoch`` (from the mean curve of every fold: the
    refit's epoch), ``mean_<metric>`` and ``std_<metric>`` over folds of each fold's metrics at its
    held-out epoch (:func:`held_out_epochs`: the validation score selection uses),
    ``held_out_epochs``, ``mean_<metric>_shared_epoch`` (every fold at ``fixed_epoch``),
    ``mean_<metric>_peek`` (each fold at its own best epoch) and ``fold_mean_curve``
    (``{metric: [value per epoch]}``)."""
    mean = mean_curve(curves)
    epoch = fixed_epoch(mean)
    held_out = held_out_epochs(curves)
    out: dict = {"fixed_epoch": epoch, "held_out_epochs": held_out}
    at_held_out = [at_epoch(c, e) for c, e in zip(curves, held_out)]
    at_fixed = [at_epoch(c, epoch) for c in curves]
    peeks = [peek_metrics(c) for c in curves]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for m in FOLD_METRICS:
            values = np.array([f[m] for f in at_held_out])
            out[f"mean_{m}"] = float(np.nanmean(values))
            out[f"std_{m}"] = float(np.nanstd(values))
            out[f"mean_{m}_shared_epoch"] = float(np.nanmean([f[m] for f in at_fixed]))
            out[f"mean_{m}_peek"] = float(np.nanmean([p[m] for p in peeks]))
    out["fold_mean_curve"] = {m: [float(v) for v in values] for m, values in mean.items()}
    return out
