"""Where each patient's raw file is: GDC manifests, GDC sample sheets, a cohort-table column, or a folder.

The GDC client lays files out as ``<root>/<file id>/<file name>`` (plus a ``logs/`` folder). A GDC
manifest (``id filename md5 size state``, tab-separated) says which file name belongs to a file id.
What maps a patient to a file, in order of precedence:

1. a GDC sample sheet (``File ID``, ``File Name``, ``Case ID``): the case's file(s);
2. a column of the cohort table: a GDC file id (looked up in the manifest, or the one file in
   ``<root>/<id>/``), a file name listed in the manifest, or a path relative to ``root``; for MRI
   the BraTS case folder name;
3. neither: files (or, for MRI, folders) under ``root`` whose name starts with the patient id (with a
   manifest: the manifest's file names that start with the patient id, e.g. TCGA slide names).

A file listed but absent, or whose size differs from the manifest's, is an error for that patient
(its modality becomes missing); nothing listed is plain ``missing``. When a patient has several
files, the first by name is used and the reason says so.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .common import RawFileError

FOUND, MISSING, ERROR, SKIPPED = "found", "missing", "error", "skipped"


@dataclass(frozen=True)
class FileSource:
    """How to find one modality's raw files (see the module docstring)."""

    root: str
    column: str | None = None
    manifest: str | None = None
    sample_sheet: str | None = None


@dataclass(frozen=True)
class Located:
    path: Path | None
    status: str          # found / missing / error
    reason: str = ""


def read_manifest(path) -> pd.DataFrame:
    """A GDC manifest indexed by file ``id``: columns filename, and md5, size, state when present."""
    table = pd.read_csv(path, sep="\t", dtype=str)
    for column in ("id", "filename"):
        if column not in table.columns:
            raise RawFileError(path, f"not a GDC manifest: no column {column!r} (columns: {', '.join(table.columns)})")
    if table["id"].duplicated().any():
        raise RawFileError(path, f"file id {table['id'][table['id'].duplicated()].iloc[0]} appears twice")
    if "size" in table.columns:
        table["size"] = pd.to_numeric(table["size"], errors="coerce")
    return table.set_index("id")


def read_sample_sheet(path) -> dict[str, list[tuple[str, str]]]:
    """A GDC sample sheet as ``{case id: [(file id, file name), ...]}`` (a row may list several cases)."""
    table = pd.read_csv(path, sep="\t", dtype=str)
    for column in ("File ID", "File Name", "Case ID"):
        if column not in table.columns:
            raise RawFileError(path, f"not a GDC sample sheet: no column {column!r}")
    files: dict[str, list[tuple[str, str]]] = {}
    for file_id, name, cases in table[["File ID", "File Name", "Case ID"]].itertuples(index=False):
        for case in str(cases).split(","):
            files.setdefault(case.strip(), []).append((file_id, name))
    return {case: sorted(set(entries), key=lambda e: e[1]) for case, entries in files.items()}


def names_patient(name: str, patient: str) -> bool:
    """``name`` starts with the patient id followed by a separator (``TCGA-02-0001`` is not ``TCGA-02-00011``)."""
    return name.startswith(patient) and (len(name) == len(patient) or not name[len(patient)].isalnum())


def _pick(paths: list[Path], what: str) -> Located:
    if not paths:
        return Located(None, MISSING, f"no {what}")
    note = f"first of {len(paths)} files ({', '.join(p.name for p in paths[:3])}{', ...' if len(paths) > 3 else ''})" \
        if len(paths) > 1 else ""
    return Located(paths[0], FOUND, note)


class FileLocator:
    """Resolves patient -> raw path for one modality. ``folders=True`` for case folders (MRI)."""

    def __init__(self, source: FileSource, table: pd.DataFrame, suffixes: tuple[str, ...] = (), folders: bool = False):
        self.source, self.table, self.suffixes, self.folders = source, table, suffixes, folders
        self.root = Path(source.root)
        if not self.root.is_dir():
            raise RawFileError(self.root, "raw data folder not found")
        if source.column is not None and source.column not in table.columns:
            raise RawFileError(source.column, f"no column {source.column!r} in the cohort table "
                                              f"(columns: {', '.join(map(str, table.columns))})")
        self.manifest = read_manifest(source.manifest) if source.manifest else None
        self.by_filename = (pd.Series(self.manifest.index, index=self.manifest["filename"])
                            if self.manifest is not None else None)
        self.sample_sheet = read_sample_sheet(source.sample_sheet) if source.sample_sheet else None

    def _wanted(self, path: Path) -> bool:
        if self.folders:
            return path.is_dir()
        return path.is_file() and (not self.suffixes or path.name.lower().endswith(self.suffixes))

    def _check(self, path: Path, file_id: str | None = None) -> Located:
        """A listed file: it must exist (and have the manifest's size)."""
        if not (path.is_dir() if self.folders else path.is_file()):
            return Located(path, ERROR, f"listed but not found: {path}")
        if file_id is not None and self.manifest is not None and "size" in self.manifest.columns:
            expected = self.manifest.at[file_id, "size"]
            if pd.notna(expected) and path.stat().st_size != int(expected):
                return Located(path, ERROR, f"size {path.stat().st_size} bytes, manifest says {int(expected)}: "
                                            "incomplete download?")
        return Located(path, FOUND)

    def _from_file_id(self, file_id: str) -> Located:
        if self.manifest is not None:
            if file_id in self.manifest.index:
                return self._check(self.root / file_id / self.manifest.at[file_id, "filename"], file_id)
            if file_id in self.by_filename.index:
                real_id = self.by_filename[file_id]
                real_id = real_id if isinstance(real_id, str) else real_id.iloc[0]
                return self._check(self.root / real_id / file_id, real_id)
            return Located(None, ERROR, f"{file_id!r} is neither a file id nor a file name of manifest {self.source.manifest}")
        path = self.root / file_id
        if path.is_dir() and not self.folders:  # GDC layout without a manifest: the one file in <root>/<id>/
            return _pick(sorted(p for p in path.iterdir() if self._wanted(p)), f"data file in {path}")
        return self._check(path)

    def locate(self, patient: str) -> Located:
        if self.sample_sheet is not None:
            entries = self.sample_sheet.get(patient, [])
            if not entries:
                return Located(None, MISSING, f"no file for this case in sample sheet {self.source.sample_sheet}")
            first = self._check(self.root / entries[0][0] / entries[0][1])
            note = f"first of {len(entries)} files in the sample sheet" if len(entries) > 1 else ""
            return Located(first.path, first.status, "; ".join(r for r in (first.reason, note) if r))
        if self.source.column is not None:
            value = self.table.at[patient, self.source.column]
            if pd.isna(value) or not str(value).strip():
                return Located(None, MISSING, f"no file listed in column {self.source.column!r}")
            return self._from_file_id(str(value).strip())
        if self.manifest is not None:
            names = self.manifest["filename"]
            hits = names[[names_patient(n, patient) for n in names]].sort_values()
            if hits.empty:
                return Located(None, MISSING, f"no file name starting with {patient} in manifest {self.source.manifest}")
            first = self._check(self.root / hits.index[0] / hits.iloc[0], hits.index[0])
            note = f"first of {len(hits)} files in the manifest" if len(hits) > 1 else ""
            return Located(first.path, first.status, "; ".join(r for r in (first.reason, note) if r))
        matches = sorted(p for p in self.root.glob(glob.escape(patient) + "*") if names_patient(p.name, patient) and self._wanted(p))
        return _pick(matches, f"{'folder' if self.folders else 'file'} named {patient}* under {self.root}")
