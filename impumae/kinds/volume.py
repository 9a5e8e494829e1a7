"""``volume``: one cube per patient, shape ``(D, H, W)`` float32 (MRI); tokens = ``patch**3`` cubes.

Input adapter (paper): Conv3d(1, 16, k=s=k1) -> GELU -> Conv3d(16, width, k=s=k2) with
k1 * k2 = patch, written as Linear layers on sub-cubes (``impumae.kinds.adapters.CubeEmbed``);
output adapter: ConvTranspose3d(width, 16, k=s=k2) -> GELU -> ConvTranspose3d(16, 1, k=s=k1) per
token (``CubeReconstruct``). ``MAEConfig.volume_hidden`` sets the 16. Positions: 1-D sin-cos.
Already z-scored at ingest: the fold-fitted transform only turns NaN into 0.
"""
from __future__ import annotations

import numpy as np

from impumae.kinds import register
from impumae.kinds.fitted import NanToZeroTransform
from impumae.kinds.grid import GridKind


class Volume(GridKind):
    name = "volume"
    grid_axes = 3
    shape_text = "(D, H, W)"
    transform = NanToZeroTransform

    def input_adapter(self, spec, width, config):
        from impumae.kinds.adapters import CubeEmbed, InputAdapter
        return InputAdapter(CubeEmbed(spec.patch, width, config.volume_hidden), self.positions(spec, width))

    def output_adapter(self, spec, width, config):
        from impumae.kinds.adapters import CubeReconstruct, OutputAdapter
        return OutputAdapter(CubeReconstruct(spec.patch, width, config.volume_hidden))

    def baseline_summary(self, values: np.ndarray) -> np.ndarray:
        """[N, 2]: voxel mean and standard deviation."""
        block = np.asarray(values).reshape(len(values), int(np.prod(values.shape[1:]))).astype(np.float64)
        return np.stack([np.nanmean(block, axis=1), np.nanstd(block, axis=1)], axis=1)


VOLUME = register(Volume())
