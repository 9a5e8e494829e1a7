"""Build a cohort store from plain tables: a labels table plus one feature matrix per modality.

The labels table has one row per patient: a patient id, ``time``, ``event`` (1 = death) and,
optionally, ``group`` (train/test), ``fold`` (0..K-1) and ``project``; the column names are
configurable. Each feature matrix (CSV, TSV or parquet; gzip allowed) has one row per patient: the
first column (or a named one) is the patient id, every other column a numeric feature. Patients
absent from a matrix are missing for that modality; an empty cell is a missing value.

Known modality names (``rna``, ``dna``, ``clinical``, ``mutations`` and their aliases) take their
kind and depth from ``impumae.modalities.PAPER``; any other name becomes a ``tabular`` modality.
The patch is ``--patch NAME=INT`` or else chosen from the feature count by the kind
(:meth:`impumae.kinds.Kind.default_patch`: 16-32 tokens for tabular data), so a 76-feature ``rna``
table gets 19 tokens, not the paper's 16k-gene patch of 512 (one token, nothing to mask).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from typing import Mapping

import numpy as np
import pandas as pd

from impumae.data.store import VALUE_TYPES, Cohort, CohortError, CohortPlan, validate_labels, write_cohort, write_options
from impumae.modalities import PAPER, ModalitySpec, canonical

HELP = "a labels table plus per-modality feature matrices (CSV, TSV or parquet)"
DEFAULT_DEPTH = 2
DEFAULT_VALUE_TYPES = {"dna": "beta", "mutations": "binary", "clinical": "clinical"}
TIME_UNITS_PER_YEAR = {"years": 1.0, "months": 12.0, "days": 365.0}
OPTIONAL_LABEL_COLUMNS = ("group", "fold", "project")


TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".tsv": "\t", ".txt": "\t", ".tab": "\t", ".csv": ","}


def read_table(path: str) -> pd.DataFrame:
    """A CSV (``.csv``), TSV (``.tsv``/``.txt``) or parquet file, optionally gzip-compressed, as read.

    Column names must be unique: pandas would rename a repeated ``g1`` to ``g1.1`` and pyarrow refuses
    it, so the header is read first and a repeated name is an error naming the file and the column.
    """
    name = os.fspath(path).lower().removesuffix(".gz")
    kind = next((kind for suffix, kind in TABLE_SUFFIXES.items() if name.endswith(suffix)), None)
    if kind is None:
        raise CohortError(f"{path}: unknown table format; use .csv, .tsv, .txt or .parquet (optionally .gz)")
    with _table_errors(path):
        header = _header(path, kind)
    repeated = pd.Index(header)[pd.Index(header).duplicated()].unique()
    if len(repeated):
        raise CohortError(f"{path}: column {repeated[0]!r} appears {header.count(repeated[0])} times in the header"
                          f"{f' ({len(repeated)} repeated names in all)' if len(repeated) > 1 else ''}; "
                          "column names must be unique")
    with _table_errors(path):
        return pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path, sep=kind)


def _header(path: str, kind: str) -> list:
    """The column names exactly as the file has them (no renaming of repeated names)."""
    if kind == "parquet":
        import pyarrow.parquet

        return list(pyarrow.parquet.read_schema(path).names)
    first_row = pd.read_csv(path, sep=kind, header=None, nrows=1, dtype=str, keep_default_na=False)
    return first_row.iloc[0].tolist()


@contextlib.contextmanager
def _table_errors(path: str):
    """Reading errors as CohortError naming the file."""
    try:
        yield
    except FileNotFoundError as error:
        raise CohortError(f"{path}: no such file") from error
    except (ValueError, OSError) as error:
        raise CohortError(f"{path}: cannot read it as a table ({error})") from error


def read_labels(path: str, id_column: str = "patient_id", time_column: str = "time", event_column: str = "event",
                group_column: str = "group", fold_column: str = "fold", project_column: str = "project",
                time_unit: str = "years") -> pd.DataFrame:
    """The labels table as the store wants it: index = patient id; time (years), event, [group, fold, project]."""
    if time_unit not in TIME_UNITS_PER_YEAR:
        raise CohortError(f"time unit {time_unit!r}: expected one of {list(TIME_UNITS_PER_YEAR)}")
    table = read_table(path)
    wanted = {id_column: "patient_id", time_column: "time", event_column: "event"}
    for column in wanted:
        if column not in table.columns:
            raise CohortError(f"{path}: no column {column!r} (columns: {list(table.columns)[:12]})")
    optional = dict(zip((group_column, fold_column, project_column), OPTIONAL_LABEL_COLUMNS))
    wanted.update({c: name for c, name in optional.items() if c in table.columns})
    labels = table[list(wanted)].rename(columns=wanted).set_index("patient_id")
    try:
        labels = validate_labels(labels)
    except CohortError as error:
        raise CohortError(f"{path}: {str(error).removeprefix('labels: ')}") from error
    labels["time"] = (labels["time"] / TIME_UNITS_PER_YEAR[time_unit]).astype(np.float32)
    return labels


def read_matrix(path: str, id_column: str | None = None) -> pd.DataFrame:
    """A feature matrix: index = patient id (str), columns = features, float32 values (NaN = missing)."""
    table = read_table(path)
    if table.shape[1] < 2:
        raise CohortError(f"{path}: needs a patient id column and at least one feature column")
    if id_column is None:
        id_column = table.columns[0]
    elif id_column not in table.columns:
        raise CohortError(f"{path}: no patient id column {id_column!r} (columns: {list(table.columns)[:12]})")
    ids = table[id_column]
    if ids.isna().any():
        raise CohortError(f"{path}: row {int(np.flatnonzero(ids.isna().to_numpy())[0])} has no patient id")
    table = table.drop(columns=id_column).set_axis(pd.Index(ids.astype(str).str.strip(), name="patient_id"), axis=0)
    duplicated = table.index[table.index.duplicated()].unique()
    if len(duplicated):
        raise CohortError(f"{path}: duplicate patient id(s) {list(duplicated[:5])} ({len(duplicated)} in all)")
    values = table.apply(pd.to_numeric, errors="coerce")
    not_numeric = values.isna().to_numpy() & table.notna().to_numpy()
    if not_numeric.any():
        row, col = (int(i) for i in np.argwhere(not_numeric)[0])
        raise CohortError(f"{path}: patient {table.index[row]!r}, column {table.columns[col]!r}: "
                          f"{table.iat[row, col]!r} is not a number")
    values = values.astype(np.float64)
    infinite = np.isinf(values.to_numpy())
    if infinite.any():
        row, col = (int(i) for i in np.argwhere(infinite)[0])
        raise CohortError(f"{path}: patient {table.index[row]!r}, column {table.columns[col]!r}: infinite value")
    return values.astype(np.float32)


def modality_spec(name: str, n_features: int, patch: int | None = None) -> ModalitySpec:
    """The spec of a table modality: the registry's kind/patch/depth for known names, else tabular."""
    known = PAPER.get(name)
    if known is not None and not known.kind_object.has_feature_names:
        raise CohortError(f"modality {name!r} is a {known.kind}; a feature table can only hold tabular data")
    if known is None:
        known = ModalitySpec(name, "tabular", (n_features,), depth=DEFAULT_DEPTH)
    if patch is not None and patch < 1:
        raise CohortError(f"modality {name!r}: patch must be >= 1, got {patch}")
    spec = known.with_(shape=(n_features,))
    return spec.with_(patch=patch or spec.kind_object.default_patch(spec))


