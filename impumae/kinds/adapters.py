"""Adapters between a modality's patches and the model's tokens: the generic modules the kinds build.

The core model (``mae.py``) knows nothing modality-specific (the EPFL MultiMAE layout): it holds one
input adapter and one output adapter per modality in ``nn.ModuleDict``s, built by the modality's
kind (``impumae.kinds``: ``kind.input_adapter(spec, width, cfg)``, ``kind.output_adapter(...)``),
and cuts samples into patches with ``kind.patchify`` / ``kind.unpatchify``. They live with the kinds,
below the model: the model imports the kinds, never the other way round.

- :class:`InputAdapter`: an embedding module (patches [B, N, patch_dim] -> [B, N, width]) plus the
  kind's fixed positions;
- :class:`OutputAdapter`: a head (decoder tokens [B, N, dec_width] -> patches [B, N, patch_dim]).

The convolutions of the paper have stride == kernel, so each is exactly a Linear applied to
non-overlapping patches; we write them as Linear layers on patchified input (one fast matmul, no
cuDNN 3-D convolution). Two-stage cube layers (the paper's MRI adapters), used by the ``volume`` kind:
Conv3d(1, 16, k=s=k1) -> GELU -> Conv3d(16, width, k=s=k2) == per-sub-cube Linear(k1^3 -> 16) ->
GELU -> Linear(k2^3*16 -> width) (:class:`CubeEmbed`); ConvTranspose3d(dec_width, 16, k=s=k2) ->
GELU -> ConvTranspose3d(16, 1, k=s=k1) per token == Linear(dec_width -> k2^3*16) -> GELU ->
per-sub-cube Linear(16 -> k1^3) (:class:`CubeReconstruct`). (patch 16: 4 then 4, as in the paper;
patch 8: 2 then 4.)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOLUME_HIDDEN = 16  # channels between the two volume convolutions (paper: 16)


# ---------------------------------------------------------------------------------------------
# Cube layers (the volume kind's adapters): two stride==kernel (transposed) convolutions as
# Linear layers on sub-cubes
# ---------------------------------------------------------------------------------------------

def volume_factors(patch: int) -> tuple[int, int]:
    """(k1, k2) with k1 * k2 == patch: the first and second convolution's kernel (= stride).

    k2 is 4 when ``patch`` is divisible by 4 (patch 16 -> (4, 4), patch 8 -> (2, 4)), else 2 or 1.
    """
    k2 = next(k for k in (4, 2, 1) if patch % k == 0)
    return patch // k2, k2


def _cube_to_subcubes(x: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """[..., p^3] (z, y, x) -> [..., k2^3, k1^3]: sub-cube (coarse) index, voxel within sub-cube."""
    lead = x.shape[:-1]
    x = x.reshape(-1, k2, k1, k2, k1, k2, k1).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(*lead, k2 ** 3, k1 ** 3)


def _subcubes_to_cube(x: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Inverse of :func:`_cube_to_subcubes`."""
    lead = x.shape[:-2]
    x = x.reshape(-1, k2, k2, k2, k1, k1, k1).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(*lead, (k1 * k2) ** 3)


class CubeEmbed(nn.Module):
    """Conv3d(1, hidden, k=s=k1) -> GELU -> Conv3d(hidden, width, k=s=k2) on one p^3 cube per token."""

    def __init__(self, patch: int, width: int, hidden: int = VOLUME_HIDDEN):
        super().__init__()
        self.k1, self.k2 = volume_factors(patch)
        self.conv1 = nn.Linear(self.k1 ** 3, hidden)
        self.conv2 = nn.Linear(self.k2 ** 3 * hidden, width)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(_cube_to_subcubes(patches, self.k1, self.k2)))
        return self.conv2(h.flatten(-2))


class CubeReconstruct(nn.Module):
    """ConvTranspose3d(width, hidden, k=s=k2) -> GELU -> ConvTranspose3d(hidden, 1, k=s=k1) per token."""

    def __init__(self, patch: int, width: int, hidden: int = VOLUME_HIDDEN):
        super().__init__()
        self.k1, self.k2 = volume_factors(patch)
        self.hidden = hidden
        self.deconv1 = nn.Linear(width, self.k2 ** 3 * hidden)
        self.deconv2 = nn.Linear(hidden, self.k1 ** 3)
        self.act = nn.GELU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.act(self.deconv1(tokens)).unflatten(-1, (self.k2 ** 3, self.hidden))
        return _subcubes_to_cube(self.deconv2(h), self.k1, self.k2)


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------

class InputAdapter(nn.Module):
    """patches [B, N, patch_dim] -> ``embed`` -> tokens [B, N, width] + fixed ``positions`` [N, width]."""

    def __init__(self, embed: nn.Module, positions: np.ndarray):
        super().__init__()
        self.embed = embed
        self.register_buffer("pos", torch.from_numpy(np.ascontiguousarray(positions, dtype=np.float32)),
                             persistent=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.embed(patches) + self.pos.to(patches.dtype)


class OutputAdapter(nn.Module):
    """decoder tokens [B, N, dec_width] -> ``head`` -> reconstructed patches [B, N, patch_dim]."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens)
