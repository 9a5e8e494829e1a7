"""Raw-file ingest throughput: patients per second per modality, with 1 and 2 worker processes.

Raw inputs of realistic size are made in a temporary folder:
- RNA: GDC STAR tables with the GENCODE v36 layout (60,660 genes, 19,962 protein-coding, 4 N_* rows,
  ~4 MB each like the real files), values drawn at random;
- DNAm: SeSAMe betas covering the 25,978 listed probes plus 1,600 others (an HM27-sized file, 27,578
  rows, ~0.8 MB) or, with ``--dnam-rows 485577``, an HM450-sized file (~13 MB);
- MRI: the 2 real BraTS cases of ../shared/data, linked under ``--mri-patients`` case names;
- WSI: the 3 real 1024x1024 H&E regions, linked under ``--wsi-patients`` names.
Each modality is ingested alone (``build_from_raw`` with a fresh work cache, no clinical modality),
timing the whole build: locating files, the process pool (its start-up included), the store write.

    python experiments/bench/ingest.py                       # defaults below
    python experiments/bench/ingest.py --rna-patients 10 --dnam-patients 10 --mri-patients 4 --wsi-patients 6
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from impumae.data.raw import FileSource, ParseOptions, TableColumns, build_from_raw
from impumae.data.raw.dnam_sesame import DEFAULT_PROBES, read_probe_list

DATA = Path("../shared/data")
MRI_DIR = DATA / "tcga_lgg_mri_brainlesion"
HE_DIR = DATA / "tcga_gbmlgg_he_rois_pathomicfusion" / "imgs"
STAR_HEADER = "gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\ttpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded"


def write_star_tables(folder: Path, patients: list[str], rng, n_genes=60_660, n_coding=19_962) -> None:
    """GDC-layout STAR tables ``<folder>/<id>/<uuid>.rna_seq.augmented_star_gene_counts.tsv``."""
    gene_ids = np.array([f"ENSG{i:011d}.{i % 20 + 1}" for i in range(n_genes)])
    gene_types = np.where(rng.permutation(n_genes) < n_coding, "protein_coding", "lncRNA")
    names = np.array([f"GENE{i}" for i in range(n_genes)])
    head = ("# gene-model: GENCODE v36\n" + STAR_HEADER + "\n"
            + "".join(f"{n}\t\t\t{c}\t{c}\t{c}\t\t\t\n" for n, c in
                      (("N_unmapped", 2_112_322), ("N_multimapping", 4_851_611), ("N_noFeature", 1_234_567), ("N_ambiguous", 987_654))))
    for i, patient in enumerate(patients):
        counts = rng.negative_binomial(2, 0.01, n_genes)
        fpkm = counts * rng.uniform(0.01, 0.2)
        table = pd.DataFrame({"gene_id": gene_ids, "gene_name": names, "gene_type": gene_types, "unstranded": counts,
                              "stranded_first": counts // 2, "stranded_second": counts - counts // 2,
                              "tpm_unstranded": np.round(fpkm * 1.3, 4), "fpkm_unstranded": np.round(fpkm, 4),
                              "fpkm_uq_unstranded": np.round(fpkm * 3.1, 4)})
        path = folder / f"rna-{i}" / f"{i:08d}-uuid.rna_seq.augmented_star_gene_counts.tsv"
        path.parent.mkdir(parents=True)
        path.write_text(head + table.to_csv(sep="\t", header=False, index=False))


def write_betas_files(folder: Path, patients: list[str], rng, n_rows: int) -> None:
    probes = list(read_probe_list(DEFAULT_PROBES))
    probes += [f"cg9{i:07d}" for i in range(max(0, n_rows - len(probes)))]
    probes = np.array(probes[:n_rows])
    for i, patient in enumerate(patients):
        beta = rng.beta(0.5, 0.5, len(probes))
        text = np.char.mod("%.6f", beta).astype(object)
        text[rng.random(len(probes)) < 0.01] = "NA"
        path = folder / f"dna-{i}" / f"{i:08d}-uuid.methylation_array.sesame.level3betas.txt"
        path.parent.mkdir(parents=True)
        path.write_text("".join(f"{p}\t{b}\n" for p, b in zip(probes, text)))


def link_copies(sources: list[Path], folder: Path, patients: list[str], name_of) -> None:
    """Each patient gets a symlink to one of the real ``sources`` (cycled), named for that patient."""
    folder.mkdir(parents=True)
    for i, patient in enumerate(patients):
        source = sources[i % len(sources)].resolve()
        os.symlink(source, folder / name_of(patient, source), target_is_directory=source.is_dir())


def link_mri_cases(folder: Path, patients: list[str]) -> None:
    cases = sorted(p for p in MRI_DIR.iterdir() if p.is_dir())
    folder.mkdir(parents=True)
    for i, patient in enumerate(patients):  # a case folder per patient, files linked under the patient's name
        case, target = cases[i % len(cases)], folder / patient
        target.mkdir()
        for suffix in ("t1c", "seg"):
            os.symlink((case / f"{case.name}-{suffix}.nii.gz").resolve(), target / f"{patient}-{suffix}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rna-patients", type=int, default=40)
    parser.add_argument("--dnam-patients", type=int, default=40)
    parser.add_argument("--dnam-rows", type=int, default=27_578, help="rows per betas file (HM27 27,578; HM450 485,577)")
    parser.add_argument("--mri-patients", type=int, default=12)
    parser.add_argument("--wsi-patients", type=int, default=12)
    parser.add_argument("--workers", default="1,2", help="worker counts to time (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    counts = {"rna": args.rna_patients, "dna": args.dnam_patients, "mri": args.mri_patients, "wsi": args.wsi_patients}
    workdir = Path(tempfile.mkdtemp(prefix="impumae-ingest-bench-"))
    results = []
    try:
        patients = [f"TCGA-BM-{i:04d}" for i in range(max(counts.values()))]
        pd.DataFrame({"submitter_id": patients, "time": rng.uniform(0.1, 10, len(patients)).round(3),
                      "event": rng.integers(0, 2, len(patients)),
                      "rna_file_id": [f"rna-{i}" if i < counts["rna"] else "" for i in range(len(patients))],
                      "dnam_file_id": [f"dna-{i}" if i < counts["dna"] else "" for i in range(len(patients))]}
                     ).to_csv(workdir / "cohort.csv", index=False)
        start = time.perf_counter()
        write_star_tables(workdir / "rna", patients[:counts["rna"]], rng)
        write_betas_files(workdir / "dnam", patients[:counts["dna"]], rng, args.dnam_rows)
        link_mri_cases(workdir / "mri", patients[:counts["mri"]])
        link_copies(sorted(HE_DIR.glob("*.png")), workdir / "wsi", patients[:counts["wsi"]],
                    lambda patient, source: f"{patient}-01Z-00-DX1.png")
        rna_size = next((workdir / "rna").rglob("*.tsv")).stat().st_size
        dna_size = next((workdir / "dnam").rglob("*.txt")).stat().st_size
        print(f"made raw inputs in {time.perf_counter() - start:.1f} s: STAR table {rna_size / 1e6:.1f} MB, "
              f"betas file {dna_size / 1e6:.2f} MB ({args.dnam_rows:,} rows)")
        sources = {"rna": FileSource(str(workdir / "rna"), column="rna_file_id"),
                   "dna": FileSource(str(workdir / "dnam"), column="dnam_file_id"),
                   "mri": FileSource(str(workdir / "mri")), "wsi": FileSource(str(workdir / "wsi"))}
        for modality, source in sources.items():
            for workers in [int(w) for w in args.workers.split(",")]:
                out = workdir / f"{modality}-{workers}.zarr"
                start = time.perf_counter()
                cohort = build_from_raw(str(out), str(workdir / "cohort.csv"), {modality: source},
                                        columns=TableColumns(age=None, binary=(), project=None), options=ParseOptions(),
                                        clinical=False, workers=workers, progress=False, test_frac=0.0, n_folds=2)
                seconds = time.perf_counter() - start
                n = int(cohort.present[modality].sum())
                assert n == counts[modality], f"{modality}: {n} of {counts[modality]} ingested (see {out}.report.csv)"
                results.append((modality, workers, n, seconds))
                print(f"{modality:4s} workers {workers}: {n} patients in {seconds:6.1f} s = {n / seconds:6.2f} patients/s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n### Raw ingest throughput ({dt.date.today().isoformat()})\n")
    print(f"Command: `python experiments/bench/ingest.py {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items())}`  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, no GPU. "
          "Whole `build_from_raw` per modality (pool start-up and store write included).\n")
    print("| modality | input per patient | patients | 1 process (patients/s) | 2 processes (patients/s) |")
    print("|---|---|---|---|---|")
    inputs = {"rna": "STAR table, 60,660 genes (~4 MB)", "dna": f"SeSAMe betas, {args.dnam_rows:,} rows",
              "mri": "real BraTS t1c + seg, 240x240x155", "wsi": "real 1024x1024 H&E region"}
    for modality in sources:
        rate = {w: n / s for m, w, n, s in results if m == modality}
        print(f"| {modality} | {inputs[modality]} | {counts[modality]} | "
              + " | ".join(f"{rate[w]:.2f}" if w in rate else "-" for w in (1, 2)) + " |")


if __name__ == "__main__":
    main()
