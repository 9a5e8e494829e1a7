"""Data path benchmark: how fast one training epoch's batches reach the model.

Three ways to feed shuffled batches of 24 patients ({modality: [24, *shape]} float32 tensors plus
present masks) for one epoch over every patient, with the omics at paper scale (RNA 16,304 genes,
DNAm 25,978 CpGs, GBM/LGG-like missingness, values random):

1. ``resident``: the engine's path. The whole cohort is read once (``Cohort.load``) into tensors
   on the device (`impumae.train.pretrain_loop.ResidentData`), and each batch is an index_select.
   The one-off load is timed separately from the epoch.
2. ``zarr-dataloader``: a ``torch.utils.data.DataLoader`` over a map-style Dataset that reads each
   patient from the zarr cohort store (``Cohort.read_patient``), ``--workers`` worker processes;
   and a variant whose items are whole batches (a ``BatchSampler``; ``Cohort.read`` of the batch's
   rows, one call per modality).
3. ``csv-dataloader``: the same DataLoader over one CSV file per patient per modality
   (``feature,value`` rows read with pandas: the original code's layout).

    python experiments/bench/data_path.py                    # 1,000 patients
    python experiments/bench/data_path.py --patients 200     # quick
Prints one Markdown table (patients/s for one epoch) with the machine and date.
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
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from impumae.data.store import Cohort, CohortPlan, write_cohort
from impumae.train.pretrain_loop import ResidentData
from impumae.modalities import PAPER

MODALITIES = ("rna", "dna")
PRESENCE = {"rna": 0.60, "dna": 0.84}   # TCGA GBM/LGG: RNA 664/1104, DNAm 924/1104
BATCH = 24


def make_cohort(directory: str, n: int, seed: int = 0) -> tuple[Cohort, str]:
    """A zarr store and a per-patient CSV folder holding the same random omics values."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:05d}" for i in range(n)]
    labels = pd.DataFrame({"time": rng.exponential(2.0, n), "event": rng.integers(0, 2, n)},
                          index=pd.Index(ids, name="patient_id"))
    present = {m: rng.random(n) < PRESENCE[m] for m in MODALITIES}
    none = ~np.any(list(present.values()), axis=0)
    present["rna"][none] = True
    specs = [PAPER[m] for m in MODALITIES]
    csv_dir = os.path.join(directory, "csv")
    for m in MODALITIES:
        os.makedirs(os.path.join(csv_dir, m))
    names = {m: [f"{m}_{j}" for j in range(PAPER[m].shape[0])] for m in MODALITIES}

    def patients():
        for i, pid in enumerate(ids):
            sample = {}
            for m in MODALITIES:
                if present[m][i]:
                    values = rng.normal(size=PAPER[m].shape).astype(np.float32)
                    pd.DataFrame({"feature": names[m], "value": values}).to_csv(
                        os.path.join(csv_dir, m, f"{pid}.csv"), index=False)
                    sample[m] = values
            yield sample

    plan = CohortPlan(labels=labels, specs=specs, feature_names=names, provenance={"source": "bench"},
                      value_types={m: "zscore" for m in MODALITIES})
    cohort = write_cohort(os.path.join(directory, "cohort.zarr"), plan, patients(), progress=False)
    return cohort, csv_dir


class _CohortDataset(Dataset):
    """Opens the cohort store lazily, once per DataLoader worker (a zarr handle is not shared)."""

    def __init__(self, url: str):
        self.url, self._cohort = url, None
        self.n = len(Cohort.open(url))

    def __len__(self):
        return self.n

    @property
    def cohort(self) -> Cohort:
        if self._cohort is None:
            self._cohort = Cohort.open(self.url)
        return self._cohort


class ZarrPatients(_CohortDataset):
    """One patient per item, read from the cohort store."""

    def __getitem__(self, i):
        sample = self.cohort.read_patient(int(i))
        return ({m: np.zeros(PAPER[m].shape, np.float32) if sample[m] is None else np.nan_to_num(sample[m])
                 for m in MODALITIES}, {m: sample[m] is not None for m in MODALITIES})


