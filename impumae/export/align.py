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
from impumae.data.cohort_view import CohortArrays, modality_rows

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
        wanted = model.value_types[modality]
        raise AlignmentError(f"modality {modality!r}: the model was trained on value type {wanted!r}, {source} stores "
                             f"{value_type!r}. If its values are {wanted}, rebuild the store with --value-type "
                             f"{modality}={wanted} (build_cohort.py tables), or predict from the table itself "
                             f"(predict.py --modality {modality}=PATH: taken as the model's value type)")
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
    """A cohort store aligned to ``model`` (a :class:`~impumae.export.selected_model.SelectedModel`). A store
    without survival labels (no ``labels/time`` or ``labels/event``) is aligned for prediction only
    (``has_labels`` False)."""
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
        present[m] = present_table[m].to_numpy(bool)
        if m in model.feature_names:
            arrays[m], found = match_features(m, model.feature_names[m], cohort.feature_names(m), cohort.load(m), source)
            overlap[m] = (found, len(model.feature_names[m]))
        else:  # volumes, images: present rows only, streamed per batch when big (cohort_view.modality_rows)
            arrays[m] = modality_rows(cohort, m, present[m])
    labels = cohort.labels
    has_labels = {"time", "event"} <= set(labels.columns)
    time = labels["time"].to_numpy(np.float64) if has_labels else np.full(n, np.nan)
    event = labels["event"].to_numpy(np.int64) if has_labels else np.zeros(n, np.int64)
    return Aligned(view=_view(model, cohort.patient_ids, time, event, arrays, present, cohort.url),
                   has_labels=has_labels, missing_features=_count_missing(model, arrays, present),
                   absent_modalities=absent, feature_overlap=overlap)


def align_matrices(model, matrices: dict[str, pd.DataFrame], sources: dict[str, str] | None = None,
                   labels: pd.DataFrame | None = None, url: str = "tables") -> Aligned:
    """Feature tables aligned to ``model``: ``{modality: DataFrame}`` with the patient id as index and
    one column per feature (NaN = missing value). The patients are every id of any table (in order of
    first appearance); a patient absent from a table, or with every feature of it NaN, lacks that
    modality. ``sources`` names each table's file in messages. ``labels`` (index = patient id, columns
    ``time``, ``event``) must label every patient; without it the view has no labels."""
    sources = sources or {}
    unknown = sorted(set(matrices) - set(model.subset))
    if unknown:
        raise AlignmentError(f"modality {unknown[0]!r} ({sources.get(unknown[0], 'table')}) is not one of the model's "
                             f"{list(model.subset)}")
    ids = pd.Index([], dtype=object)
    for table in matrices.values():
        ids = ids.append(pd.Index(table.index.astype(str))[~pd.Index(table.index.astype(str)).isin(ids)])
    n = len(ids)
    arrays, present, absent, overlap = {}, {}, [], {}
    for m in model.subset:
        spec = model.specs[m]
        if m not in matrices:
            arrays[m], present[m] = _empty(spec, n), np.zeros(n, bool)
            absent.append(m)
            continue
        if m not in model.feature_names:
            raise AlignmentError(f"modality {m!r}: the model's is a {spec.kind} modality of shape {tuple(spec.shape)}, "
                                 "which cannot be given as a feature table; use a cohort store (--cohort)")
        table = matrices[m]
        table = table.set_axis(table.index.astype(str), axis=0).reindex(ids)
        values = table.to_numpy(np.float32)
        arrays[m], found = match_features(m, model.feature_names[m], [str(c) for c in table.columns], values,
                                          sources.get(m, "the table"))
        overlap[m] = (found, len(model.feature_names[m]))
        present[m] = ~np.isnan(values).all(axis=1)
        arrays[m][~present[m]] = np.nan
    has_labels = labels is not None
    if has_labels:
        unlabelled = ids[~ids.isin(labels.index.astype(str))]
        if len(unlabelled):
            raise AlignmentError(f"labels: {len(unlabelled)} patient(s) with features have no label, e.g. "
                                 f"{list(unlabelled[:3])}; label every patient or predict without labels")
        labels = labels.set_axis(labels.index.astype(str), axis=0).loc[ids]
        time, event = labels["time"].to_numpy(np.float64), labels["event"].to_numpy(np.int64)
    else:
        time, event = np.full(n, np.nan), np.zeros(n, np.int64)
    return Aligned(view=_view(model, ids.to_numpy(), time, event, arrays, present, url), has_labels=has_labels,
                   missing_features=_count_missing(model, arrays, present), absent_modalities=absent,
                   feature_overlap=overlap)


