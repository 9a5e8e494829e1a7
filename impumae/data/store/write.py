"""Writing cohort stores: ``write_cohort`` (a new cohort from a plan and a stream of patients) and
``write_imputed_cohort`` (a copy of a store with model-filled values, flagged in ``imputed``).

``write_cohort`` streams patients in, buffers one shard's worth of patients per modality and writes
each shard once (one writer per shard). Every store is built at ``<url>.tmp-<random>`` and moved to
``url`` only when complete (``impumae.storage.staged``); on any failure the temporary store is removed
and ``url`` is left as it was.

Codecs (chosen by measurement, ``experiments/bench/cohort_io.py``; override with ``write_cohort(...,
compressors={kind or modality: codec})``): float32 kinds (tabular, clinical, volume) use Blosc LZ4 with
byte shuffle (decodes at ~2.5-3.5 GB/s per core; on the synthetic cohort it compresses RNA/DNAm about
as well as zstd, 1.07-1.1x, and MRI 2.6x against zstd's 3.0x at less than half zstd's decode speed);
images (uint8 patches) are stored uncompressed: measured zstd-1 gains 1.13x on H&E-like patches at
twice the decode cost, and LZ4 gains nothing, while reading uncompressed patches is a plain copy.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import secrets
import sys
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import zarr
from tqdm.auto import tqdm

from impumae import kinds, storage
from impumae.modalities import ModalitySpec

from .read import Cohort
from .schema import (COMPRESSOR_NAMES, FORMAT, FORMAT_VERSION, LABEL_COLUMNS,
                     SPLIT_INPUT_COLUMNS, CheckedPlan, CohortError, CohortPlan, check_sample, store_location,
                     validate_plan)


def write_options(args) -> dict:
    """The common ``build_cohort.py`` options (``--shard-patients``, ``--split-seed``, ``--test-frac``,
    ``--folds``, ``--quiet``) as ``write_cohort`` keywords; options a caller did not set are left out."""
    names = {"shard_patients": "shard_patients", "split_seed": "split_seed", "test_frac": "test_frac", "folds": "n_folds"}
    options = {keyword: getattr(args, attr) for attr, keyword in names.items() if getattr(args, attr, None) is not None}
    return {**options, "progress": not getattr(args, "quiet", False)}


def write_cohort(url: str, plan: CohortPlan, patients: Iterable[Mapping[str, Any]], overwrite: bool = False,
                 shard_patients: int = 64, split_seed: int = 0, test_frac: float = 0.2, n_folds: int = 5,
                 progress: bool = True, compressors: Mapping[str, Any] | None = None,
                 labels_file: str | None = None) -> Cohort:
    """Write a cohort store at ``url`` from ``plan`` and one dict per patient (labels order).

    Each dict maps modality name -> array (the spec's shape) or None (missing; an absent key is
    missing too). ``compressors`` maps a kind (``tabular``, ``clinical``, ``volume``, ``image``) or a
    modality name (which wins) to ``"none"``, ``"lz4"`` (Blosc LZ4 + byte shuffle), ``"zstd"`` (zstd
    level 1) or a zarr v3 bytes-to-bytes codec; unnamed kinds keep their kind's ``default_compressor``.
    ``labels_file``: the file the labels came from, named in split errors (default ``labels``).
    Raises ``CohortError`` for bad input; ``url`` is untouched unless the build succeeds.
    """
    from impumae.data.splits import SplitError, SplitSizeError, make_splits  # scikit-learn: only writers need it

    if shard_patients < 1:
        raise CohortError(f"shard_patients must be >= 1, got {shard_patients}")
    target = store_location(url)
    _refuse_existing(target, overwrite)
    checked = validate_plan(plan)
    codecs = _compressors_for(checked.specs, compressors)
    try:
        splits = make_splits(checked.labels, test_frac=test_frac, n_folds=n_folds, seed=split_seed)
    except SplitSizeError as error:
        raise CohortError(f"{labels_file or 'labels'}: {error} (test_frac={test_frac}, n_folds={n_folds}); use fewer "
                          "folds or a smaller holdout: build_cohort.py --folds K / --test-frac FRAC") from error
    except SplitError as error:
        raise CohortError(f"{labels_file or 'labels'}: {error}") from error
    provenance = _provenance(plan.provenance)
    with storage.staged(target) as temporary:
        root, written = _write_store(temporary.url, checked, provenance, splits, patients, shard_patients, progress, codecs)
        _write_present(root, written)
    return Cohort.open(target.url)


def write_imputed_cohort(source: Cohort, out_url: str, values: Mapping[str, np.ndarray], imputed: np.ndarray,
                         provenance: Mapping[str, Any] | None = None, *, imputed_modalities: list[str] | None = None,
                         overwrite: bool = False, shard_patients: int = 64, progress: bool = False) -> Cohort:
    """Write a new store at ``out_url``: the ``source`` store plus values a model filled in.

    ``values``: {modality: [N, *shape] array}, the source's values with the imputed rows filled in
    (a modality not given is copied from the source); a row is stored where the source measured it or
    ``imputed`` flags it. ``imputed``: bool [N, M], columns ``source.modalities``, True only where the
    source lacks the modality. The new store keeps the source's labels, feature names, value types and
    splits (exactly, attributes included); its ``present`` is the source's (True = measured) and
    ``imputed`` is stored beside it, so nothing downstream mistakes an imputation for a measurement.
    ``provenance`` (e.g. the checkpoint) is recorded with the source's URL and provenance;
    ``imputed_modalities`` (attrs, default: the modalities with an imputed value) names what the model
    filled. Built at a temporary name and moved into place; the source is only read.
    """
    target = store_location(out_url)
    if target == store_location(source.url):
        raise CohortError(f"{target.url} is the source store; an imputed store is written as a new store "
                          "and the source is never modified")
    _refuse_existing(target, overwrite)
    modalities = list(source.modalities)
    measured = source.present.to_numpy(bool)
    imputed = _check_imputed(source, imputed, measured)
    _check_imputed_values(source, values)
    if imputed_modalities is None:
        imputed_modalities = [m for j, m in enumerate(modalities) if imputed[:, j].any()]
    checked = validate_plan(CohortPlan(
        labels=source.labels, specs=[source.specs[m] for m in modalities],
        feature_names={m: source.feature_names(m) for m in modalities if source.feature_names(m)},
        value_types=dict(source.value_types)))
    recorded = _provenance({"source": "impute", "parent_url": source.url, "parent": source.provenance,
                            **dict(provenance or {}), "imputed_modalities": list(imputed_modalities)})
    stored = measured | imputed
    arrays = {m: values[m] if m in values else source.load(m) for m in modalities}
    patients = ({m: (arrays[m][i] if stored[i, j] else None) for j, m in enumerate(modalities)}
                for i in range(len(source)))
    with storage.staged(target) as temporary:
        root, written = _write_store(temporary.url, checked, recorded, source.splits, patients, shard_patients,
                                     progress, _compressors_for(checked.specs, None))
        if (written != stored).any():
            i, j = (int(k) for k in np.argwhere(written != stored)[0])
            raise CohortError(f"values: patient {str(source.patient_ids[i])!r}, modality {modalities[j]!r}: the imputed "
                              "value is all NaN, so there is nothing to store for it")
        _write_present(root, measured)
        flags = root.create_array("imputed", data=imputed, chunks=imputed.shape)
        flags.attrs.update({"modalities": modalities})
        root.attrs.update({"imputed_modalities": list(imputed_modalities)})
    return Cohort.open(target.url)


def _check_imputed(source: Cohort, imputed: np.ndarray, measured: np.ndarray) -> np.ndarray:
    imputed = np.asarray(imputed)
    if imputed.dtype != bool or imputed.shape != measured.shape:
        raise CohortError(f"imputed: expected bool [patients, modalities] = {measured.shape} (modalities "
                          f"{source.modalities}), got {imputed.dtype} {imputed.shape}")
    if (imputed & measured).any():
        i, j = (int(k) for k in np.argwhere(imputed & measured)[0])
        raise CohortError(f"imputed: patient {str(source.patient_ids[i])!r}, modality {source.modalities[j]!r} is "
                          "measured in the source; only missing values can be imputed")
    return imputed


def _check_imputed_values(source: Cohort, values: Mapping[str, np.ndarray]) -> None:
    for m, array in values.items():
        if m not in source.specs:
            raise CohortError(f"values: unknown modality {m!r}; the source has {source.modalities}")
        expected = (len(source), *source.specs[m].shape)
        if np.shape(array) != expected:
            raise CohortError(f"values: modality {m!r}: shape {np.shape(array)}, expected {expected}")


def _refuse_existing(target: storage.Location, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise CohortError(f"output path {target.url} already exists; pass overwrite=True (--overwrite) to replace it")


def _provenance(given: Mapping[str, Any]) -> dict:
    versions = {"python": platform.python_version()}
    for package in ("numpy", "pandas", "zarr", "fsspec", "torch", "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"source": "unknown", "command": " ".join(sys.argv),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "impumae_version": _impumae_version(), "library_versions": versions, **dict(given),
            "build_id": secrets.token_hex(8)}  # unique per build: caches keyed on it never mistake a rebuilt store


def _impumae_version() -> str:
    try:
        return importlib.metadata.version("impumae")
    except importlib.metadata.PackageNotFoundError:
        import impumae
        return getattr(impumae, "__version__", "unknown")


# ---------------------------------------------------------------------------------------------
# codec policy
# ---------------------------------------------------------------------------------------------
def _compressor(choice: Any, where: str):
    """A zarr ``compressors=`` value for one choice: None (bytes only) or a codec."""
    from zarr.abc.codec import BytesBytesCodec
    from zarr.codecs import BloscCodec, ZstdCodec

    if choice is None or isinstance(choice, str) and choice.lower() == "none":
        return None
    if isinstance(choice, str):
        if choice.lower() == "lz4":
            return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
        if choice.lower() == "zstd":
            return ZstdCodec(level=1)
        raise CohortError(f"compressors: {where}: unknown compressor {choice!r}; expected one of {COMPRESSOR_NAMES} "
                          "or a zarr v3 bytes-to-bytes codec")
    if isinstance(choice, BytesBytesCodec):
        return choice
    raise CohortError(f"compressors: {where}: {choice!r} is not a compressor name {COMPRESSOR_NAMES} "
                      "nor a zarr v3 bytes-to-bytes codec")


def _compressors_for(specs: list[ModalitySpec], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Modality name -> the zarr ``compressors=`` value; modality names override kinds."""
    given = dict(given or {})
    known = {s.name for s in specs} | set(kinds.names())
    unknown = sorted(set(given) - known)
    if unknown:
        raise CohortError(f"compressors: {unknown[0]!r} is neither a kind {sorted(kinds.names())} "
                          f"nor a modality of the plan {[s.name for s in specs]}")
    choices = {}
    for spec in specs:
        choice = given.get(spec.name, given.get(spec.kind, spec.kind_object.default_compressor))
        choices[spec.name] = _compressor(choice, f"modality {spec.name!r}")
    return choices