class ZarrBatches(_CohortDataset):
    """One whole batch per item: ``Cohort.read`` of the batch's rows, one call per modality."""

    _present = None

    def __getitem__(self, rows):
        if self._present is None:  # Cohort.present copies a DataFrame: once per worker, not per batch
            self._present = {m: self.cohort.present[m].to_numpy() for m in MODALITIES}
        rows = np.asarray(rows)
        return ({m: torch.from_numpy(np.nan_to_num(self.cohort.read(m, rows))) for m in MODALITIES},
                {m: torch.from_numpy(self._present[m][rows]) for m in MODALITIES})


class CsvPatients(Dataset):
    """One patient per item, read from ``<dir>/<modality>/<patient>.csv`` (absent file = missing)."""

    def __init__(self, directory: str, ids):
        self.directory, self.ids = directory, list(ids)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        x, present = {}, {}
        for m in MODALITIES:
            path = os.path.join(self.directory, m, f"{self.ids[i]}.csv")
            present[m] = os.path.exists(path)
            x[m] = (pd.read_csv(path)["value"].to_numpy(np.float32) if present[m]
                    else np.zeros(PAPER[m].shape, np.float32))
        return x, present


def time_dataloader(dataset: Dataset, workers: int, seed: int, whole_batches: bool = False) -> float:
    generator = torch.Generator().manual_seed(seed)
    context = "forkserver" if workers else None
    if whole_batches:  # the sampler yields a batch of indices; the Dataset reads them in one go
        sampler = BatchSampler(RandomSampler(dataset, generator=generator), BATCH, drop_last=False)
        loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                            multiprocessing_context=context)
    else:
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, generator=generator,
                            multiprocessing_context=context)
    start = time.perf_counter()
    seen = 0
    for x, present in loader:
        seen += x[MODALITIES[0]].shape[0]
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = p.parse_args(argv)
    directory = args.dir or tempfile.mkdtemp(prefix="impumae-data-path-")
    try:
        start = time.perf_counter()
        cohort, csv_dir = make_cohort(directory, args.patients)
        build_s = time.perf_counter() - start
        n = len(cohort)

        start = time.perf_counter()
        x = {m: cohort.load(m) for m in MODALITIES}
        present = {m: cohort.present[m].to_numpy() for m in MODALITIES}
        data = ResidentData({m: np.nan_to_num(v) for m, v in x.items()}, present, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        for xb, _ in data.batches(BATCH, seed=0, epoch=0):
            pass
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        resident_s = time.perf_counter() - start

        zarr_s = time_dataloader(ZarrPatients(str(cohort.url)), args.workers, 0)
        zarr_batch_s = time_dataloader(ZarrBatches(str(cohort.url)), args.workers, 0, whole_batches=True)
        csv_s = time_dataloader(CsvPatients(csv_dir, cohort.patient_ids), args.workers, 0)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)

    print(f"\ndata path, one epoch of batches of {BATCH}: {n} patients, rna (16304,) + dna (25978,) float32, "
          f"device {args.device}, DataLoader workers {args.workers}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{dt.date.today()}  (building the test data took {build_s:.0f} s)\n")
    print("| path | epoch (s) | patients/s | vs resident |")
    print("|---|---|---|---|")
    print(f"| resident tensors (one-off load {load_s:.2f} s, not in the epoch) | {resident_s:.3f} | {n / resident_s:,.0f} | 1x |")
    for name, seconds in (("DataLoader over the zarr store, one patient per item", zarr_s),
                          ("DataLoader over the zarr store, one `Cohort.read` per batch", zarr_batch_s),
                          ("DataLoader over per-patient CSV", csv_s)):
        print(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {seconds / resident_s:,.0f}x slower |")
    print(f"| resident incl. its one-off load | {load_s + resident_s:.2f} | {n / (load_s + resident_s):,.0f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
