"""Fixed sin-cos positions (numpy; the kinds' token positions and the decoder's sequence positions)."""
from __future__ import annotations

import numpy as np


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
