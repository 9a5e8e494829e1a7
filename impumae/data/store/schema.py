"""What a cohort store holds and what counts as valid input: format constants, ``CohortError``,
``CohortPlan`` and the checks of labels, plans and per-patient samples (``docs/design.md``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from impumae import kinds, storage
from impumae.kinds.value_types import NAMES as VALUE_TYPES
from impumae.modalities import ModalitySpec

FORMAT = "impumae-cohort"
FORMAT_VERSION = 1
LABEL_COLUMNS = ("time", "event", "true_risk")
SPLIT_INPUT_COLUMNS = ("fold",)  # consumed by make_splits, stored as split/fold
COMPRESSOR_NAMES = ("none", "lz4", "zstd")
# What the store does per kind (storage dtype, NaN as a missing value, feature names, default
# compressor and value type, chunk shape) is asked of the kind objects (``impumae.kinds``).


class CohortError(ValueError):
    """Bad cohort input or store; the message names the file, patient/row and field."""


def store_location(url: str) -> storage.Location:
    """Where a store is (``impumae.storage.Location``); a URL whose filesystem package is missing
    (``s3://`` without s3fs) is a CohortError naming the URL and ``pip install 'impumae[cloud]'``."""
    try:
        return storage.Location(url)
    except storage.MissingFilesystemError as error:
        raise CohortError(str(error)) from error


@dataclass
class CohortPlan:
    """What a cohort holds, known before the patients stream in.

    labels: index = patient id (str, unique), columns ``time`` (years, >= 0), ``event`` (0/1), optional
    ``true_risk``, ``fold`` (int, empty for holdout) and string columns (``project``, ``group``...).
    specs: one ``ModalitySpec`` per modality, in store order. feature_names: per tabular/clinical
    modality, one name per feature (default ``<m>_<i>``). value_types: per modality, one of
    ``VALUE_TYPES`` (default by kind). provenance: at least ``source``; ``command``, ``created``,
    library versions are filled in.
    """

    labels: pd.DataFrame
    specs: list[ModalitySpec]
    feature_names: dict[str, list[str]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    value_types: dict[str, str] = field(default_factory=dict)


def validate_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Checked copy of ``labels``: str unique ids, time float32 >= 0, event int8 0/1; raises CohortError."""
    if not isinstance(labels, pd.DataFrame):
        raise CohortError(f"labels must be a pandas DataFrame indexed by patient id, got {type(labels).__name__}")
    for column in ("time", "event"):
        if column not in labels.columns:
            raise CohortError(f"labels: missing column {column!r} (have {list(labels.columns)})")
    if len(labels) == 0:
        raise CohortError("labels: no patients")
    labels = labels.copy()
    ids = pd.Index([str(i).strip() for i in labels.index], name="patient_id")
    if (ids == "").any() or labels.index.isna().any():
        raise CohortError(f"labels: row {int(np.flatnonzero((ids == '') | labels.index.isna())[0])} has an empty patient id")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise CohortError(f"labels: duplicate patient id(s) {list(duplicated[:5])} ({len(duplicated)} in all)")
    labels.index = ids

    time = pd.to_numeric(labels["time"], errors="coerce")
    for bad, what in ((time.isna(), "missing or non-numeric"), (np.isinf(time), "infinite"), (time < 0, "negative")):
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CohortError(f"labels: patient {labels.index[row]!r}: field 'time' is {what} ({labels['time'].tolist()[row]!r}); "
                              f"{int(bad.sum())} patient(s) affected")
    event = pd.to_numeric(labels["event"], errors="coerce")
    bad = ~event.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CohortError(f"labels: patient {labels.index[row]!r}: field 'event' is {labels['event'].tolist()[row]!r}; expected 0 or 1 "
                          f"({int(bad.sum())} patient(s) affected)")
    labels["time"] = time.astype(np.float32)
    labels["event"] = event.astype(np.int8)
    if "true_risk" in labels.columns:
        risk = pd.to_numeric(labels["true_risk"], errors="coerce")
        if not np.isfinite(risk).all():
            pid = labels.index[~np.isfinite(risk.to_numpy())][0]
            raise CohortError(f"labels: patient {pid!r}: field 'true_risk' is not a finite number")
        labels["true_risk"] = risk.astype(np.float32)
    return labels


@dataclass
class CheckedPlan:
    """A plan after ``validate_plan``: checked labels, specs in store order, a feature name list and a
    value type for every modality."""

    labels: pd.DataFrame
    specs: list[ModalitySpec]
    feature_names: dict[str, list[str]]
    value_types: dict[str, str]


def validate_plan(plan: CohortPlan) -> CheckedPlan:
    """The plan checked and completed (default feature names and value types); raises CohortError."""
    labels = validate_labels(plan.labels)
    specs = list(plan.specs)
    if not specs:
        raise CohortError("plan: no modalities (specs is empty)")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CohortError(f"plan: modality names repeat: {names}")
    for spec in specs:
        if spec.dtype not in ("float32", "uint8"):
            raise CohortError(f"plan: modality {spec.name!r}: dtype {spec.dtype!r}; the store holds float32 or uint8")
    for mapping, what in ((plan.feature_names, "feature_names"), (plan.value_types, "value_types")):
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise CohortError(f"plan: {what} names unknown modality {unknown[0]!r}; modalities are {names}")
    feature_names = {}
    for spec in specs:
        given = plan.feature_names.get(spec.name)
        if spec.kind_object.has_feature_names:
            given = [f"{spec.name}_{i}" for i in range(spec.shape[0])] if given is None else [str(f) for f in given]
            if len(given) != spec.shape[0]:
                raise CohortError(f"plan: modality {spec.name!r}: {len(given)} feature names for shape {spec.shape}")
        feature_names[spec.name] = list(given or [])
    value_types = {}
    for spec in specs:
        value_type = plan.value_types.get(spec.name) or spec.kind_object.default_value_type
        if value_type not in VALUE_TYPES:
            raise CohortError(f"plan: modality {spec.name!r}: value type {value_type!r}; expected one of {VALUE_TYPES}")
        value_types[spec.name] = value_type
    return CheckedPlan(labels, specs, feature_names, value_types)


def check_sample(sample: Any, spec: ModalitySpec, patient_id: str) -> np.ndarray | None:
    """The sample as stored (float32 or uint8), or None when the modality is missing; raises CohortError."""
    if sample is None:
        return None
    where = f"patient {patient_id!r}, modality {spec.name!r}"
    array = np.asarray(sample)
    if array.shape != spec.shape:
        raise CohortError(f"{where}: shape {array.shape} does not match the spec's {spec.shape}")
    if spec.dtype == "uint8":
        if array.dtype != np.uint8:
            raise CohortError(f"{where}: dtype {array.dtype} does not match the spec's uint8")
        return array
    if array.dtype.kind not in "biuf":
        raise CohortError(f"{where}: dtype {array.dtype} is not numeric (spec: {spec.dtype})")
    array = array.astype(np.float32, copy=False)
    if np.isinf(array).any():
        index = tuple(int(i) for i in np.argwhere(np.isinf(array))[0])
        raise CohortError(f"{where}: infinite value at {index}")
    nan = np.isnan(array)
    if nan.any():
        if not spec.kind_object.nan_marks_missing_value:
            index = tuple(int(i) for i in np.argwhere(nan)[0])
            raise CohortError(f"{where}: NaN at {index}; NaN marks a missing value only in kinds "
                              f"{[k for k in kinds.names() if kinds.get(k).nan_marks_missing_value]}")
        if nan.all():
            return None  # an all-missing row is a missing modality
    return array
