"""The base of every kind's fold-fitted transform, and the statistics the transforms share.

A transform learns from the training patients of one fold only (``fit``), maps the store's values
to model space (``apply``; rows of patients without the modality become zeros, the model never
looks at them) and back (``inverse``). Its fitted state is a plain dict (``to_dict`` /
``from_dict``: arrays as lists) so it travels with checkpoints.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np


SCALINGS = ("standard", "clip", "rank_gauss")


@dataclass(frozen=True)
class TransformOptions:
    """How the fold-fitted transforms scale features: the search space's ``transforms:`` section.

    ``tabular_scaling`` (per feature, after the value type's own steps; see
    :class:`impumae.kinds.tabular.TabularTransform`): ``standard`` (training mean and SD),
    ``clip`` (standardised, then clipped to +-``clip`` SDs) or ``rank_gauss``
    (:class:`impumae.kinds.rank_gauss.RankGauss` with ``rank_gauss_knots`` knots). Kinds other than
    tabular ignore the options.
    """

    tabular_scaling: str = "standard"
    clip: float = 3.0
    rank_gauss_knots: int = 101

    def __post_init__(self):
        if self.tabular_scaling not in SCALINGS:
            raise ValueError(f"unknown tabular_scaling {self.tabular_scaling!r}; expected one of {SCALINGS}")
        if not self.clip > 0:
            raise ValueError(f"transforms: clip must be > 0 (standard deviations), got {self.clip!r}")
        if int(self.rank_gauss_knots) < 2:
            raise ValueError(f"transforms: rank_gauss_knots must be >= 2, got {self.rank_gauss_knots!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "TransformOptions":
        """``None`` or ``{}``: the defaults (standard scaling, as before the option existed)."""
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"transforms: unknown option(s) {unknown}; expected "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ModalityTransform:
    """Fitted state of one modality. Subclasses add their fitted fields (numpy arrays or floats)."""

    name: str
    kind: str
    value_type: str

    def fit(self, train_values: np.ndarray, sd_threshold: float) -> "ModalityTransform":
        """``train_values``: the rows of training patients that have this modality. Default: nothing to learn."""
        return self

    def transform_values(self, values: np.ndarray) -> np.ndarray:
        """The store's values [N, *shape] -> model space (a new array); rows of missing samples don't matter."""
        raise NotImplementedError

    def apply(self, values: np.ndarray, present: np.ndarray) -> np.ndarray:
        out = self.transform_values(values)
        out[~np.asarray(present, dtype=bool)] = 0
        return out

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Model-space ``values`` [N, *model shape] -> the store's input space [N, *store shape]."""
        raise NotImplementedError

    @property
    def invertible(self) -> bool:
        """Whether ``inverse`` has what it needs (transforms fitted by an older version may lack it)."""
        return True

    def output_spec(self, spec):
        """The spec of the model-space values (a feature filter changes the shape)."""
        return spec

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.floating):
                value = float(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ModalityTransform":
        """Rebuild from ``to_dict``; on the base class, the class of ``d["kind"]``'s transform.

        Keys that are not fields of the class must be None (dicts written before the transforms
        were split per kind hold every kind's fields, unused ones None).
        """
        if cls is ModalityTransform:
            from impumae import kinds
            return kinds.get(d["kind"]).transform.from_dict(d)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k, v in d.items() if k not in fields and v is not None)
        if unknown:
            raise ValueError(f"modality {d.get('name')!r}: a {d['kind']} transform has no field {unknown[0]!r}")
        return cls(**{k: (np.asarray(v) if isinstance(v, list) else v) for k, v in d.items() if k in fields})


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column training mean and standard deviation (1 where a column is constant or empty)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.nan_to_num(np.nanstd(x, axis=0), nan=0.0)
    return nanmean_or_zero(x), np.where(sd > 0, sd, 1.0)


def nanmean_or_zero(x: np.ndarray) -> np.ndarray:
    """Per-column mean ignoring NaN; 0 for a column with no value."""
    with np.errstate(all="ignore"):
        counts = np.sum(~np.isnan(x), axis=0)
        sums = np.nansum(x, axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


@dataclass
class NanToZeroTransform(ModalityTransform):
    """Values as stored (already normalised at ingest, e.g. z-scored volumes) as float32, NaN -> 0.
    Nothing is fitted; ``inverse`` returns float32."""

    def transform_values(self, values: np.ndarray) -> np.ndarray:
        return np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values).astype(np.float32)
