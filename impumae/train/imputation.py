"""Filling a cohort's missing modalities with a pretrained MAE's decoder (``experiments/impute.py``).

For every patient and every tokenised modality of the checkpoint that the patient lacks, the MAE
reconstructs the modality from the modalities the patient has (deterministic: eval mode, nothing
masked but what is missing), in the model's space; ``FoldTransforms.inverse`` maps it back to the
store's input space.
"""
from __future__ import annotations

import numpy as np
import torch

from impumae.data.transforms import FoldTransforms
from impumae.model.mae import MultimodalMAE
from impumae.train import checkpoint


def load_imputer(url: str, device="cpu") -> checkpoint.PretrainedMAE:
    """The pretrained MAE at ``url`` in eval mode, with its transforms, job and training ids."""
    pretrained = checkpoint.load_pretrained(url, device)
    pretrained.model.eval()
    return pretrained


def invertible_transforms(transforms: FoldTransforms, names, cohort, arrays, present, train_ids,
                          echo=print) -> FoldTransforms:
    """The checkpoint's transforms, refitted on its own training patients if they predate ``inverse``."""
    stale = [m for m in names if not transforms.transforms[m].invertible]
    if not stale:
        return transforms
    train_idx = np.flatnonzero(np.isin(np.asarray(cohort.patient_ids).astype(str), np.asarray(train_ids, dtype=str)))
    if len(train_idx) != len(train_ids):
        raise ValueError(f"the checkpoint's transforms for {stale} lack what inverse() needs and its training "
                         "patients are not all in this cohort, so they cannot be refitted; re-run the pretraining")
    refit = FoldTransforms.fit({m: arrays[m] for m in stale}, present, train_idx, cohort.specs,
                               {m: cohort.value_types.get(m, "raw") for m in stale})
    for m in stale:
        old, new = transforms.transforms[m], refit.transforms[m]
        if old.keep is not None and not np.array_equal(old.keep, new.keep):
            raise ValueError(f"modality {m!r}: refitting the checkpoint's transforms kept other features; "
                             "re-run the pretraining")
        old.raw_mean, old.median_scale = new.raw_mean, new.median_scale
    echo(f"note: refitted the inverse statistics of {stale} on the checkpoint's {len(train_idx)} training patients")
    return transforms


@torch.no_grad()
def impute_missing(mae: MultimodalMAE, transforms: FoldTransforms, arrays, present,
                   batch_size: int = 128) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{modality: (rows, values in the store's input space)} for the rows where the modality is missing."""
    names = list(mae.names)
    need = np.flatnonzero(~np.all([present[m] for m in names], axis=0))
    out = {m: [] for m in names}
    for start in range(0, len(need), batch_size):
        rows = need[start:start + batch_size]
        values = transforms.apply({m: arrays[m][rows] for m in names}, {m: present[m][rows] for m in names})
        x = {m: torch.as_tensor(values[m]) for m in names}
        p = {m: torch.as_tensor(present[m][rows]) for m in names}
        recon = mae.reconstruct(x, p)
        for m in names:
            missing = ~present[m][rows]
            if missing.any():
                model_space = recon[m][torch.as_tensor(missing)].float().cpu().numpy()
                out[m].append((rows[missing], transforms.transforms[m].inverse(model_space)))
    result = {}
    for m in names:
        if out[m]:
            result[m] = (np.concatenate([r for r, _ in out[m]]), np.concatenate([v for _, v in out[m]]))
        else:
            result[m] = (np.zeros(0, np.int64), None)
    assert all(len(result[m][0]) == int((~present[m]).sum()) for m in names)
    return result
