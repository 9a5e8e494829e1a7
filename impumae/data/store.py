"""The cohort store: one zarr v3 group per cohort, at a local path or any fsspec URL.

Layout (``docs/design.md``): ``labels/time`` float32 [N] (years), ``labels/event`` int8 [N],
optional ``labels/true_risk`` float32 [N], ``present`` bool [N, M], ``modalities/<m>`` [N, *shape]
(float32; images uint8) with one chunk per patient (images: one chunk per patch) and one shard per
block of patients, ``split/holdout`` bool [N] and ``split/fold`` int8 [N]. The root attributes hold
patient ids, modality names, specs, feature names, value types, per-patient string columns
(``obs_columns``) and provenance.

``write_cohort`` streams patients in, buffers one shard's worth of patients per modality and writes
each shard once (one writer per shard). The store is built at ``<url>.tmp-<random>`` and renamed
to ``url`` only when complete; on any failure the temporary store is removed and ``url`` is left as
it was. ``Cohort.open(url)`` reads it back: one patient, a batch, or a whole modality at once.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import fsspec
import numpy as np
import pandas as pd
import zarr
from tqdm.auto import tqdm

from impumae.data.splits import SplitError, make_splits
from impumae.modalities import ModalitySpec

FORMAT = "impumae-cohort"
FORMAT_VERSION = 1
VALUE_TYPES = ("fpkm_uq", "zscore", "beta", "binary", "zscored", "rgb", "clinical", "raw")
DEFAULT_VALUE_TYPE = {"tabular": "raw", "volume": "raw", "image": "rgb", "clinical": "clinical"}
LABEL_COLUMNS = ("time", "event", "true_risk")
SPLIT_INPUT_COLUMNS = ("fold",)  # consumed by make_splits, stored as split/fold
FLOAT_KINDS = ("tabular", "clinical")  # kinds whose NaN values mean "missing value"


class CohortError(ValueError):
    """Bad cohort input or store; the message names the file, patient/row and field."""


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


# ---------------------------------------------------------------------------------------------
# locations: local paths and fsspec URLs
# ---------------------------------------------------------------------------------------------
class _Location:
    """A store location: a local directory (``os`` calls) or a path in an fsspec filesystem."""

    def __init__(self, url: str):
        url = os.fspath(url)
        if url.startswith("file://"):
            url = url[len("file://"):]
        self.is_local = "://" not in url
        if self.is_local:
            self.url = os.path.abspath(url)
            self.fs, self.path = fsspec.filesystem("file"), self.url
        else:
            self.url = url.rstrip("/")
            self.fs, self.path = fsspec.core.url_to_fs(self.url)

    def sibling(self, suffix: str) -> "_Location":
        return _Location(self.url + suffix)

    def exists(self) -> bool:
        return os.path.exists(self.url) if self.is_local else self.fs.exists(self.path)

    def remove(self) -> None:
        if self.is_local:
            if os.path.isdir(self.url):
                shutil.rmtree(self.url)
            elif os.path.exists(self.url):
                os.remove(self.url)
        elif self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    def move_to(self, other: "_Location") -> None:
        if self.is_local:
            os.replace(self.url, other.url)
        else:
            self.fs.mv(self.path, other.path, recursive=True)

    def bytes_on_disk(self) -> int:
        if self.is_local:
            return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(self.url) for f in files)
        return int(self.fs.du(self.path, total=True))


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
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


def _validate_plan(plan: CohortPlan) -> tuple[pd.DataFrame, list[ModalitySpec], dict, dict]:
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
        if spec.kind in FLOAT_KINDS:
            given = [f"{spec.name}_{i}" for i in range(spec.shape[0])] if given is None else [str(f) for f in given]
            if len(given) != spec.shape[0]:
                raise CohortError(f"plan: modality {spec.name!r}: {len(given)} feature names for shape {spec.shape}")
        feature_names[spec.name] = list(given or [])
    value_types = {}
    for spec in specs:
        value_type = plan.value_types.get(spec.name, DEFAULT_VALUE_TYPE[spec.kind])
        if value_type not in VALUE_TYPES:
            raise CohortError(f"plan: modality {spec.name!r}: value type {value_type!r}; expected one of {VALUE_TYPES}")
        value_types[spec.name] = value_type
    return labels, specs, feature_names, value_types


def _check_sample(sample: Any, spec: ModalitySpec, patient_id: str) -> np.ndarray | None:
    """The sample as stored (float32 or uint8), or None when the modality is missing."""
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
        if spec.kind not in FLOAT_KINDS:
            index = tuple(int(i) for i in np.argwhere(nan)[0])
            raise CohortError(f"{where}: NaN at {index}; NaN marks a missing value only in tabular modalities")
        if nan.all():
            return None  # an all-missing row is a missing modality
    return array


def _provenance(given: Mapping[str, Any]) -> dict:
    versions = {"python": platform.python_version()}
    for package in ("numpy", "pandas", "zarr", "fsspec", "torch", "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"source": "unknown", "command": " ".join(sys.argv),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "impumae_version": _impumae_version(), "library_versions": versions, **dict(given)}


def _impumae_version() -> str:
    try:
        return importlib.metadata.version("impumae")
    except importlib.metadata.PackageNotFoundError:
        import impumae
        return getattr(impumae, "__version__", "unknown")


# ---------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------
def write_cohort(url: str, plan: CohortPlan, patients: Iterable[Mapping[str, Any]], overwrite: bool = False,
                 shard_patients: int = 64, split_seed: int = 0, test_frac: float = 0.2, n_folds: int = 5,
                 progress: bool = True) -> "Cohort":
    """Write a cohort store at ``url`` from ``plan`` and one dict per patient (labels order).

    Each dict maps modality name -> array (the spec's shape) or None (missing; an absent key is
    missing too). Raises ``CohortError`` for bad input; ``url`` is untouched unless the build succeeds.
    """
    if shard_patients < 1:
        raise CohortError(f"shard_patients must be >= 1, got {shard_patients}")
    target = _Location(url)
    if target.exists() and not overwrite:
        raise CohortError(f"output path {target.url} already exists; pass overwrite=True (--overwrite) to replace it")
    labels, specs, feature_names, value_types = _validate_plan(plan)
    try:
        splits = make_splits(labels, test_frac=test_frac, n_folds=n_folds, seed=split_seed)
    except SplitError as error:
        raise CohortError(f"labels: {error}") from error
    provenance = _provenance(plan.provenance)

    temporary = target.sibling(f".tmp-{secrets.token_hex(4)}")
    try:
        _write_store(temporary.url, labels, specs, feature_names, value_types, provenance, splits, patients,
                     shard_patients, progress)
        _replace(temporary, target)
    except BaseException:
        temporary.remove()
        raise
    return Cohort.open(target.url)


def _replace(temporary: _Location, target: _Location) -> None:
    """Move the finished store into place; an old store is removed only once the new one is there."""
    if not target.exists():
        temporary.move_to(target)
        return
    backup = target.sibling(f".old-{secrets.token_hex(4)}")
    target.move_to(backup)
    try:
        temporary.move_to(target)
    except BaseException:
        backup.move_to(target)
        raise
    backup.remove()


def _write_store(url, labels, specs, feature_names, value_types, provenance, splits, patients,
                 shard_patients, progress) -> None:
    n = len(labels)
    patient_ids = labels.index.tolist()
    obs_columns = {c: ["" if pd.isna(v) else str(v) for v in labels[c]]
                   for c in labels.columns if c not in LABEL_COLUMNS + SPLIT_INPUT_COLUMNS}
    root = zarr.open_group(url, mode="w", zarr_format=3)
    root.attrs.update({
        "format": FORMAT, "format_version": FORMAT_VERSION, "patient_ids": patient_ids,
        "modalities": [s.name for s in specs], "specs": {s.name: s.to_dict() for s in specs},
        "feature_names": feature_names, "value_types": value_types, "obs_columns": obs_columns,
        "provenance": provenance,
    })
    for column, dtype in (("time", "float32"), ("event", "int8"), ("true_risk", "float32")):
        if column in labels.columns:
            root.create_array(f"labels/{column}", data=labels[column].to_numpy(dtype), chunks=(n,))
    holdout = root.create_array("split/holdout", data=splits["holdout"].to_numpy(bool), chunks=(n,))
    holdout.attrs.update(splits.attrs)
    fold = root.create_array("split/fold", data=splits["fold"].to_numpy(np.int8), chunks=(n,))
    fold.attrs.update(splits.attrs)

    block = min(shard_patients, n)
    arrays, buffers, fills = {}, {}, {}
    for spec in specs:
        fill = 0 if spec.dtype == "uint8" else np.nan
        chunk = (1, 1, *spec.shape[1:]) if spec.kind == "image" else (1, *spec.shape)
        arrays[spec.name] = root.create_array(f"modalities/{spec.name}", shape=(n, *spec.shape), dtype=spec.dtype,
                                              chunks=chunk, shards=(block, *spec.shape), fill_value=fill)
        buffers[spec.name] = np.full((block, *spec.shape), fill, dtype=spec.dtype)
        fills[spec.name] = fill
    present = np.zeros((n, len(specs)), dtype=bool)
    spec_by_name = {s.name: s for s in specs}
    column_of = {s.name: j for j, s in enumerate(specs)}

    def flush(start: int, count: int) -> None:
        for name, buffer in buffers.items():
            if present[start:start + count, column_of[name]].any():
                arrays[name][start:start + count] = buffer[:count]
            buffer.fill(fills[name])

    row = -1
    for row, sample in enumerate(tqdm(patients, total=n, desc="writing cohort", unit="patient", disable=not progress)):
        if row >= n:
            raise CohortError(f"patients: more samples than the {n} labelled patients")
        patient_id = patient_ids[row]
        if not isinstance(sample, Mapping):
            raise CohortError(f"patient {patient_id!r} (row {row}): expected a dict of modality -> array, got {type(sample).__name__}")
        unknown = [key for key in sample if key not in spec_by_name]
        if unknown:
            raise CohortError(f"patient {patient_id!r} (row {row}): unknown modality {unknown[0]!r}; the plan has {list(spec_by_name)}")
        for column, spec in enumerate(specs):
            array = _check_sample(sample.get(spec.name), spec, patient_id)
            if array is not None:
                buffers[spec.name][row % block] = array
                present[row, column] = True
        if row % block == block - 1:
            flush(row - block + 1, block)
    if row + 1 != n:
        raise CohortError(f"patients: got {row + 1} samples for {n} labelled patients")
    if n % block:
        flush(n - n % block, n % block)
    root.create_array("present", data=present, chunks=(n, len(specs)))


# ---------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------
class Cohort:
    """A cohort store opened for reading. Picklable (reopens lazily), so DataLoader workers can use it."""

    def __init__(self, url: str):
        self._location = _Location(url)
        self.url = self._location.url
        self._root = None
        self._cache: dict[str, Any] = {}
        attrs = dict(self.root.attrs)
        if attrs.get("format") != FORMAT:
            raise CohortError(f"{self.url}: not an impumae cohort store (attrs.format = {attrs.get('format')!r})")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise CohortError(f"{self.url}: cohort format version {attrs.get('format_version')!r}; "
                              f"this impumae reads version {FORMAT_VERSION}")
        self._attrs = attrs
        self.patient_ids = np.asarray(attrs["patient_ids"], dtype=str)
        self.modalities = list(attrs["modalities"])
        self.specs = {m: ModalitySpec.from_dict(attrs["specs"][m]) for m in self.modalities}
        self.value_types = dict(attrs.get("value_types", {}))
        self._index = {pid: i for i, pid in enumerate(self.patient_ids)}

    @classmethod
    def open(cls, url: str) -> "Cohort":
        location = _Location(url)
        if not location.exists():
            raise CohortError(f"{location.url}: no cohort store there")
        return cls(url)

    @property
    def root(self) -> zarr.Group:
        if self._root is None:
            try:
                self._root = zarr.open_group(self.url, mode="r", zarr_format=3)
            except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
                raise CohortError(f"{self.url}: no cohort store there ({error})") from error
        return self._root

    def __getstate__(self):
        return {"url": self.url}

    def __setstate__(self, state):
        self.__init__(state["url"])

    def __len__(self) -> int:
        return len(self.patient_ids)

    def __repr__(self) -> str:
        return f"Cohort({self.url!r}: {len(self)} patients, modalities {self.modalities})"

    # -- per-patient tables --------------------------------------------------------------------
    @property
    def labels(self) -> pd.DataFrame:
        if "labels" not in self._cache:
            index = pd.Index(self.patient_ids, name="patient_id")
            columns = {name: self.root[f"labels/{name}"][:] for name in LABEL_COLUMNS if f"labels/{name}" in self.root}
            columns.update({c: pd.array(v, dtype=str) for c, v in self._attrs.get("obs_columns", {}).items()})
            self._cache["labels"] = pd.DataFrame(columns, index=index)
        return self._cache["labels"].copy()

    @property
    def present(self) -> pd.DataFrame:
        if "present" not in self._cache:
            self._cache["present"] = pd.DataFrame(self.root["present"][:], columns=self.modalities,
                                                  index=pd.Index(self.patient_ids, name="patient_id"))
        return self._cache["present"].copy()

    @property
    def splits(self) -> pd.DataFrame:
        if "splits" not in self._cache:
            holdout = self.root["split/holdout"]
            splits = pd.DataFrame({"holdout": holdout[:], "fold": self.root["split/fold"][:].astype(np.int64)},
                                  index=pd.Index(self.patient_ids, name="patient_id"))
            splits.attrs = dict(holdout.attrs)
            self._cache["splits"] = splits
        splits = self._cache["splits"].copy()
        splits.attrs = dict(self._cache["splits"].attrs)
        return splits

    @property
    def provenance(self) -> dict:
        return dict(self._attrs["provenance"])

    def feature_names(self, modality: str) -> list[str]:
        self._check_modality(modality)
        return list(self._attrs["feature_names"].get(modality, []))

    # -- values --------------------------------------------------------------------------------
    def index_of(self, patient: int | str) -> int:
        if isinstance(patient, (int, np.integer)):
            if not -len(self) <= patient < len(self):
                raise CohortError(f"{self.url}: patient index {patient} out of range (0..{len(self) - 1})")
            return int(patient) % len(self)
        if patient not in self._index:
            raise CohortError(f"{self.url}: no patient {patient!r}")
        return self._index[patient]

    def read_patient(self, patient: int | str) -> dict[str, np.ndarray | None]:
        """One patient's samples: {modality: array, or None where missing}."""
        row = self.index_of(patient)
        present = self.root["present"][row]
        return {m: (self.root[f"modalities/{m}"][row] if present[j] else None) for j, m in enumerate(self.modalities)}

    def read(self, modality: str, indices) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed) of one modality, shape [len(indices), *shape]."""
        self._check_modality(modality)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise CohortError(f"{self.url}: indices out of range 0..{len(self) - 1} for modality {modality!r}")
        array = self.root[f"modalities/{modality}"]
        # Read each run of consecutive rows with one slice (zarr reads only the chunks it needs;
        # integer-array ``oindex`` is far slower on sharded arrays), then restore the requested order.
        wanted, inverse = np.unique(indices, return_inverse=True)
        run_starts = np.flatnonzero(np.diff(wanted, prepend=-2) != 1)
        run_stops = np.append(run_starts[1:], len(wanted))
        rows = np.empty((len(wanted), *array.shape[1:]), dtype=array.dtype)
        for start, stop in zip(run_starts, run_stops):
            rows[start:stop] = array[wanted[start]:wanted[stop - 1] + 1]
        return rows[inverse]

    def load(self, modality: str) -> np.ndarray:
        """The whole modality [N, *shape] in memory (reads whole shards; the fast path for training)."""
        self._check_modality(modality)
        return self.root[f"modalities/{modality}"][:]

    def bytes_on_disk(self) -> int:
        return self._location.bytes_on_disk()

    def _check_modality(self, modality: str) -> None:
        if modality not in self.specs:
            raise CohortError(f"{self.url}: unknown modality {modality!r}; this cohort has {self.modalities}")


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------
def summarize(cohort: Cohort, n_patterns: int = 5) -> str:
    """A short text report: patients, events, splits, present per modality, common missingness patterns, size."""
    labels, present, splits = cohort.labels, cohort.present, cohort.splits
    n = len(labels)
    events = int(labels["event"].sum())
    lines = [f"cohort {cohort.url}",
             f"patients: {n}   events: {events} ({100 * events / n:.1f}%)   "
             f"holdout: {int(splits['holdout'].sum())}   folds: {splits.attrs.get('k')} ({splits.attrs.get('source')})",
             "present per modality:"]
    for m in cohort.modalities:
        spec = cohort.specs[m]
        count = int(present[m].sum())
        lines.append(f"  {m:<12} {count:>7} ({100 * count / n:5.1f}%)  {spec.kind} {spec.shape} {spec.dtype} "
                     f"[{cohort.value_types.get(m, '?')}]")
    patterns = present.apply(lambda r: "+".join(m for m in cohort.modalities if r[m]) or "(none)", axis=1)
    lines.append(f"most common missingness patterns (of {patterns.nunique()}):")
    for pattern, count in patterns.value_counts().head(n_patterns).items():
        lines.append(f"  {count:>7} ({100 * count / n:5.1f}%)  {pattern}")
    lines.append(f"bytes on disk: {cohort.bytes_on_disk():,} ({cohort.bytes_on_disk() / 2**20:.1f} MiB)")
    return "\n".join(lines)
