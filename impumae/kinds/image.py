"""``image``: ``P`` RGB tiles per patient, shape ``(P, H, W, 3)`` uint8 (WSI); tokens = ``patch x patch``
squares of one tile, 2-D sin-cos positions.

Stacked: pretraining draws one tile per patient, imputation reconstructs each tile in its own
pass, fine-tuning encodes all P tiles and averages their CLS states (paper). Input adapter:
Conv2d(3, width, k=s=patch) == Linear(patch*patch*3 -> width); output adapter
Linear(width -> patch*patch*3) (== ConvTranspose2d k=s=patch). Stored uint8 and uncompressed; the
fold-fitted transform keeps uint8 (4x smaller) and the model scales a batch to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from impumae.kinds import register
from impumae.kinds.fitted import ModalityTransform
from impumae.kinds.grid import GridKind
from impumae.kinds.positions import sincos_2d


@dataclass
class UInt8ImageTransform(ModalityTransform):
    """Nothing fitted: values stay uint8; ``inverse`` takes uint8 as stored or the decoder's floats in [0, 1]."""

    def transform_values(self, values: np.ndarray) -> np.ndarray:
        return np.array(values, dtype=np.uint8, copy=True)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        x = np.asarray(values)
        if x.dtype == np.uint8:
            return x.copy()
        return np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


class Image(GridKind):
    name = "image"
    stacked = True
    grid_axes = 2
    channels = 3
    shape_text = "(P, H, W, 3)"
    storage_dtype = "uint8"
    default_compressor = "none"
    default_value_type = "rgb"
    transform = UInt8ImageTransform

    def positions(self, spec, width: int) -> np.ndarray:
        return sincos_2d(width, *self.grid(spec))

    def baseline_summary(self, values: np.ndarray) -> np.ndarray:
        """[N, 3]: mean intensity per channel over every tile, in [0, 1]."""
        values = np.asarray(values)
        pixels = int(np.prod(values.shape[1:-1]))
        return values.reshape(len(values), pixels, 3).mean(axis=1) / 255.0


IMAGE = register(Image())
