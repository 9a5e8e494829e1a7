"""The features the classical baselines (CoxPH, CoxNet, RSF) get: one comparison for the report
and for ``experiments/finetune.py --baselines``.

Every modality of the subset counts, after the same fold-fitted transforms as the MAE, summarised
by its kind (``Kind.baseline_summary``: tabular and clinical features as they are, an MRI volume as
the mean and standard deviation of its voxels, WSI tiles as the per-channel mean intensity in 0..1).
A patient without a modality has NaN there, mean-imputed inside each baseline on its own training
patients.
"""
from __future__ import annotations

import numpy as np

from impumae.data.transforms import FoldTransforms, ModalityTransform
from impumae.modalities import ModalitySpec


def baseline_summary(spec: ModalitySpec, transform: ModalityTransform, values: np.ndarray) -> np.ndarray:
    """``[n, F]`` float64 features of ``n`` present samples of one modality (store values)."""
    return spec.kind_object.baseline_summary(transform.apply(values, np.ones(len(values), bool)))


def baseline_features(ca, subset, transforms: FoldTransforms, rows: np.ndarray | None = None,
                      chunk: int = 256) -> dict[str, np.ndarray]:
    """``{modality: [len(rows), F]}`` for the cohort ``rows`` (default: every patient); the rows of
    patients without the modality are NaN. Summarised ``chunk`` patients at a time (every summary
    is per patient), so that a cohort's slides are never copied at once."""
    rows = np.arange(len(ca.ids)) if rows is None else np.asarray(rows)
    out = {}
    for m in subset:
        present = ca.present[m][rows]
        chosen = rows[present]
        parts = [baseline_summary(ca.specs[m], transforms.transforms[m], ca.arrays[m][chosen[i:i + chunk]])
                 for i in range(0, len(chosen), chunk)]
        if not parts:  # nobody has it: the width of one summary, from one patient's (missing) values
            parts = [baseline_summary(ca.specs[m], transforms.transforms[m], ca.arrays[m][rows[:1]])[:0]]
        summary = np.concatenate(parts)
        block = np.full((len(rows), summary.shape[1]), np.nan)
        block[present] = summary
        out[m] = block
    return out
