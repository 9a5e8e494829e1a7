"""Reading a cohort store: ``Cohort.open(url)`` -> labels, presence, splits, feature names,
provenance, and values (one patient, a batch of rows, or a whole modality at once).

Modality arrays of the layout ``write_cohort`` writes are read by ``shards.ShardReader`` (no zarr
per-chunk machinery); any other layout by zarr itself.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import zarr

from impumae.modalities import ModalitySpec

from .schema import FORMAT, FORMAT_VERSION, LABEL_COLUMNS, CohortError, store_location
from .shards import ShardReader


class Cohort:
    """A cohort store opened for reading. Picklable (reopens lazily), so DataLoader workers can use it."""

    def __init__(self, url: str):
        self._location = store_location(url)
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
        location = store_location(url)
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
    def imputed(self) -> pd.DataFrame | None:
        """An imputed store's flags, bool [patients x modalities]: True where the value was filled in by
        a model (``write_imputed_cohort``); None for a store of measured values only."""
        if "imputed" not in self._cache:
            self._cache["imputed"] = (pd.DataFrame(self.root["imputed"][:], columns=self.modalities,
                                                   index=pd.Index(self.patient_ids, name="patient_id"))
                                      if "imputed" in self.root else None)
        return None if self._cache["imputed"] is None else self._cache["imputed"].copy()

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
        if "present_values" not in self._cache:
            self._cache["present_values"] = self.root["present"][:]
        present = self._cache["present_values"][row]
        return {m: (self.read(m, [row])[0] if present[j] else None) for j, m in enumerate(self.modalities)}

    def read(self, modality: str, indices) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed) of one modality, shape [len(indices), *shape]."""
        self._check_modality(modality)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise CohortError(f"{self.url}: indices out of range 0..{len(self) - 1} for modality {modality!r}")
        reader = self._reader(modality)
        if reader is not None:
            return reader.rows(indices)  # any order, repeats allowed: rows are read straight into place
        wanted, inverse = np.unique(indices, return_inverse=True)
        array = self.root[f"modalities/{modality}"]
        # Read each run of consecutive rows with one slice (zarr reads only the chunks it needs;
        # integer-array ``oindex`` is far slower on sharded arrays), then restore the requested order.
        run_starts = np.flatnonzero(np.diff(wanted, prepend=-2) != 1)
        run_stops = np.append(run_starts[1:], len(wanted))
        rows = np.empty((len(wanted), *array.shape[1:]), dtype=array.dtype)
        for start, stop in zip(run_starts, run_stops):
            rows[start:stop] = array[wanted[start]:wanted[stop - 1] + 1]
        return rows[inverse]

    def load(self, modality: str, threads: int | None = None) -> np.ndarray:
        """The whole modality [N, *shape] in memory: the fast path for training.

        Reads whole shards, ``threads`` at a time (default: 2..8 by CPU count), each chunk decoded
        straight into the result; layouts the direct reader does not know are read by zarr.
        """
        self._check_modality(modality)
        reader = self._reader(modality)
        if reader is not None:
            return reader.load(threads=threads)
        return self.root[f"modalities/{modality}"][:]

    def _reader(self, modality: str) -> ShardReader | None:
        readers = self._cache.setdefault("readers", {})
        if modality not in readers:
            path = f"modalities/{modality}"
            readers[modality] = ShardReader.for_array(self.root[path], self._location, path)
        return readers[modality]

    def bytes_on_disk(self) -> int:
        return self._location.bytes_on_disk()

    def _check_modality(self, modality: str) -> None:
        if modality not in self.specs:
            raise CohortError(f"{self.url}: unknown modality {modality!r}; this cohort has {self.modalities}")