def build_from_tables(labels_path: str, modality_paths: Mapping[str, str], out: str, overwrite: bool = False, *,
                      id_column: str = "patient_id", time_column: str = "time", event_column: str = "event",
                      group_column: str = "group", fold_column: str = "fold", project_column: str = "project",
                      time_unit: str = "years", matrix_id_column: str | None = None,
                      patches: Mapping[str, int] | None = None, value_types: Mapping[str, str] | None = None,
                      shard_patients: int = 64, split_seed: int = 0, test_frac: float = 0.2, n_folds: int = 5,
                      progress: bool = True, command: str | None = None) -> Cohort:
    """Write a cohort store at ``out`` from a labels table and ``{modality name: matrix path}``."""
    if not modality_paths:
        raise CohortError("no feature matrices given: pass at least one modality (--modality NAME=PATH)")
    patches = {canonical(k): v for k, v in (patches or {}).items()}
    value_types = {canonical(k): v for k, v in (value_types or {}).items()}
    names = [canonical(n) for n in modality_paths]
    if len(set(names)) != len(names):
        raise CohortError(f"modality names repeat once aliases are resolved: {list(modality_paths)} -> {names}")
    for mapping, what in ((patches, "--patch"), (value_types, "--value-type")):
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise CohortError(f"{what} names modality {unknown[0]!r}, which has no matrix (modalities: {names})")
    labels = read_labels(labels_path, id_column, time_column, event_column, group_column, fold_column,
                         project_column, time_unit)

    specs, matrices, feature_names = [], {}, {}
    for name, path in zip(names, modality_paths.values()):
        matrix = read_matrix(path, matrix_id_column)
        _check_ids(matrix.index, labels.index, path)
        specs.append(modality_spec(name, matrix.shape[1], patches.get(name)))
        feature_names[name] = [str(c) for c in matrix.columns]
        aligned = matrix.reindex(labels.index)  # patients absent from the matrix: all-NaN rows = missing
        matrices[name] = aligned.to_numpy(np.float32)
    resolved_types = {s.name: value_types.get(s.name) or infer_value_type(s.name, matrices[s.name])
                      for s in specs}

    plan = CohortPlan(labels=labels, specs=specs, feature_names=feature_names, value_types=resolved_types,
                      provenance={"source": "tables", "labels": os.fspath(labels_path),
                                  "matrices": {n: os.fspath(p) for n, p in zip(names, modality_paths.values())},
                                  **({"command": command} if command else {})})
    patients = ({name: rows[i] for name, rows in matrices.items()} for i in range(len(labels)))
    return write_cohort(out, plan, patients, overwrite=overwrite, shard_patients=shard_patients,
                        split_seed=split_seed, test_frac=test_frac, n_folds=n_folds, progress=progress,
                        labels_file=os.fspath(labels_path))