class RequestError(AlignmentError):
    """A serving request the model cannot answer; the message names the request column, row or patient."""


class RequestLayout:
    """What reading a serving request needs of the model, worked out once per model (the pyfunc builds it
    when it loads): per named-feature modality of its subset, each feature's position in the model's order."""

    def __init__(self, model):
        self.positions: dict[str, dict[str, int]] = {
            m: {str(name): j for j, name in enumerate(names)} for m, names in model.feature_names.items()}


@dataclass
class RequestColumns:
    """How a serving table's columns were read: ``known`` ``{modality: [column]}``, ``unknown`` columns
    (ignored, reported in the answer)."""
    known: dict[str, list[str]]
    unknown: list[str]
    known_at: dict[str, list[int]] = field(default_factory=dict)   # the known columns' positions in the table


def request_columns(model, frame: pd.DataFrame, layout: RequestLayout | None = None) -> RequestColumns:
    """Sort a serving table's columns: ``<modality>/<feature>`` of a named-feature modality of the model and
    one of its features -> known; anything else but ``patient_id`` -> unknown. A column of a volume or
    image modality is refused (it cannot be sent as a column). ``layout``: the model's, if already built."""
    known: dict[str, list[str]] = {}
    known_at: dict[str, list[int]] = {}
    unknown: list[str] = []
    features = (layout or RequestLayout(model)).positions
    for at, name in enumerate(frame.columns):
        name = str(name)
        if name == ID_COLUMN:
            continue
        modality, sep, feature = name.partition("/")
        if sep and modality in model.subset and modality not in model.feature_names:
            spec = model.specs[modality]
            raise RequestError(f"column {name!r}: the model's {modality!r} is a {spec.kind} modality of shape "
                               f"{tuple(spec.shape)}, which cannot be given as table columns; predict from a cohort "
                               "store (experiments/predict.py --cohort), or leave it out to have it imputed")
        if sep and feature in features.get(modality, ()):
            known.setdefault(modality, []).append(name)
            known_at.setdefault(modality, []).append(at)
        else:
            unknown.append(name)
    return RequestColumns(known, unknown, known_at)


def expected_columns(model) -> str:
    """The column form a serving request needs, with an example of each named-feature modality."""
    return "; ".join(f"{column(m, names[0])} ... ({len(names)} columns)" for m, names in model.feature_names.items())


