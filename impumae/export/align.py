"""Aligning a new cohort to the selected model: modalities by name, features by name.

The result is an :class:`Aligned`: a :class:`~impumae.data.cohort_view.CohortArrays` laid out as
the model's training cohort was (each modality of the model's subset, in the model's store-level
feature order and shape), plus what the alignment found.

- A modality the cohort lacks is absent for every patient (the model fills it as it fills any
  missing modality).
- A modality of another kind, of another value type, or (for kinds without named features: volumes,
  images) of another shape is refused with an :class:`AlignmentError` naming the modality and what differs.
- For the kinds with named features (tabular, clinical) the cohort's features are matched to the
  model's by name, in any order. A model feature the cohort lacks is NaN, which the fold-fitted
  transforms fill as they fill any missing value (the training mean); extra cohort features are
  ignored. No feature in common is refused; more than :data:`MISSING_WARN_FRACTION` of the model's
  features missing gives a :class:`FeatureAlignmentWarning`. Per patient, the number of the model's
  features without a value (absent from the cohort or NaN) is counted for each present modality.

Two sources: a cohort store (:func:`align_cohort`, every kind) and a table with one row per patient and
columns ``<modality>/<feature>`` (:func:`align_frame`, the serving input: named-feature kinds only; a
modality with no column, or with every column NaN for a patient, is absent for that patient).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from impumae.data.store import Cohort
from impumae.data.cohort_view import CohortArrays

MISSING_WARN_FRACTION = 0.2
ID_COLUMN = "patient_id"


class AlignmentError(ValueError):
    """A cohort that cannot be aligned to the model; the message names the modality and what differs."""


class FeatureAlignmentWarning(UserWarning):
    """Many of the model's features are missing from the cohort."""


@dataclass
class Aligned:
    view: CohortArrays                                   # the model's layout; time/event NaN/0 without labels
    has_labels: bool
    missing_features: dict[str, np.ndarray] = field(default_factory=dict)  # per named-feature modality: count per patient
    absent_modalities: list[str] = field(default_factory=list)             # of the model's, not in the source at all
    feature_overlap: dict[str, tuple[int, int]] = field(default_factory=dict)  # modality: (found, model's)


def column(modality: str, feature: str) -> str:
    """The serving table's column of one feature."""
    return f"{modality}/{feature}"


def _empty(spec, n: int) -> np.ndarray:
    dtype = np.dtype(spec.kind_object.storage_dtype)
    return np.full((n, *spec.shape), 0 if dtype.kind == "u" else np.nan, dtype=dtype)


def match_features(modality: str, model_names: list[str], source_names: list[str], values: np.ndarray,
                   source: str) -> tuple[np.ndarray, int]:
    """``values`` [N, len(source_names)] in the model's feature order [N, len(model_names)], NaN where the
    source lacks a feature; and how many of the model's features the source has."""
    source_names = [str(n) for n in source_names]
    if len(set(source_names)) != len(source_names):
        duplicated = sorted({n for n in source_names if source_names.count(n) > 1})[:3]
        raise AlignmentError(f"modality {modality!r}: {source} names feature(s) {duplicated} more than once")
    where = {name: j for j, name in enumerate(source_names)}
    index = np.array([where.get(name, -1) for name in model_names])
    found = int((index >= 0).sum())
    if found == 0:
        raise AlignmentError(f"modality {modality!r}: none of the model's {len(model_names)} features is in {source} "
                             f"(the model's start {model_names[:3]}, {source}'s {source_names[:3]})")
    if len(model_names) - found > MISSING_WARN_FRACTION * len(model_names):
        warnings.warn(f"modality {modality!r}: {len(model_names) - found} of the model's {len(model_names)} features "
                      f"({(len(model_names) - found) / len(model_names):.0%}) are missing from {source}; they are "
                      "filled with the training means", FeatureAlignmentWarning, stacklevel=3)
    out = np.full((values.shape[0], len(model_names)), np.nan, dtype=np.float32)
    out[:, index >= 0] = values[:, index[index >= 0]]
    return out, found


def _check_kind(model, modality: str, kind: str, value_type: str | None, shape, source: str) -> None:
    spec = model.specs[modality]
    if kind != spec.kind:
        raise AlignmentError(f"modality {modality!r}: the model's is a {spec.kind} modality, {source}'s is {kind}")
    if value_type is not None and value_type != model.value_types[modality]:
        raise AlignmentError(f"modality {modality!r}: the model was trained on value type "
                             f"{model.value_types[modality]!r}, {source} stores {value_type!r}")
    if not spec.kind_object.has_feature_names and tuple(shape) != tuple(spec.shape):
        raise AlignmentError(f"modality {modality!r}: the model's {spec.kind} has shape {tuple(spec.shape)}, "
                             f"{source}'s has {tuple(shape)}")


