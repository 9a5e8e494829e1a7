"""A kind of modality shipped as a plugin: ``plane``, one 2-D single-channel image per patient.

Shape ``(H, W)`` float32, cut into square ``patch x patch`` tokens with 2-D sin-cos positions. It is
written against the ``impumae.kinds.Kind`` base class alone (no built-in kind reused) and registers
itself when imported. Its distribution (``pyproject.toml`` beside this file) declares the module as
an entry point of the group ``impumae.kinds``, which is how every process finds it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn

from impumae import kinds
from impumae.kinds.adapters import InputAdapter, OutputAdapter
from impumae.kinds.fitted import ModalityTransform
from impumae.kinds.positions import sincos_2d


@dataclass
class PlaneTransform(ModalityTransform):
    """Fitted per fold: one training mean and standard deviation for every pixel of the plane."""
    center: float | None = None
    scale: float | None = None

    def fit(self, train_values, sd_threshold):
        self.center, self.scale = float(np.nanmean(train_values)), float(np.nanstd(train_values)) or 1.0
        return self

    def transform_values(self, values):
        return np.nan_to_num((np.asarray(values, dtype=np.float64) - self.center) / self.scale).astype(np.float32)

    def inverse(self, values):
        return (np.asarray(values, dtype=np.float64) * self.scale + self.center).astype(np.float32)


class Plane(kinds.Kind):
    name = "plane"
    transform = PlaneTransform

    def validate(self, spec):
        if len(spec.shape) != 2 or spec.shape[0] % spec.patch or spec.shape[1] % spec.patch:
            raise ValueError(f"modality {spec.name!r}: plane shape {spec.shape} must be (H, W) divisible by {spec.patch}")

    def grid(self, spec):
        return spec.shape[0] // spec.patch, spec.shape[1] // spec.patch

    def n_tokens(self, spec):
        return math.prod(self.grid(spec))

    def patch_dim(self, spec):
        return spec.patch ** 2

    def patchify(self, spec, x):  # token (i, j) holds its square flattened as (y, x)
        (gh, gw), p = self.grid(spec), spec.patch
        return x.reshape(len(x), gh, p, gw, p).permute(0, 1, 3, 2, 4).reshape(len(x), gh * gw, p * p)

    def unpatchify(self, spec, patches):
        (gh, gw), p = self.grid(spec), spec.patch
        return patches.reshape(len(patches), gh, gw, p, p).permute(0, 1, 3, 2, 4).reshape(len(patches), *spec.shape)

    def positions(self, spec, width):
        return sincos_2d(width, *self.grid(spec))

    def input_adapter(self, spec, width, config):
        return InputAdapter(nn.Linear(self.patch_dim(spec), width), self.positions(spec, width))

    def output_adapter(self, spec, width, config):
        return OutputAdapter(nn.Linear(width, self.patch_dim(spec)))

    def baseline_summary(self, values):
        flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        return np.stack([flat.mean(1), flat.std(1)], axis=1)


PLANE = kinds.register(Plane())
