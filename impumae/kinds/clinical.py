"""``clinical``: a short vector of covariates per patient, shape ``(n_features,)`` (age, treatments).

Never tokenised: the survival head concatenates it to the fused representation. Fold-fitted
transform (:class:`ClinicalTransform`): continuous columns z-scored with the training mean and
standard deviation, 0/1 columns kept as they are (the paper: do not z-score binaries), NaN -> the
training mean; ``inverse`` un-z-scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from impumae.kinds import register
from impumae.kinds.fitted import ModalityTransform, nanmean_or_zero, standardisation
from impumae.kinds.tabular import FeatureVectorKind


@dataclass
class ClinicalTransform(ModalityTransform):
    fill: np.ndarray | None = None          # per-column NaN fill, in model space
    center: np.ndarray | None = None        # z-score centre (binary columns: 0)
    scale: np.ndarray | None = None         # z-score scale (binary columns: 1)

    def fit(self, train_values: np.ndarray, sd_threshold: float) -> "ClinicalTransform":
        x = np.asarray(train_values, dtype=np.float64)
        if len(x) == 0:
            raise ValueError(f"modality {self.name!r}: no training patient has it; cannot fit transforms")
        binary = np.array([np.isin(c[~np.isnan(c)], (0.0, 1.0)).all() for c in x.T])
        center, scale = standardisation(x)
        self.center = np.where(binary, 0.0, center)
        self.scale = np.where(binary, 1.0, scale)
        self.fill = nanmean_or_zero((x - self.center) / self.scale)
        return self

    def transform_values(self, values: np.ndarray) -> np.ndarray:
        x = (np.asarray(values, dtype=np.float64) - self.center) / self.scale
        return np.where(np.isnan(x), self.fill, x).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values).astype(np.float64) * self.scale + self.center).astype(np.float32)

    @property
    def invertible(self) -> bool:
        return self.center is not None


class Clinical(FeatureVectorKind):
    name = "clinical"
    tokenised = False
    default_value_type = "clinical"
    transform = ClinicalTransform

    def n_tokens(self, spec) -> int:
        return 0

    def patch_dim(self, spec) -> int:
        return 0


CLINICAL = register(Clinical())
