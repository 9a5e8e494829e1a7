"""``build_cohort.py raw``: ingest raw TCGA/GDC and BraTS files into a cohort store.

Inputs: a cohort table (patient id, survival time and event, clinical columns) and, per modality, a
folder of raw files with a way to map patients to files (see :mod:`.manifest`):

- ``rna``: GDC STAR gene counts -> fpkm_uq of protein-coding genes (:mod:`.rna_star`)
- ``dna``: SeSAMe level-3 betas -> beta over a probe list (:mod:`.dnam_sesame`)
- ``mri``: BraTS case folders -> z-scored 64^3 crop around the tumour (:mod:`.mri_brats`)
- ``wsi``: slides or region images -> the 10 most informative 256x256 patches (:mod:`.wsi_tiles`)
- ``clinical``: age in years, yes/no treatments as 1/0 (:mod:`.clinical`)

Each patient's file is parsed once into ``<work dir>/<modality>/<patient>.npy`` (in a process pool
with ``workers`` > 1); a re-run skips what is cached. A bad file is recorded in the per-patient report
(``patient, modality, status, reason, file``; status found/skipped/missing/error) and that modality is
missing for that patient, or, with ``strict``, the build stops naming patient, file and reason.
The store is then assembled from the cache with :func:`impumae.data.store.write_cohort`.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from impumae.data.store import CohortError, CohortPlan, store_location, write_cohort, write_options
from impumae.modalities import PAPER, ModalitySpec

from .clinical import TableColumns, read_cohort_table
from .common import RawFileError
from .dnam_sesame import DEFAULT_PROBES, SesameParser
from .ingest import ReportRow, StrictStop, Task, WorkCache, run_tasks, source_signature, summarize_report, write_report
from .manifest import ERROR, FOUND, MISSING, SKIPPED, FileLocator, FileSource, Located
from .mri_brats import SEQUENCES, BratsParser
from .rna_star import StarParser, read_gene_list
from .wsi_tiles import REGION_SUFFIXES, SLIDE_SUFFIXES, PatchParser

HELP = "ingest raw TCGA/GDC files (STAR counts, SeSAMe betas, slides/regions) and BraTS MRI into a cohort store"


@dataclass(frozen=True)
class FileModality:
    """How the ingest treats one file-based modality."""

    option: str                  # CLI prefix (--<option>-root ...)
    suffixes: tuple[str, ...]    # file names accepted when searching a folder
    folders: bool = False        # one folder per patient (MRI case folders)


FILE_MODALITIES = {
    "rna": FileModality("rna", (".tsv", ".tsv.gz", ".txt", ".txt.gz")),
    "dna": FileModality("dnam", (".txt", ".txt.gz", ".tsv", ".tsv.gz")),
    "mri": FileModality("mri", (), folders=True),
    "wsi": FileModality("wsi", REGION_SUFFIXES + SLIDE_SUFFIXES),
}


@dataclass(frozen=True)
class ParseOptions:
    """Settings of the parsers (defaults = the paper's preprocessing)."""

    rna_genes: str | None = None          # gene list file; default: the protein-coding genes of the first
                                          # STAR file of the cohort's gene model
    dnam_probes: str = DEFAULT_PROBES
    mri_sequence: str = "t1c"
    mri_size: int = 64
    wsi_patches: int = 10
    wsi_patch_size: int = 256
    wsi_candidates: int = 1000
    wsi_seed: int = 0
    rna_gene_model: str | None = None     # e.g. "GENCODE v36"; default: the one most STAR files state


def _parser_for(modality: str, options: ParseOptions, located: dict[str, Located]):
    """The parser of one modality; RNA takes its gene model from most files (or ``rna_gene_model``)
    and its gene order from the first readable file of that model (or ``rna_genes``)."""
    if modality == "rna":
        gene_list = read_gene_list(options.rna_genes) if options.rna_genes else None
        paths = [where.path for where in located.values() if where.status == FOUND]
        if not paths:
            return None
        try:
            return StarParser.for_cohort(paths, gene_list, options.rna_gene_model)
        except ValueError as e:
            raise CohortError(f"rna: {e}") from e
    if modality == "dna":
        return SesameParser.from_probe_file(options.dnam_probes)
    if modality == "mri":
        return BratsParser(options.mri_sequence, options.mri_size)
    if modality == "wsi":
        return PatchParser(options.wsi_patches, options.wsi_patch_size, options.wsi_candidates, options.wsi_seed)
    raise ValueError(f"unknown raw modality {modality!r}; expected one of {list(FILE_MODALITIES)}")


def _spec_for(modality: str, parser, options: ParseOptions) -> ModalitySpec:
    base = PAPER[modality]
    if modality in ("rna", "dna"):
        spec = base.with_(shape=(len(parser.feature_names),))
        return spec.with_(patch=spec.kind_object.default_patch(spec))
    if modality == "mri":
        return base.with_(shape=(options.mri_size,) * 3, patch=math.gcd(options.mri_size, base.patch))
    return base.with_(shape=(options.wsi_patches, options.wsi_patch_size, options.wsi_patch_size, 3),
                      patch=math.gcd(options.wsi_patch_size, base.patch))


def build_from_raw(out: str, table: str, sources: Mapping[str, FileSource], *, columns: TableColumns = TableColumns(),
                   options: ParseOptions = ParseOptions(), clinical: bool = True, workers: int = 1, strict: bool = False,
                   work_dir: str | None = None, report: str | None = None, overwrite: bool = False,
                   shard_patients: int = 64, split_seed: int = 0, test_frac: float = 0.2, n_folds: int = 5,
                   progress: bool = True, drop_unlabelled: bool = False, allow_missing_modality: bool = False):
    """Ingest raw files into a cohort store at ``out`` and return it opened (:class:`Cohort`).

    ``sources`` maps modality (``rna``, ``dna``, ``mri``, ``wsi``) to where its files are. The work
    cache defaults to ``<out>.work`` and the report to ``<out>.report.csv`` (``out`` a local path;
    for a URL pass ``work_dir``, the report then goes into it).

    A patient of the table without a valid survival label (time, event) is refused, as the tables
    builder refuses it, unless ``drop_unlabelled`` (then left out and reported). A modality with no
    usable file for any patient fails the build unless ``allow_missing_modality`` (then left out of the
    store, and said so).
    """
    unknown = [m for m in sources if m not in FILE_MODALITIES]
    if unknown:
        raise CohortError(f"unknown raw modality {unknown[0]!r}; expected one of {list(FILE_MODALITIES)}")
    target = store_location(out)  # an s3:// URL without s3fs fails here, before any file is parsed
    if target.exists() and not overwrite:
        raise CohortError(f"output path {target.url} already exists; pass --overwrite to replace it")
    if work_dir is None:
        if not target.is_local:
            raise CohortError(f"--out {out} is a URL: pass --work-dir, a local folder for the per-patient cache")
        work_dir = target.url + ".work"
    work = Path(work_dir)
    report_path = Path(report) if report else (Path(target.url + ".report.csv") if target.is_local else work / "report.csv")

    if not clinical:  # the clinical columns are then neither required nor read
        columns = replace(columns, age=None, binary=())
    try:
        cohort_table = read_cohort_table(table, columns)
    except RawFileError as e:
        raise CohortError(str(e)) from e
    patients = list(cohort_table.labels.index)
    table_issues: dict[tuple[str, str], list[str]] = {}
    for issue in cohort_table.issues:
        table_issues.setdefault((issue.patient, "labels" if issue.field == "labels" else "clinical"), []).append(issue.reason)
    rows: list[ReportRow] = [ReportRow(patient, modality, ERROR, "; ".join(reasons), str(table))
                             for (patient, modality), reasons in table_issues.items()]
    unlabelled = [issue for issue in cohort_table.issues if issue.field == "labels"]
    if unlabelled and not drop_unlabelled:
        first = unlabelled[0]
        raise CohortError(f"{table}: patient {first.patient}: {first.reason.removesuffix('; patient left out')}"
                          f"{f' ({len(unlabelled)} patients without a valid label in all)' if len(unlabelled) > 1 else ''}; "
                          "fix or remove those rows, or pass --drop-unlabelled to leave them out")
    if strict and rows:
        raise CohortError(f"--strict: patient {rows[0].patient}, file {table}: {rows[0].reason}")

    # where each patient's files are, and the parser of each modality
    parsers, specs, caches, tasks = {}, {}, {}, []
    for modality, source in sources.items():
        try:
            locator = FileLocator(source, cohort_table.table, FILE_MODALITIES[modality].suffixes,
                                  FILE_MODALITIES[modality].folders)
        except RawFileError as e:
            raise CohortError(f"{modality}: {e}") from e
        located = {p: locator.locate(p) for p in patients}
        parser = _parser_for(modality, options, located)
        for patient, where in located.items():
            if where.status == FOUND and parser is None:
                where = Located(where.path, ERROR, "no readable file of this modality in the cohort to fix its "
                                                   "feature order (see the other errors)")
            if where.status != FOUND:
                rows.append(ReportRow(patient, modality, where.status, where.reason, str(where.path or "")))
                if strict and where.status == ERROR:
                    raise CohortError(f"--strict: patient {patient}, modality {modality}, file {where.path}: {where.reason}")
        if parser is None:
            continue
        parsers[modality] = parser
        specs[modality] = _spec_for(modality, parser, options)
        caches[modality] = cache = WorkCache(work, modality, {**parser.fingerprint, "shape": list(specs[modality].shape)})
        for patient, where in located.items():
            if where.status != FOUND:
                continue
            signature = source_signature(where.path)
            if cache.holds(patient, signature):
                rows.append(ReportRow(patient, modality, SKIPPED, f"cached in {cache.dir}", str(where.path)))
                continue
            tasks.append(Task(modality, patient, str(where.path), str(cache.array_path(patient)),
                              str(cache.meta_path(patient)), signature, specs[modality].shape, specs[modality].dtype))

    try:
        rows += run_tasks(tasks, parsers, workers=workers, strict=strict, progress=progress)
    except StrictStop as stop:
        write_report(report_path, rows + stop.done)
        raise CohortError(f"--strict: {stop}; report: {report_path}") from None

    if clinical:
        values = cohort_table.clinical
        for patient in patients:
            if (patient, "clinical") in table_issues:
                continue  # reported above as an error (the values that could be read are kept)
            known = bool(np.isfinite(values.loc[patient].to_numpy()).any())
            rows.append(ReportRow(patient, "clinical", FOUND if known else MISSING, "" if known else "no clinical value",
                                  str(table)))
        specs["clinical"] = PAPER["clinical"].with_(shape=(values.shape[1],))
    write_report(report_path, rows)
    print(summarize_report(rows))
    print(f"per-patient report: {report_path}")

    usable = {(r.patient, r.modality) for r in rows if r.status in (FOUND, SKIPPED) and r.modality in caches}
    for modality in sources:
        if modality in caches and any(m == modality for _, m in usable):
            continue
        if not allow_missing_modality:
            raise CohortError(f"{modality}: no patient has a usable file (see the report {report_path}); fix the files "
                              "or their mapping, drop the modality's options, or pass --allow-missing-modality to build "
                              "without it")
        print(f"{modality}: no patient has usable data; the modality is left out of the store (--allow-missing-modality)")
        specs.pop(modality, None)
        caches.pop(modality, None)
    if not specs:
        raise CohortError("no modality has any usable data: nothing to store (see the report)")

    def samples():
        for patient in patients:
            sample = {m: (cache.load(patient) if (patient, m) in usable else None) for m, cache in caches.items()}
            if "clinical" in specs:
                sample["clinical"] = cohort_table.clinical.loc[patient].to_numpy(np.float32)
            yield sample

    feature_names = {m: parsers[m].feature_names for m in caches if parsers[m].feature_names}
    if "clinical" in specs:
        feature_names["clinical"] = columns.clinical_features
    value_types = {m: parsers[m].value_type for m in caches}
    if "clinical" in specs:
        value_types["clinical"] = "clinical"
    plan = CohortPlan(labels=cohort_table.labels, specs=list(specs.values()), feature_names=feature_names,
                      value_types=value_types,
                      provenance={"source": "raw", "table": str(table), "report": str(report_path),
                                  "sources": {m: asdict(s) for m, s in sources.items()}, "options": asdict(options),
                                  "columns": asdict(columns)})
    return write_cohort(out, plan, samples(), overwrite=overwrite, shard_patients=shard_patients,
                        split_seed=split_seed, test_frac=test_frac, n_folds=n_folds, progress=progress,
                        labels_file=str(table))


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _name_equals_column(text: str) -> tuple[str, str]:
    name, sep, column = text.partition("=")
    if not sep or not name.strip() or not column.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=COLUMN, got {text!r}")
    return name.strip(), column.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, options = TableColumns(), ParseOptions()
    table = parser.add_argument_group("cohort table (defaults: the authors' dataset_with_dna.csv.gz)")
    table.add_argument("--table", required=True, metavar="PATH", help="cohort table, CSV or TSV (maybe .gz)")
    table.add_argument("--patient-column", default=defaults.patient, metavar="COL", help="default: %(default)s")
    table.add_argument("--time-column", default=defaults.time, metavar="COL", help="default: %(default)s")
    table.add_argument("--time-unit", default=defaults.time_unit, choices=("years", "days"), help="default: %(default)s")
    table.add_argument("--event-column", default=defaults.event, metavar="COL", help="1 = death (default: %(default)s)")
    table.add_argument("--project-column", default=defaults.project, metavar="COL",
                       help="stratifies the splits when present (default: %(default)s)")
    table.add_argument("--group-column", default=None, metavar="COL", help="train/test column to honour (e.g. group)")
    table.add_argument("--fold-column", default=None, metavar="COL", help="CV fold column to honour (e.g. splits)")
    table.add_argument("--age-column", default=defaults.age, metavar="COL", help="default: %(default)s")
    table.add_argument("--age-unit", default=defaults.age_unit, choices=("days", "years"), help="default: %(default)s")
    table.add_argument("--binary-column", dest="binary_columns", action="append", type=_name_equals_column,
                       metavar="NAME=COL", help="a yes/no clinical column (repeatable; default: "
                       + ", ".join(f"{n}={c}" for n, c in defaults.binary) + ")")
    table.add_argument("--no-clinical", action="store_true", help="store no clinical modality")

    for modality, spec in FILE_MODALITIES.items():
        o = spec.option
        group = parser.add_argument_group(f"{modality} files (the modality is ingested when --{o}-root is given)")
        group.add_argument(f"--{o}-root", metavar="DIR", help="folder of the raw files (GDC layout <root>/<id>/<file>)")
        group.add_argument(f"--{o}-column", metavar="COL", help="cohort-table column with the GDC file id, file name or "
                           "relative path" + (" (the BraTS case folder, e.g. brats_id)" if spec.folders else "")
                           + "; default: names under the root that start with the patient id")
        group.add_argument(f"--{o}-manifest", metavar="PATH", help="GDC manifest (id, filename, md5, size, state)")
        group.add_argument(f"--{o}-sample-sheet", metavar="PATH", help="GDC sample sheet (File ID, File Name, Case ID)")

    p = parser.add_argument_group("parsers")
    p.add_argument("--rna-genes", metavar="PATH", help="gene list (one id per line); default: the protein-coding "
                   "genes of the first file of the cohort's gene model")
    p.add_argument("--rna-gene-model", metavar="TEXT", help="the cohort's gene model as STAR files state it on their "
                   "first line, e.g. 'GENCODE v36'; files of another model are errors (default: the one most files state)")
    p.add_argument("--dnam-probes", default=options.dnam_probes, metavar="PATH", help="probe list (default: %(default)s)")
    p.add_argument("--mri-sequence", default=options.mri_sequence, choices=SEQUENCES, help="default: %(default)s")
    p.add_argument("--mri-size", type=int, default=options.mri_size, metavar="N", help="crop edge in voxels (default: %(default)s)")
    p.add_argument("--wsi-patches", type=int, default=options.wsi_patches, metavar="N", help="default: %(default)s")
    p.add_argument("--wsi-patch-size", type=int, default=options.wsi_patch_size, metavar="N", help="default: %(default)s")
    p.add_argument("--wsi-candidates", type=int, default=options.wsi_candidates, metavar="N", help="default: %(default)s")
    p.add_argument("--wsi-seed", type=int, default=options.wsi_seed, metavar="SEED", help="default: %(default)s")

    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, default=1, metavar="N", help="parser processes (default: %(default)s)")
    run.add_argument("--strict", action="store_true", help="stop at the first bad input (non-zero exit) instead of "
                     "marking that patient's modality missing")
    run.add_argument("--drop-unlabelled", action="store_true", help="leave out (and report) patients of the table "
                     "without a valid survival label (default: refuse them, as the tables builder does)")
    run.add_argument("--allow-missing-modality", action="store_true", help="build without a modality none of whose "
                     "files is usable (default: the build fails naming it)")
    run.add_argument("--work-dir", metavar="DIR", help="per-patient cache (default: <out>.work)")
    run.add_argument("--report", metavar="PATH", help="per-patient report CSV (default: <out>.report.csv)")