# ---------------------------------------------------------------------------------------------
# the zarr group
# ---------------------------------------------------------------------------------------------
def _write_store(url: str, plan: CheckedPlan, provenance: dict, splits: pd.DataFrame,
                 patients: Iterable[Mapping[str, Any]], shard_patients: int, progress: bool,
                 codecs: Mapping[str, Any]) -> tuple[zarr.Group, np.ndarray]:
    """Everything but ``present``: ``(the open group, bool [N, M] of the samples written)``."""
    labels, specs = plan.labels, plan.specs
    n = len(labels)
    patient_ids = labels.index.tolist()
    obs_columns = {c: ["" if pd.isna(v) else str(v) for v in labels[c]]
                   for c in labels.columns if c not in LABEL_COLUMNS + SPLIT_INPUT_COLUMNS}
    root = zarr.open_group(url, mode="w", zarr_format=3)
    root.attrs.update({
        "format": FORMAT, "format_version": FORMAT_VERSION, "patient_ids": patient_ids,
        "modalities": [s.name for s in specs], "specs": {s.name: s.to_dict() for s in specs},
        "feature_names": plan.feature_names, "value_types": plan.value_types, "obs_columns": obs_columns,
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
        chunk = spec.kind_object.chunk_shape(spec)
        arrays[spec.name] = root.create_array(f"modalities/{spec.name}", shape=(n, *spec.shape), dtype=spec.dtype,
                                              chunks=chunk, shards=(block, *spec.shape), fill_value=fill,
                                              compressors=codecs.get(spec.name))
        buffers[spec.name] = np.full((block, *spec.shape), fill, dtype=spec.dtype)
        fills[spec.name] = fill
    written = np.zeros((n, len(specs)), dtype=bool)
    spec_by_name = {s.name: s for s in specs}
    column_of = {s.name: j for j, s in enumerate(specs)}

    def flush(start: int, count: int) -> None:
        for name, buffer in buffers.items():
            if written[start:start + count, column_of[name]].any():
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
            array = check_sample(sample.get(spec.name), spec, patient_id)
            if array is not None:
                buffers[spec.name][row % block] = array
                written[row, column] = True
        if row % block == block - 1:
            flush(row - block + 1, block)
    if row + 1 != n:
        raise CohortError(f"patients: got {row + 1} samples for {n} labelled patients")
    if n % block:
        flush(n - n % block, n % block)
    return root, written


def _write_present(root: zarr.Group, present: np.ndarray) -> None:
    root.create_array("present", data=present, chunks=present.shape)