def infer_value_type(name: str, values: np.ndarray, say: bool = True) -> str:
    """The value type of a modality given without ``--value-type``: the registry's default for ``dna``
    (beta), ``mutations`` (binary) and ``clinical``; for ``rna``, ``fpkm_uq`` when every value is >= 0
    (expression levels) and ``zscore`` otherwise (already normalised), said on the console since a model
    trained on one refuses a cohort of the other; ``raw`` for any other name."""
    if name in DEFAULT_VALUE_TYPES:
        return DEFAULT_VALUE_TYPES[name]
    if name != "rna":
        return "raw"
    finite = values[np.isfinite(values)]
    inferred, why = (("fpkm_uq", "every value >= 0: expression levels") if finite.size and finite.min() >= 0
                     else ("zscore", "negative values: already normalised"))
    if say:
        print(f"rna: value type {inferred!r} inferred ({why}); pass --value-type rna=TYPE if it is another "
              f"({', '.join(VALUE_TYPES)})")
    return inferred


def _check_ids(matrix_ids: pd.Index, labelled_ids: pd.Index, path: str) -> None:
    unmatched = matrix_ids[~matrix_ids.isin(labelled_ids)]
    if len(unmatched) == len(matrix_ids):
        raise CohortError(f"{path}: none of its {len(matrix_ids)} patient ids match a labelled patient "
                          f"(its ids: {list(matrix_ids[:3])}; labels: {list(labelled_ids[:3])})")
    if len(unmatched):
        warnings.warn(f"{path}: {len(unmatched)} of {len(matrix_ids)} patient ids match no labelled patient and "
                      f"are skipped: {list(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}", stacklevel=3)


# ---------------------------------------------------------------------------------------------
# command line (experiments/build_cohort.py tables ...)
# ---------------------------------------------------------------------------------------------
def _pairs(texts: list[str], option: str, convert=str) -> dict:
    pairs = {}
    for text in texts or []:
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise CohortError(f"{option} {text!r}: expected NAME=VALUE")
        try:
            pairs[name.strip()] = convert(value.strip())
        except ValueError as error:
            raise CohortError(f"{option} {text!r}: {error}") from error
    return pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, metavar="PATH",
                        help="labels table (CSV/TSV/parquet): one row per patient with id, time and event columns")
    parser.add_argument("--modality", action="append", default=[], metavar="NAME=PATH", required=True,
                        help="a feature matrix for modality NAME, one row per patient (repeat for each modality); "
                             "known names (rna, dna, clinical, mutations) use the registry's kind and patch")
    parser.add_argument("--id-column", default="patient_id", help="patient id column of the labels table (default: %(default)s)")
    parser.add_argument("--time-column", default="time", help="survival time column (default: %(default)s)")
    parser.add_argument("--event-column", default="event", help="event column, 1 = death, 0 = censored (default: %(default)s)")
    parser.add_argument("--group-column", default="group",
                        help="optional train/test column fixing the holdout split, used when present (default: %(default)s)")
    parser.add_argument("--fold-column", default="fold",
                        help="optional fold column (0..K-1, empty for holdout), used when present (default: %(default)s)")
    parser.add_argument("--project-column", default="project",
                        help="optional project column, used to stratify splits when present (default: %(default)s)")
    parser.add_argument("--time-unit", choices=sorted(TIME_UNITS_PER_YEAR), default="years",
                        help="unit of the time column; stored in years (default: %(default)s)")
    parser.add_argument("--matrix-id-column", default=None,
                        help="patient id column of the feature matrices (default: their first column)")
    parser.add_argument("--patch", action="append", default=[], metavar="NAME=INT",
                        help="features per token for modality NAME (default: chosen from the feature count, 16-32 tokens)")
    parser.add_argument("--value-type", action="append", default=[], metavar="NAME=TYPE",
                        help=f"what modality NAME holds, one of {', '.join(VALUE_TYPES)} (default: dna beta, "
                             "mutations binary, clinical clinical, rna fpkm_uq if every value is >= 0 else zscore "
                             "(said on the console), others raw)")


def build(args: argparse.Namespace, out: str, overwrite: bool) -> Cohort:
    return build_from_tables(
        args.labels, _pairs(args.modality, "--modality"), out, overwrite,
        id_column=args.id_column, time_column=args.time_column, event_column=args.event_column,
        group_column=args.group_column, fold_column=args.fold_column, project_column=args.project_column,
        time_unit=args.time_unit, matrix_id_column=args.matrix_id_column,
        patches=_pairs(args.patch, "--patch", int), value_types=_pairs(args.value_type, "--value-type"),
        **write_options(args))