def build(args: argparse.Namespace, out: str, overwrite: bool):
    """``build_cohort.py raw``: the options of :func:`add_arguments` -> :func:`build_from_raw`."""
    columns = TableColumns(
        patient=args.patient_column, time=args.time_column, event=args.event_column, time_unit=args.time_unit,
        project=args.project_column or None, group=args.group_column, fold=args.fold_column,
        age=args.age_column or None, age_unit=args.age_unit,
        binary=tuple(args.binary_columns) if args.binary_columns else TableColumns().binary)
    sources = {}
    for modality, spec in FILE_MODALITIES.items():
        root = getattr(args, f"{spec.option}_root")
        if root:
            sources[modality] = FileSource(root, getattr(args, f"{spec.option}_column"),
                                           getattr(args, f"{spec.option}_manifest"),
                                           getattr(args, f"{spec.option}_sample_sheet"))
        elif any(getattr(args, f"{spec.option}_{k}") for k in ("column", "manifest", "sample_sheet")):
            raise CohortError(f"--{spec.option}-column/-manifest/-sample-sheet need --{spec.option}-root")
    options = ParseOptions(rna_genes=args.rna_genes, dnam_probes=args.dnam_probes, mri_sequence=args.mri_sequence,
                           mri_size=args.mri_size, wsi_patches=args.wsi_patches, wsi_patch_size=args.wsi_patch_size,
                           wsi_candidates=args.wsi_candidates, wsi_seed=args.wsi_seed,
                           rna_gene_model=args.rna_gene_model)
    return build_from_raw(out, args.table, sources, columns=columns, options=options, clinical=not args.no_clinical,
                          workers=args.workers, strict=args.strict, work_dir=args.work_dir, report=args.report,
                          overwrite=overwrite, drop_unlabelled=args.drop_unlabelled,
                          allow_missing_modality=args.allow_missing_modality, **write_options(args))


__all__ = ["HELP", "add_arguments", "build", "build_from_raw", "FileSource", "ParseOptions", "TableColumns",
           "RawFileError", "FILE_MODALITIES"]
