"""Cohort store I/O benchmark against the original code's per-patient file layout.

The cohort is the paper-scale synthetic cohort (``impumae.data.synthetic``, shapes: rna (16304,),
dna (25978,), mri 64^3, wsi (10, 256, 256, 3) uint8, clinical (3,), GBM/LGG-like missingness).
Patients are generated once into memory (timed separately), then written twice:

- the cohort store (``write_cohort``: zarr v3, one chunk per patient / WSI patch, shards of patients);
- the original layout: one CSV file per patient per omics modality (``feature,value`` rows, read with
  pandas every epoch), and, generously for the baseline, one ``.npy`` file per patient for MRI and WSI.

Measured, each as store vs original layout with the ratio printed in the same run:
1. build time; 2. random per-patient reads of every modality; 3. one epoch's data (every patient,
every modality, shuffled batches of 24) delivered to a training loop, both by loading each modality
whole (``Cohort.load``) and by batched reads (``Cohort.read``); 4. all omics (rna, dna) in memory.

    python experiments/bench/cohort_io.py                  # 1,100 patients (paper scale)
    python experiments/bench/cohort_io.py --patients 60    # a quick run
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import tempfile
import time

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from impumae.data.store import Cohort, summarize, write_cohort
from impumae.data.synthetic import synthetic_plan

OMICS = ("rna", "dna")
BATCH = 24


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


class PerPatientFiles:
    """The original layout: ``<dir>/<modality>/<patient>.csv`` (omics) or ``.npy`` (images)."""

    def __init__(self, directory: str, feature_names: dict[str, list[str]]):
        self.directory, self.feature_names = directory, feature_names

    def path(self, modality: str, patient_id: str) -> str:
        suffix = "csv" if modality in OMICS else "npy"
        return os.path.join(self.directory, modality, f"{patient_id}.{suffix}")

    def write(self, modality: str, patient_id: str, array: np.ndarray) -> None:
        os.makedirs(os.path.join(self.directory, modality), exist_ok=True)
        if modality in OMICS:
            pd.DataFrame({"feature": self.feature_names[modality], "value": array}).to_csv(
                self.path(modality, patient_id), index=False)
        else:
            np.save(self.path(modality, patient_id), array)

    def read(self, modality: str, patient_id: str) -> np.ndarray:
        if modality in OMICS:
            return pd.read_csv(self.path(modality, patient_id))["value"].to_numpy(np.float32)
        return np.load(self.path(modality, patient_id))


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1100, help="cohort size (default: %(default)s)")
    parser.add_argument("--out-dir", default=None, help="where to write both layouts (default: a temporary directory, removed)")
    parser.add_argument("--reads", type=int, default=200, help="random per-patient reads per modality (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    directory = args.out_dir or tempfile.mkdtemp(prefix="impumae-bench-")
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    results = []

    def report(what: str, store_s: float, baseline_s: float, unit: str = "s") -> None:
        results.append((what, store_s, baseline_s))
        print(f"{what:<52} store {store_s:9.3f} {unit}   per-patient files {baseline_s:9.3f} {unit}   "
              f"ratio {baseline_s / store_s:8.1f}x", flush=True)

    try:
        plan, patient_iterator = synthetic_plan(args.patients, scale="paper", seed=args.seed, command="bench")
        generate_s, patients = timed(lambda: list(tqdm(patient_iterator, total=args.patients, desc="generating")))
        print(f"generated {args.patients} paper-scale patients in {generate_s:.1f} s (not counted below)")
        ids = list(plan.labels.index)
        modalities = [s.name for s in plan.specs if s.kind != "clinical"]

        store_path = os.path.join(directory, "cohort.zarr")
        build_store_s, cohort = timed(lambda: write_cohort(store_path, plan, patients, overwrite=True, progress=False))
        files = PerPatientFiles(os.path.join(directory, "per_patient"), plan.feature_names)

        def write_files():
            for patient_id, sample in tqdm(list(zip(ids, patients)), desc="writing per-patient files"):
                for m in modalities:
                    if sample.get(m) is not None:
                        files.write(m, patient_id, sample[m])
        build_files_s, _ = timed(write_files)
        del patients
        print(summarize(cohort))
        print(f"per-patient files: {du(files.directory):,} bytes\n")
        report("1. build (write every patient)", build_store_s, build_files_s)

        present = cohort.present
        for m in modalities:
            rows = np.flatnonzero(present[m].to_numpy())
            picks = rng.choice(rows, size=min(args.reads, len(rows)), replace=False)
            store_s, _ = timed(lambda: [cohort.read(m, [i]) for i in picks])
            files_s, _ = timed(lambda: [files.read(m, ids[i]) for i in picks])
            per_read = 1000.0 / len(picks)
            report(f"2. random per-patient read, {m} (ms/read)", store_s * per_read, files_s * per_read, unit="ms")

        order = rng.permutation(len(ids))
        batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
        present_rows = {m: present[m].to_numpy() for m in modalities}

        def epoch_store_load(names):
            whole = {m: Cohort.open(store_path).load(m) for m in names}  # fresh open: nothing cached
            return sum(int(whole[m][b].size) for b in batches for m in names)

        def epoch_store_read(names):
            reader = Cohort.open(store_path)
            return sum(int(reader.read(m, np.sort(b)).size) for b in batches for m in names)

        def epoch_files(names):
            total = 0
            for b in batches:
                for m in names:
                    total += sum(files.read(m, ids[i]).size for i in b if present_rows[m][i])
            return total

        for label, names in (("omics (rna, dna)", OMICS), ("all modalities", modalities)):
            files_s, _ = timed(epoch_files, names)
            load_s, _ = timed(epoch_store_load, names)
            read_s, _ = timed(epoch_store_read, names)
            report(f"3. one epoch, {label}, store: load whole", load_s, files_s)
            report(f"3. one epoch, {label}, store: batched reads", read_s, files_s)

        def all_omics_store():
            reader = Cohort.open(store_path)
            return [reader.load(m) for m in OMICS]

        def all_omics_files():
            return [np.stack([files.read(m, ids[i]) for i in np.flatnonzero(present_rows[m])]) for m in OMICS]
        store_s, arrays = timed(all_omics_store)
        files_s, _ = timed(all_omics_files)
        report("4. all omics (rna, dna) into memory", store_s, files_s)
        print(f"   ({sum(a.nbytes for a in arrays) / 2**20:.0f} MiB as float32 arrays)")
    finally:
        if args.out_dir is None:
            shutil.rmtree(directory, ignore_errors=True)

    print(f"\n### Cohort I/O benchmark ({args.patients} paper-scale synthetic patients)\n")
    print(f"`python experiments/bench/cohort_io.py --patients {args.patients}` on {platform.machine()} "
          f"{os.cpu_count()}-CPU {platform.system()}, {dt.date.today().isoformat()}; zarr store vs one file per "
          "patient per modality (omics: CSV read with pandas; MRI/WSI: .npy)\n")
    print("| measure | store | per-patient files | ratio |\n|---|---:|---:|---:|")
    for what, store_s, baseline_s in results:
        unit = "ms" if "ms/read" in what else "s"
        print(f"| {what.split(' (ms/read)')[0]} | {store_s:.3f} {unit} | {baseline_s:.3f} {unit} | {baseline_s / store_s:.1f}x |")


if __name__ == "__main__":
    main()
