"""Survival side of impuTMAE: time bins, the logistic-hazard loss, metrics and classical baselines.

`baselines` (scikit-survival models) is imported on demand: ``from impumae.survival import baselines``.
"""

from impumae.survival.bins import TimeBins, check_labels, check_times
from impumae.survival.losses import nll_logistic_hazard
from impumae.survival.metrics import (
    bootstrap_ci,
    brier_ipcw,
    concordance_antolini,
    concordance_harrell,
    cs_score,
    evaluate,
    integrated_brier_score,
    interpolate_survival,
    survival_curve,
)

__all__ = [
    "TimeBins",
    "check_labels",
    "check_times",
    "nll_logistic_hazard",
    "bootstrap_ci",
    "brier_ipcw",
    "concordance_antolini",
    "concordance_harrell",
    "cs_score",
    "evaluate",
    "integrated_brier_score",
    "interpolate_survival",
    "survival_curve",
]