def _view(model, ids, time, event, arrays, present, url: str) -> CohortArrays:
    n = len(ids)
    return CohortArrays(url=url, fingerprint="", ids=np.asarray(ids).astype(str), time=time, event=event,
                        holdout=np.zeros(n, bool), fold=np.full(n, -1, np.int64), arrays=arrays, present=present,
                        specs=dict(model.specs), value_types=dict(model.value_types))


def _count_missing(model, arrays, present) -> dict[str, np.ndarray]:
    return {m: np.where(present[m], np.isnan(arrays[m]).sum(axis=1), 0).astype(np.int64)
            for m in model.subset if m in model.feature_names}


def align_cohort(model, cohort: Cohort) -> Aligned:
    """A cohort store aligned to ``model`` (a :class:`~impumae.export.model.SelectedModel`)."""
    source = f"cohort {cohort.url}"
    n = len(cohort.patient_ids)
    present_table = cohort.present
    arrays, present, absent, overlap = {}, {}, [], {}
    for m in model.subset:
        spec = model.specs[m]
        if m not in cohort.modalities:
            arrays[m], present[m] = _empty(spec, n), np.zeros(n, bool)
            absent.append(m)
            continue
        theirs = cohort.specs[m]
        _check_kind(model, m, theirs.kind, cohort.value_types.get(m, "raw"), theirs.shape, source)
        values = cohort.load(m)
        if m in model.feature_names:
            arrays[m], found = match_features(m, model.feature_names[m], cohort.feature_names(m), values, source)
            overlap[m] = (found, len(model.feature_names[m]))
        else:
            arrays[m] = values
        present[m] = present_table[m].to_numpy(bool)
    labels = cohort.labels
    return Aligned(view=_view(model, cohort.patient_ids, labels["time"].to_numpy(np.float64),
                              labels["event"].to_numpy(np.int64), arrays, present, cohort.url),
                   has_labels=True, missing_features=_count_missing(model, arrays, present),
                   absent_modalities=absent, feature_overlap=overlap)


def align_frame(model, frame: pd.DataFrame) -> Aligned:
    """A table (one row per patient, columns ``<modality>/<feature>``, NaN = missing; an optional
    ``patient_id`` column) aligned to ``model``."""
    frame = frame.reset_index(drop=True)
    ids = (frame[ID_COLUMN].astype(str).to_numpy() if ID_COLUMN in frame.columns
           else np.array([str(i) for i in range(len(frame))]))
    by_modality: dict[str, list[str]] = {}
    for name in frame.columns:
        if name == ID_COLUMN:
            continue
        modality, sep, _ = str(name).partition("/")
        if not sep or modality not in model.subset:
            raise AlignmentError(f"column {name!r}: expected '<modality>/<feature>' with a modality of the model "
                                 f"{list(model.subset)}")
        by_modality.setdefault(modality, []).append(str(name))
    n = len(frame)
    arrays, present, absent, overlap = {}, {}, [], {}
    for m in model.subset:
        spec = model.specs[m]
        columns = by_modality.get(m, [])
        if columns and m not in model.feature_names:
            raise AlignmentError(f"modality {m!r}: the model's is a {spec.kind} modality of shape {tuple(spec.shape)}, "
                                 "which cannot be given as table columns; predict from a cohort store "
                                 "(experiments/predict.py --cohort), or leave it out to have it imputed")
        if not columns:
            arrays[m], present[m] = _empty(spec, n), np.zeros(n, bool)
            absent.append(m)
            continue
        values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
        names = [c.partition("/")[2] for c in columns]
        arrays[m], found = match_features(m, model.feature_names[m], names, values, "the table")
        overlap[m] = (found, len(model.feature_names[m]))
        present[m] = ~np.isnan(values).all(axis=1)
        arrays[m][~present[m]] = np.nan
    return Aligned(view=_view(model, ids, np.full(n, np.nan), np.zeros(n, np.int64), arrays, present, "table"),
                   has_labels=False, missing_features=_count_missing(model, arrays, present),
                   absent_modalities=absent, feature_overlap=overlap)
