"""Kinds whose samples are regular grids cut into cubes or squares (volumes, images, any N-D grid).

A :class:`GridKind` item has ``grid_axes`` spatial axes, each divisible by ``patch``, then (when
``channels`` is set) one channel axis of ``channels`` values; a stacked kind adds a leading axis of
items. Tokens are the ``patch ** grid_axes`` blocks of the grid in row-major order; a token's
patch is its block flattened as (spatial axes within the block..., channel). Example: a volume
token (i, j, k) holds its p^3 cube flattened as (z, y, x); an image token (i, j) holds its
p x p x 3 square flattened as (y, x, c).

The default input adapter is one Linear(patch_dim -> width), which is exactly a convolution with
kernel == stride == patch on the grid; the default output adapter is Linear(width -> patch_dim)
(a transposed convolution with kernel == stride == patch).
"""
from __future__ import annotations

import math

from impumae.kinds import Kind


class GridKind(Kind):
    grid_axes: int = 2
    channels: int | None = None     # None: no channel axis
    shape_text: str = ""            # the expected shape, for error messages, e.g. "(D, H, W)"

    def grid(self, spec) -> tuple[int, ...]:
        """Tokens along each spatial axis."""
        return tuple(s // spec.patch for s in self.item_shape(spec)[: self.grid_axes])

    def validate(self, spec) -> None:
        rank = int(self.stacked) + self.grid_axes + int(self.channels is not None)
        item = self.item_shape(spec)
        if (len(spec.shape) != rank or any(s % spec.patch for s in item[: self.grid_axes])
                or (self.channels is not None and item[-1] != self.channels)):
            raise ValueError(f"modality {spec.name!r}: {self.name} shape {spec.shape} must be {self.shape_text} "
                             f"with the grid axes divisible by patch {spec.patch}")

    def n_tokens(self, spec) -> int:
        return math.prod(self.grid(spec))

    def patch_dim(self, spec) -> int:
        return spec.patch ** self.grid_axes * (self.channels or 1)

    def patchify(self, spec, x):
        grid, p, c, n = self.grid(spec), spec.patch, self.channels or 1, self.grid_axes
        x = x.reshape(x.shape[0], *[v for g in grid for v in (g, p)], c)     # [B, g1, p, g2, p, ..., c]
        order = [0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1]  # grid axes, then block axes, channel
        return x.permute(order).reshape(x.shape[0], math.prod(grid), self.patch_dim(spec))

    def unpatchify(self, spec, patches):
        grid, p, c, n = self.grid(spec), spec.patch, self.channels or 1, self.grid_axes
        x = patches.reshape(patches.shape[0], *grid, *[p] * n, c)
        order = [0, *[a for i in range(n) for a in (1 + i, 1 + n + i)], 2 * n + 1]
        return x.permute(order).reshape(patches.shape[0], *self.item_shape(spec))

    def input_adapter(self, spec, width, config):
        from torch import nn

        from impumae.kinds.adapters import InputAdapter
        return InputAdapter(nn.Linear(self.patch_dim(spec), width), self.positions(spec, width))

    def output_adapter(self, spec, width, config):
        from torch import nn

        from impumae.kinds.adapters import OutputAdapter
        return OutputAdapter(nn.Linear(width, self.patch_dim(spec)))
