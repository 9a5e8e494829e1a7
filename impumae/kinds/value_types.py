"""What a modality's values are: the one registry of value types.

A value type is stored per modality in the cohort store (``attrs.value_types``) and tells the
fold-fitted transforms which steps the values need. The steps apply to ``tabular`` modalities;
the other kinds' transforms are fixed by the kind (``clinical`` z-scores continuous columns,
``volume`` only fills NaN, ``image`` stays uint8), and their value types say what the data is.
Adding a value type is one entry in ``VALUE_TYPES``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ValueType:
    name: str
    meaning: str
    sd_filter: bool = False        # fitted: keep features whose training standard deviation exceeds the threshold
    log_median: bool = False       # log1p, then divide each sample by its own median; inverse: expm1(x * training median of medians)
    clip: tuple[float, float] | None = None  # the inverse clips to this range
    continuous: bool = True        # False (0/1 values): tabular features are always standardised, whatever
                                   #   the transforms' tabular_scaling (clipping or rank-gauss of 0/1 is pointless)


VALUE_TYPES: dict[str, ValueType] = {vt.name: vt for vt in (
    ValueType("fpkm_uq", "non-negative expression (FPKM-UQ): log1p + per-sample median normalisation",
              sd_filter=True, log_median=True),
    ValueType("zscore", "already normalised features", sd_filter=True),
    ValueType("beta", "methylation beta values in [0, 1]", clip=(0.0, 1.0)),
    ValueType("binary", "0/1 features (mutations)", clip=(0.0, 1.0), continuous=False),
    ValueType("zscored", "an already z-scored volume (MRI)"),
    ValueType("rgb", "uint8 RGB image tiles"),
    ValueType("clinical", "clinical covariates: continuous columns z-scored, 0/1 columns kept"),
    ValueType("raw", "anything else: standardised, nothing more"),
)}

NAMES: tuple[str, ...] = tuple(VALUE_TYPES)


def get(name: str) -> ValueType:
    try:
        return VALUE_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown value type {name!r}; expected one of {NAMES}") from None
