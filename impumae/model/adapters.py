"""Per-kind adapters between a modality's input space and the model's tokens.

Everything that depends on a modality's *kind* lives here, so the core model (``mae.py``) stays
modality-agnostic (the EPFL MultiMAE layout): for each kind there is

- ``patchify`` / ``unpatchify``: input space ``[B, *sample_shape]`` <-> patches ``[B, N, patch_dim]``
  (targets and reconstructions are compared in patch space and returned in input space);
- an input adapter: patches -> tokens ``[B, N, width]`` plus fixed sin-cos positions;
- an output adapter: decoder tokens ``[B, N, dec_width]`` -> patches ``[B, N, patch_dim]``.

The convolutions of the paper have stride == kernel, so each is exactly a Linear applied to
non-overlapping patches; we write them as Linear layers on patchified input (one fast matmul,
no cuDNN 3-D convolution):

- tabular: Conv1d(1, width, k=patch, s=patch) on the zero-padded vector == Linear(patch -> width);
  output Linear(dec_width -> patch).
- volume (patch p = k1 * k2, k2 = 4 when p allows): Conv3d(1, 16, k=s=k1) -> GELU ->
  Conv3d(16, width, k=s=k2) == per-sub-cube Linear(k1^3 -> 16) -> GELU -> Linear(k2^3*16 -> width);
  output ConvTranspose3d(dec_width, 16, k=s=k2) -> GELU -> ConvTranspose3d(16, 1, k=s=k1) per token
  == Linear(dec_width -> k2^3*16) -> GELU -> per-sub-cube Linear(16 -> k1^3).
  (patch 16: 4 then 4, as in the paper; patch 8: 2 then 4.)
- image: Conv2d(3, width, k=s=patch) on one image (H, W, 3) == Linear(patch*patch*3 -> width);
  output Linear(dec_width -> patch*patch*3) (== ConvTranspose2d k=s=patch). One image is one
  sample of the token grid; the ``P`` images of a patient are handled by the model.

Patch layouts (row-major): tabular token t holds features [t*patch, (t+1)*patch) (zero-padded
past the end); volume token (i, j, k) of the (D/p, H/p, W/p) grid holds the p^3 cube flattened as
(z, y, x); image token (i, j) of the (H/p, W/p) grid holds the p x p x 3 square flattened as (y, x, c).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from impumae.modalities import ModalitySpec

VOLUME_HIDDEN = 16  # channels between the two volume convolutions (paper: 16)


# ---------------------------------------------------------------------------------------------
# Fixed sin-cos positions
# ---------------------------------------------------------------------------------------------

def sincos_1d(width: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), width] sin-cos embedding (MAE's ``get_1d_sincos_pos_embed_from_grid``)."""
    if width % 2:
        raise ValueError(f"sin-cos positions need an even width, got {width}")
    omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
    angles = np.outer(np.asarray(positions, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos_2d(width: int, grid_h: int, grid_w: int) -> np.ndarray:
    """[grid_h * grid_w, width] 2-D sin-cos embedding, row-major; half the width per axis."""
    if width % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {width}")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    return np.concatenate([sincos_1d(width // 2, rows.reshape(-1)), sincos_1d(width // 2, cols.reshape(-1))], axis=1)


def token_positions(spec: ModalitySpec, width: int) -> torch.Tensor:
    """Fixed positions of a modality's tokens, [n_tokens, width] (1-D tabular/volume, 2-D image)."""
    if spec.kind == "image":
        return torch.from_numpy(sincos_2d(width, spec.shape[1] // spec.patch, spec.shape[2] // spec.patch))
    return torch.from_numpy(sincos_1d(width, np.arange(spec.n_tokens)))


# ---------------------------------------------------------------------------------------------
# patchify / unpatchify
# ---------------------------------------------------------------------------------------------

def sample_shape(spec: ModalitySpec) -> tuple[int, ...]:
    """Shape of what one token grid is cut from: the sample, or one image for ``image``."""
    return spec.shape[1:] if spec.kind == "image" else spec.shape


def patchify(spec: ModalitySpec, x: torch.Tensor) -> torch.Tensor:
    """``[B, *sample_shape(spec)]`` -> ``[B, n_tokens, patch_dim]`` (see the module docstring)."""
    b, p = x.shape[0], spec.patch
    if spec.kind == "tabular":
        n_features = spec.shape[0]
        pad = spec.n_tokens * p - n_features
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        return x.reshape(b, spec.n_tokens, p)
    if spec.kind == "volume":
        d, h, w = (s // p for s in spec.shape)
        x = x.reshape(b, d, p, h, p, w, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, d * h * w, p ** 3)
    if spec.kind == "image":
        gh, gw = spec.shape[1] // p, spec.shape[2] // p
        x = x.reshape(b, gh, p, gw, p, 3).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, gh * gw, p * p * 3)
    raise ValueError(f"modality {spec.name!r} of kind {spec.kind!r} is not tokenised")


def unpatchify(spec: ModalitySpec, patches: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, n_tokens, patch_dim]`` -> ``[B, *sample_shape(spec)]``."""
    b, p = patches.shape[0], spec.patch
    if spec.kind == "tabular":
        return patches.reshape(b, spec.n_tokens * p)[:, : spec.shape[0]]
    if spec.kind == "volume":
        d, h, w = (s // p for s in spec.shape)
        x = patches.reshape(b, d, h, w, p, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, *spec.shape)
    if spec.kind == "image":
        gh, gw = spec.shape[1] // p, spec.shape[2] // p
        x = patches.reshape(b, gh, gw, p, p, 3).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, gh * p, gw * p, 3)
    raise ValueError(f"modality {spec.name!r} of kind {spec.kind!r} is not tokenised")


def valid_values(spec: ModalitySpec) -> torch.Tensor | None:
    """[n_tokens, patch_dim] float mask of real (not zero-padding) values, or None if all are real.

    Only a tabular vector whose length is not a multiple of ``patch`` has padding; the loss ignores it.
    """
    if spec.kind != "tabular" or spec.shape[0] % spec.patch == 0:
        return None
    mask = torch.zeros(spec.n_tokens * spec.patch)
    mask[: spec.shape[0]] = 1.0
    return mask.reshape(spec.n_tokens, spec.patch)


# ---------------------------------------------------------------------------------------------
# Volume: two stride==kernel (transposed) convolutions as Linear layers on sub-cubes
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
    """patches [B, N, patch_dim] -> tokens [B, N, width] + fixed sin-cos positions."""

    def __init__(self, spec: ModalitySpec, width: int, volume_hidden: int = VOLUME_HIDDEN):
        super().__init__()
        if spec.kind == "volume":
            self.embed = CubeEmbed(spec.patch, width, volume_hidden)
        elif spec.kind in ("tabular", "image"):
            self.embed = nn.Linear(spec.patch_dim, width)
        else:
            raise ValueError(f"modality {spec.name!r} of kind {spec.kind!r} has no input adapter")
        self.register_buffer("pos", token_positions(spec, width), persistent=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.embed(patches) + self.pos.to(patches.dtype)


class OutputAdapter(nn.Module):
    """decoder tokens [B, N, dec_width] -> reconstructed patches [B, N, patch_dim]."""

    def __init__(self, spec: ModalitySpec, dec_width: int, volume_hidden: int = VOLUME_HIDDEN):
        super().__init__()
        if spec.kind == "volume":
            self.head = CubeReconstruct(spec.patch, dec_width, volume_hidden)
        elif spec.kind in ("tabular", "image"):
            self.head = nn.Linear(dec_width, spec.patch_dim)
        else:
            raise ValueError(f"modality {spec.name!r} of kind {spec.kind!r} has no output adapter")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens)