def align_frame(model, frame: pd.DataFrame, layout: RequestLayout | None = None,
                columns: RequestColumns | None = None) -> Aligned:
    """A serving table (one row per patient, columns ``<modality>/<feature>``, NaN or null = missing;
    an optional ``patient_id`` column) aligned to ``model``. Columns that are no feature of the model
    are ignored (:func:`request_columns` lists them); refused with a :class:`RequestError`: no row, no
    column that is a feature of the model, a value that is not a finite number, a row without any value
    of a known column. ``layout`` and ``columns``: the model's :class:`RequestLayout` and the request's
    :func:`request_columns`, when the caller has them (the pyfunc: one request, read once).

    The result is what :func:`align_matrices` makes of the request's values (the same view, counts and
    warning), with the request's values put at their features' positions directly: a request is one
    row or a few, and building a table per modality to realign cost more than the model."""
    frame = frame.reset_index(drop=True)
    if frame.shape[0] == 0:
        raise RequestError("the request has no rows: send one row per patient")
    layout = layout or RequestLayout(model)
    columns = columns or request_columns(model, frame, layout)
    if not columns.known:
        shown = columns.unknown[:5]
        raise RequestError(f"no column of the request is a feature of the model (got {len(columns.unknown)} "
                           f"column(s){f', e.g. {shown}' if shown else ''}); expected columns '<modality>/<feature>': "
                           f"{expected_columns(model)}")
    ids = (frame[ID_COLUMN].astype(str).to_numpy() if ID_COLUMN in frame.columns
           else np.array([str(i) for i in range(len(frame))]))
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if list(ids).count(i) > 1})[:3]
        raise RequestError(f"column {ID_COLUMN!r}: patient id(s) {repeated} appear more than once")
    values_of, any_value = {}, np.zeros(len(frame), bool)
    for m, names in columns.known.items():
        raw = frame.iloc[:, columns.known_at[m]]   # by position: a few hundred names looked up cost more than the model
        try:
            values = raw.to_numpy(np.float64)       # numbers and None: the usual request, without a per-column pass
        except (TypeError, ValueError):
            coerced = raw.apply(pd.to_numeric, errors="coerce")
            bad = coerced.isna().to_numpy() & raw.notna().to_numpy()
            if bad.any():
                row, col = (int(i) for i in np.argwhere(bad)[0])
                raise RequestError(f"column {names[col]!r}, row {row} (patient {str(ids[row])!r}): {raw.iat[row, col]!r} "
                                   "is not a number; send null for a missing value") from None
            values = coerced.to_numpy(np.float64)
        infinite = np.isinf(values)
        if infinite.any():
            row, col = (int(i) for i in np.argwhere(infinite)[0])
            raise RequestError(f"column {names[col]!r}, row {row} (patient {str(ids[row])!r}): {values[row, col]} is not "
                               "finite; send null for a missing value")
        any_value |= ~np.isnan(values).all(axis=1)
        values_of[m] = values.astype(np.float32)
    if not any_value.all():
        rows = np.flatnonzero(~any_value)
        raise RequestError(f"row(s) {rows[:5].tolist()} (patient(s) {[str(i) for i in ids[rows[:5]]]}) have no value in any "
                           "feature column of the model: nothing to predict from")
    n = len(ids)
    arrays, present, absent, overlap = {}, {}, [], {}
    for m in model.subset:
        if m not in values_of:
            arrays[m], present[m] = _empty(model.specs[m], n), np.zeros(n, bool)
            absent.append(m)
            continue
        features = [name.partition("/")[2] for name in columns.known[m]]
        if len(set(features)) != len(features):   # as match_features says it
            duplicated = sorted({f for f in features if features.count(f) > 1})[:3]
            raise AlignmentError(f"modality {m!r}: the request names feature(s) {duplicated} more than once")
        total, found = len(model.feature_names[m]), len(features)
        if total - found > MISSING_WARN_FRACTION * total:
            warnings.warn(f"modality {m!r}: {total - found} of the model's {total} features "
                          f"({(total - found) / total:.0%}) are missing from the request; they are "
                          "filled with the training means", FeatureAlignmentWarning, stacklevel=2)
        arrays[m] = np.full((n, total), np.nan, dtype=np.float32)
        arrays[m][:, [layout.positions[m][f] for f in features]] = values_of[m]
        present[m] = ~np.isnan(values_of[m]).all(axis=1)
        overlap[m] = (found, total)
    time, event = np.full(n, np.nan), np.zeros(n, np.int64)
    return Aligned(view=_view(model, ids, time, event, arrays, present, "request"), has_labels=False,
                   missing_features=_count_missing(model, arrays, present), absent_modalities=absent,
                   feature_overlap=overlap)
