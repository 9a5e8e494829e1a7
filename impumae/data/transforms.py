"""Fold-fitted preprocessing: everything that learns from data is fitted on training patients only.

``FoldTransforms.fit`` sees the training patients of one fold (never validation or holdout
patients) and learns, per modality, what the reference notes prescribe:

- tabular ``fpkm_uq`` (raw expression): keep features whose training standard deviation exceeds
  ``sd_threshold`` (0.1), then ``log1p``, then divide each sample by its own median ("per-subject
  normalisation", no fitting);
- tabular ``zscore`` also gets the standard-deviation filter; ``beta`` / ``binary`` / ``raw`` keep
  every feature;
- every tabular feature is then standardised with its training mean and standard deviation, and
  NaN becomes the training mean (0). Without this last step the summed reconstruction loss is
  dominated by the modality with the largest raw variance (DNAm betas vary ~10x less than
  normalised expression), and the shared decoder barely learns the others;
- ``clinical``: continuous columns z-scored with training mean and std, 0/1 columns left as they
  are, NaN filled with the training mean (0 after z-scoring);
- ``volume``: already z-scored at ingest; NaN -> 0;
- ``image``: kept uint8 (no fitting); the model scales each batch to [0, 1].

``inverse`` maps model-space values (e.g. decoder imputations) back to the store's input space:
identity on kept features (``zscore`` / ``beta`` / ``binary`` / ``raw``; ``beta`` and ``binary``
clipped to [0, 1]), ``expm1(x * m)`` for ``fpkm_uq`` with ``m`` the training median of the
per-sample medians (a new patient's own median is unknown), features dropped by the filter set to
their training raw mean, clinical columns un-z-scored, volumes unchanged, images ``*255`` -> uint8.

A missing modality's rows become zeros: the model never looks at them (``present`` says so).
The fitted state is a plain dict (``to_dict``/``from_dict``) so it travels with checkpoints.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from impumae.modalities import ModalitySpec

SD_FILTERED = ("fpkm_uq", "zscore")


@dataclass
class ModalityTransform:
    name: str
    kind: str
    value_type: str
    keep: np.ndarray | None = None          # tabular: indices of kept features
    fill: np.ndarray | None = None          # per-feature NaN fill (after the other steps)
    center: np.ndarray | None = None        # tabular, clinical: z-score centre (clinical binaries: 0)
    scale: np.ndarray | None = None         # tabular, clinical: z-score scale (clinical binaries: 1)
    raw_mean: np.ndarray | None = None      # tabular: training mean of every raw feature (inverse of the filter)
    median_scale: float | None = None       # fpkm_uq: training median of per-sample medians of log1p values

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, train_values: np.ndarray, sd_threshold: float) -> "ModalityTransform":
        """``train_values``: the rows of training patients that have this modality."""
        if self.kind in ("volume", "image"):
            return self
        x = np.asarray(train_values, dtype=np.float64)
        if len(x) == 0:
            raise ValueError(f"modality {self.name!r}: no training patient has it; cannot fit transforms")
        if self.kind == "tabular":
            if self.value_type in SD_FILTERED:
                sd = np.nanstd(x, axis=0)
                self.keep = np.flatnonzero(np.nan_to_num(sd, nan=0.0) > sd_threshold)
                if self.keep.size == 0:
                    raise ValueError(f"modality {self.name!r}: no feature has training standard deviation > {sd_threshold}")
            else:
                self.keep = np.arange(x.shape[1])
            steps = self._tabular_steps(x)
            self.center, self.scale = _standardisation(steps)
            self.fill = np.zeros(self.keep.size)  # the training mean, once standardised
            self.raw_mean = _nanmean_or_zero(x)
            if self.value_type == "fpkm_uq":
                self.median_scale = _median_of_sample_medians(np.log1p(np.clip(x[:, self.keep], 0, None)))
        elif self.kind == "clinical":
            binary = np.array([np.isin(c[~np.isnan(c)], (0.0, 1.0)).all() for c in x.T])
            center, scale = _standardisation(x)
            self.center = np.where(binary, 0.0, center)
            self.scale = np.where(binary, 1.0, scale)
            self.fill = _nanmean_or_zero((x - self.center) / self.scale)
        return self

    def _tabular_steps(self, x: np.ndarray) -> np.ndarray:
        x = x[:, self.keep]
        if self.value_type == "fpkm_uq":
            x = np.log1p(np.clip(x, 0, None))
            with warnings.catch_warnings():  # rows of patients without the modality are all NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(x, axis=1, keepdims=True)
            x = x / np.where(np.isfinite(median) & (median > 0), median, 1.0)
        return x

    # -- applying ------------------------------------------------------------------------------
    def apply(self, values: np.ndarray, present: np.ndarray) -> np.ndarray:
        if self.kind == "image":  # stays uint8 (4x smaller); the model scales a batch to [0, 1]
            out = np.array(values, dtype=np.uint8, copy=True)
        elif self.kind == "volume":
            out = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
        else:
            x = np.asarray(values, dtype=np.float64)
            x = self._tabular_steps(x) if self.kind == "tabular" else x
            x = (x - self.center) / self.scale
            x = np.where(np.isnan(x), self.fill, x)
            out = x.astype(np.float32)
        out[~present] = 0.0
        return out

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Model-space ``values`` [N, *model shape] -> the store's input space [N, *store shape].

        Exact inverse of ``apply`` for present rows without NaN where ``apply`` is invertible
        (everything but ``fpkm_uq``, whose per-sample median is replaced by the training median of
        medians, and the dropped features, which come back as their training raw mean).
        """
        x = np.asarray(values)
        if self.kind == "image":  # uint8 as stored, or the decoder's floats in [0, 1]
            if x.dtype == np.uint8:
                return x.copy()
            return np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        if self.kind == "volume":
            return x.astype(np.float32)
        x = x.astype(np.float64)
        x = x * self.scale + self.center
        if self.kind == "clinical":
            return x.astype(np.float32)
        if self.raw_mean is None:
            raise ValueError(f"modality {self.name!r}: these transforms were fitted before inverse() existed "
                             "(no raw_mean); refit them on the same training patients")
        if x.ndim != 2 or x.shape[1] != self.keep.size:
            raise ValueError(f"modality {self.name!r}: inverse expects [N, {self.keep.size}] values, got {x.shape}")
        if self.value_type == "fpkm_uq":
            if self.median_scale is None:
                raise ValueError(f"modality {self.name!r}: no median_scale; refit the transforms")
            x = np.clip(np.expm1(x * self.median_scale), 0, None)
        elif self.value_type in ("beta", "binary"):
            x = np.clip(x, 0.0, 1.0)
        out = np.broadcast_to(self.raw_mean, (x.shape[0], self.raw_mean.size)).copy()
        out[:, self.keep] = x
        return out.astype(np.float32)

    @property
    def invertible(self) -> bool:
        """Whether ``inverse`` has what it needs (transforms fitted by an older version lack it)."""
        if self.kind != "tabular":
            return self.kind != "clinical" or self.center is not None
        return self.raw_mean is not None and (self.value_type != "fpkm_uq" or self.median_scale is not None)

    def output_spec(self, spec: ModalitySpec) -> ModalitySpec:
        if self.kind == "tabular":
            return spec.with_(shape=(int(self.keep.size),))
        return spec

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "value_type": self.value_type}
        for key in ("keep", "fill", "center", "scale", "raw_mean"):
            value = getattr(self, key)
            d[key] = None if value is None else value.tolist()
        d["median_scale"] = None if self.median_scale is None else float(self.median_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModalityTransform":
        arrays = {k: (None if d.get(k) is None else np.asarray(d[k])) for k in ("keep", "fill", "center", "scale", "raw_mean")}
        median_scale = d.get("median_scale")
        return cls(d["name"], d["kind"], d["value_type"], **arrays,
                   median_scale=None if median_scale is None else float(median_scale))


def _standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column training mean and standard deviation (1 where a column is constant or empty)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.nan_to_num(np.nanstd(x, axis=0), nan=0.0)
    return _nanmean_or_zero(x), np.where(sd > 0, sd, 1.0)


def _nanmean_or_zero(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        counts = np.sum(~np.isnan(x), axis=0)
        sums = np.nansum(x, axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def _median_of_sample_medians(log_values: np.ndarray) -> float:
    """The median over training samples of each sample's median (the usual divisor of a new sample)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(log_values, axis=1)
    medians = medians[np.isfinite(medians) & (medians > 0)]
    return float(np.median(medians)) if medians.size else 1.0


@dataclass
class FoldTransforms:
    """The fitted transforms of every modality of one training set."""

    transforms: dict[str, ModalityTransform] = field(default_factory=dict)
    train_ids: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray], train_idx: np.ndarray,
            specs: dict[str, ModalitySpec], value_types: dict[str, str], patient_ids=None,
            sd_threshold: float = 0.1) -> "FoldTransforms":
        """Fit on the rows ``train_idx`` (training patients) of every modality in ``arrays``."""
        train_idx = np.asarray(train_idx)
        fitted = {}
        for name, values in arrays.items():
            spec = specs[name]
            rows = train_idx[present[name][train_idx]]
            fitted[name] = ModalityTransform(name, spec.kind, value_types.get(name, "raw")).fit(values[rows], sd_threshold)
        ids = [] if patient_ids is None else [str(p) for p in np.asarray(patient_ids)[train_idx]]
        return cls(fitted, ids)

    def apply(self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self.transforms[name].apply(arrays[name], present[name]) for name in arrays}

    def inverse(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model-space values -> the store's input space, per modality (see ``ModalityTransform.inverse``)."""
        return {name: self.transforms[name].inverse(v) for name, v in values.items()}

    def output_specs(self, specs: dict[str, ModalitySpec]) -> dict[str, ModalitySpec]:
        return {name: self.transforms[name].output_spec(specs[name]) for name in self.transforms}

    def to_dict(self) -> dict:
        return {"transforms": {k: t.to_dict() for k, t in self.transforms.items()}, "train_ids": list(self.train_ids)}

    @classmethod
    def from_dict(cls, d: dict) -> "FoldTransforms":
        return cls({k: ModalityTransform.from_dict(t) for k, t in d["transforms"].items()}, list(d["train_ids"]))
