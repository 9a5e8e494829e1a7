"""``tabular``: one vector of named features per patient, shape ``(n_features,)`` (RNA, DNAm, mutations,
any user matrix).

Tokens: zero-padded patches of ``patch`` features; token t holds features ``[t*patch, (t+1)*patch)``.
The padding is excluded from the loss (:meth:`Tabular.value_mask`). Input adapter: Conv1d(1, width,
k=s=patch) on the padded vector == Linear(patch -> width); output adapter Linear(width -> patch).
Fine-tuning (paper): the encoder is frozen but for its last blocks and final LayerNorm.

Fold-fitted transform (:class:`TabularTransform`), steps chosen by the value type
(:mod:`impumae.kinds.value_types`): the standard-deviation filter (``fpkm_uq``, ``zscore``), then
log1p + per-sample median (``fpkm_uq``), then every kept feature scaled as the transforms'
``tabular_scaling`` option says (:class:`impumae.kinds.fitted.TransformOptions`):

- ``standard`` (the default, the paper): standardised with its training mean and standard deviation;
- ``clip``: standardised, then clipped to +-``clip`` standard deviations (default 3);
- ``rank_gauss``: :class:`impumae.kinds.rank_gauss.RankGauss` fitted on the training patients (every
  feature standard normal in shape; values beyond the training range at its ends),

then NaN -> 0 (the training mean; under rank-gauss the training median). Without scaling the summed
reconstruction loss is dominated by the modality with the largest raw variance; rank-gauss (or
clipping) keeps one heavy-tailed feature (TCGA RNA z-scores reach |z| = 19) from dominating its
token. A value type that is not ``continuous`` (``binary``) is always standardised: clipping or
rank-gauss of 0/1 values adds nothing.
``inverse``: the scaling undone (rank-gauss: ``RankGauss.inverse``; ``clip``: values beyond the
clip cannot be told apart and come back at the clip), then identity on kept features (clipped for
``beta`` / ``binary``), ``expm1(x * m)`` for ``fpkm_uq`` with ``m`` the training median of
per-sample medians (a new patient's own median is unknown), features dropped by the filter -> their
training raw mean.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from impumae.kinds.rank_gauss import RankGauss
from impumae.kinds import Kind, register, value_types
from impumae.kinds.fitted import ModalityTransform, TransformOptions, nanmean_or_zero, standardisation


@dataclass
class TabularTransform(ModalityTransform):
    keep: np.ndarray | None = None          # indices of kept features
    fill: np.ndarray | None = None          # per-feature NaN fill (after the other steps)
    center: np.ndarray | None = None        # z-score centre
    scale: np.ndarray | None = None         # z-score scale
    raw_mean: np.ndarray | None = None      # training mean of every raw feature (inverse of the filter)
    median_scale: float | None = None       # fpkm_uq: training median of per-sample medians of log1p values
    scaling: str = "standard"               # per-feature scaling: standard, clip, rank_gauss (TransformOptions)
    clip: float | None = None               # scaling "clip": the bound, in training standard deviations
    rank_gauss_knots: int | None = None     # scaling "rank_gauss": knots of the fit
    rank_gauss: RankGauss | None = None     # scaling "rank_gauss": the fitted map (center/scale unused)

    def fit(self, train_values: np.ndarray, sd_threshold: float) -> "TabularTransform":
        x = np.asarray(train_values, dtype=np.float64)
        if len(x) == 0:
            raise ValueError(f"modality {self.name!r}: no training patient has it; cannot fit transforms")
        steps = value_types.get(self.value_type)
        if steps.sd_filter:
            sd = np.nanstd(x, axis=0)
            self.keep = np.flatnonzero(np.nan_to_num(sd, nan=0.0) > sd_threshold)
            if self.keep.size == 0:
                raise ValueError(f"modality {self.name!r}: no feature has training standard deviation > {sd_threshold}")
        else:
            self.keep = np.arange(x.shape[1])
        if self.scaling == "rank_gauss":
            self.rank_gauss = RankGauss.fit(self.value_steps(x), n_knots=self.rank_gauss_knots)
        else:
            self.center, self.scale = standardisation(self.value_steps(x))
        self.fill = np.zeros(self.keep.size)  # the training mean once standardised; the median under rank-gauss
        self.raw_mean = nanmean_or_zero(x)
        if steps.log_median:
            self.median_scale = median_of_sample_medians(np.log1p(np.clip(x[:, self.keep], 0, None)))
        return self

    def value_steps(self, x: np.ndarray) -> np.ndarray:
        """The value type's steps before standardisation: feature filter, log1p + per-sample median."""
        x = x[:, self.keep]
        if value_types.get(self.value_type).log_median:
            x = np.log1p(np.clip(x, 0, None))
            with warnings.catch_warnings():  # rows of patients without the modality are all NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(x, axis=1, keepdims=True)
            x = x / np.where(np.isfinite(median) & (median > 0), median, 1.0)
        return x

    def scale_features(self, x: np.ndarray) -> np.ndarray:
        """The per-feature scaling of values after the value type's steps (NaN stays NaN)."""
        if self.rank_gauss is not None:
            return self.rank_gauss.apply(x)
        z = (x - self.center) / self.scale
        return z if self.clip is None else np.clip(z, -self.clip, self.clip)

    def unscale_features(self, z: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`scale_features` (a clipped value comes back at the clip)."""
        if self.rank_gauss is not None:
            return self.rank_gauss.inverse(z)
        return z * self.scale + self.center

    def transform_values(self, values: np.ndarray) -> np.ndarray:
        x = self.scale_features(self.value_steps(np.asarray(values, dtype=np.float64)))
        return np.where(np.isnan(x), self.fill, x).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Exact inverse of ``apply`` for present rows without NaN, but for ``fpkm_uq`` (the
        per-sample median is replaced by the training median of medians), the dropped features
        (their training raw mean), values beyond the clip (``clip`` scaling: they come back at the
        clip) and rank-gauss between its knots (monotone interpolation; exact on the knots)."""
        if self.raw_mean is None:
            raise ValueError(f"modality {self.name!r}: these transforms were fitted before inverse() existed "
                             "(no raw_mean); refit them on the same training patients")
        x = np.asarray(values).astype(np.float64)
        if x.ndim != 2 or x.shape[1] != self.keep.size:
            raise ValueError(f"modality {self.name!r}: inverse expects [N, {self.keep.size}] values, got {x.shape}")
        x = self.unscale_features(x)
        steps = value_types.get(self.value_type)
        if steps.log_median:
            if self.median_scale is None:
                raise ValueError(f"modality {self.name!r}: no median_scale; refit the transforms")
            x = np.clip(np.expm1(x * self.median_scale), 0, None)
        elif steps.clip is not None:
            x = np.clip(x, *steps.clip)
        out = np.broadcast_to(self.raw_mean, (x.shape[0], self.raw_mean.size)).copy()
        out[:, self.keep] = x
        return out.astype(np.float32)

    @property
    def invertible(self) -> bool:
        return self.raw_mean is not None and (not value_types.get(self.value_type).log_median
                                              or self.median_scale is not None)

    def output_spec(self, spec):
        return spec.with_(shape=(int(self.keep.size),))

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["rank_gauss"] = None if self.rank_gauss is None else self.rank_gauss.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TabularTransform":
        d = dict(d)
        if d.get("rank_gauss") is not None:
            d["rank_gauss"] = RankGauss.from_dict(d["rank_gauss"])
        return super().from_dict(d)


def median_of_sample_medians(log_values: np.ndarray) -> float:
    """The median over training samples of each sample's median (the usual divisor of a new sample)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(log_values, axis=1)
    medians = medians[np.isfinite(medians) & (medians > 0)]
    return float(np.median(medians)) if medians.size else 1.0


class FeatureVectorKind(Kind):
    """A sample is one vector of named features, shape ``(n_features,)``; NaN marks a missing value."""

    nan_marks_missing_value = True
    has_feature_names = True

    def validate(self, spec) -> None:
        if len(spec.shape) != 1:
            raise ValueError(f"modality {spec.name!r}: {self.name} shape must be (n_features,), got {spec.shape}")

    def baseline_summary(self, values: np.ndarray) -> np.ndarray:
        """The fold-fitted features themselves."""
        return np.asarray(values, dtype=np.float64)


TARGET_TOKENS = 32  # a default patch gives 16-32 tokens: enough to mask half and still see the rest


class Tabular(FeatureVectorKind):
    name = "tabular"
    fine_tunes_last_blocks = True
    transform = TabularTransform

    def fit_transform(self, name, value_type, train_values, sd_threshold, options=None) -> TabularTransform:
        """The value type's steps, then the scaling ``options.tabular_scaling`` names (``standard``
        for a value type that is not continuous)."""
        options = options or TransformOptions()
        scaling = options.tabular_scaling if value_types.get(value_type).continuous else "standard"
        transform = self.transform(name, self.name, value_type, scaling=scaling,
                                   clip=float(options.clip) if scaling == "clip" else None,
                                   rank_gauss_knots=int(options.rank_gauss_knots) if scaling == "rank_gauss" else None)
        return transform.fit(train_values, sd_threshold)

    def default_patch(self, spec) -> int:
        """From the feature count: the power of two that gives 16-32 tokens (at least 1 feature a
        token): ``2 ** ceil(log2(F / 32))``. 16,304 genes -> 512 and 25,978 CpGs -> 1024 (the
        paper's), 1,544 -> 64, 76 -> 4 (19 tokens)."""
        return 2 ** max(0, math.ceil(math.log2(spec.shape[0] / TARGET_TOKENS)))

    def n_tokens(self, spec) -> int:
        return math.ceil(spec.shape[0] / spec.patch)

    def patch_dim(self, spec) -> int:
        return spec.patch

    def patchify(self, spec, x):
        from torch.nn import functional as F
        n_tokens = self.n_tokens(spec)
        pad = n_tokens * spec.patch - spec.shape[0]
        if pad:
            x = F.pad(x, (0, pad))
        return x.reshape(x.shape[0], n_tokens, spec.patch)

    def unpatchify(self, spec, patches):
        return patches.reshape(patches.shape[0], -1)[:, : spec.shape[0]]

    def value_mask(self, spec) -> np.ndarray | None:
        if spec.shape[0] % spec.patch == 0:
            return None
        mask = np.zeros(self.n_tokens(spec) * spec.patch, dtype=np.float32)
        mask[: spec.shape[0]] = 1.0
        return mask.reshape(-1, spec.patch)

    def input_adapter(self, spec, width, config):
        from torch import nn

        from impumae.kinds.adapters import InputAdapter
        return InputAdapter(nn.Linear(spec.patch, width), self.positions(spec, width))

    def output_adapter(self, spec, width, config):
        from torch import nn

        from impumae.kinds.adapters import OutputAdapter
        return OutputAdapter(nn.Linear(width, spec.patch))


TABULAR = register(Tabular())
