"""Scaling benchmark: cost against cohort size and against the number of modalities.

Each point runs the engine's own stages in this process (no Ray, so the numbers are the work, not
the orchestration), on the tiny-scale synthetic cohort (rna (256,), dna (384,), mri 16^3, wsi
(3, 32, 32, 3); GBM/LGG-like missingness) and the small search-space model (width 64):

- build: writing the cohort store; load: reading the subset whole + fitting the fold transforms;
- pretrain epoch: one MAE epoch (batch 32, mask 0.5) over fold 0's training patients (the second
  of two epochs, so one-off warm-up is not counted);
- finetune epoch: one survival fine-tuning epoch (batch 32) + scoring the validation fold (the
  second of two);
- holdout bootstrap: `bootstrap_ci` (1,000 resamples) of the holdout predictions;
- the pretraining tensors' size, and the peak RSS of the process so far (sizes run in increasing
  order, so in the size table it is each size's peak).

    python experiments/bench/scaling.py                                   # sizes 1k, 5k, 10k; 1..4 modalities at 1k
    python experiments/bench/scaling.py --sizes 500 --modalities rna rna,dna   # quick
Prints Markdown tables with the machine and date.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import tempfile
import time

import torch

from impumae.data.synthetic import build_synthetic
from impumae.data.cohort_view import fit_transforms, load_cohort_arrays, make_batchable, population
from impumae.train.finetune_loop import FinetuneConfig, finetune, predict_logits
from impumae.train.pretrain_loop import PretrainConfig, ResidentData, pretrain
from impumae.model.mae import MAEConfig, MultimodalMAE
from impumae.modalities import parse_subset
from impumae.survival.metrics import bootstrap_ci

MODEL = {"width": 64, "heads": 4, "mlp_ratio": 2.0, "decoder_width": 64, "decoder_depth": 1, "decoder_heads": 4,
         "decoder_mlp": 128}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def measure(url: str, subset_text: str, device: str) -> dict:
    subset = parse_subset(subset_text)
    load_cohort_arrays.cache_clear()
    start = time.perf_counter()
    ca = load_cohort_arrays(url, subset)
    train_idx, val_idx = ca.train_indices(0), ca.validation_indices(0)
    transforms = fit_transforms(ca, subset, train_idx)
    pre_rows = population(ca, subset, train_idx, "pretrain")
    batch = make_batchable(ca, subset, transforms, pre_rows, "cpu")
    data = ResidentData(batch.x, batch.present, device=device)
    load_s = time.perf_counter() - start

    torch.manual_seed(0)
    mae = MultimodalMAE(transforms.output_specs(ca.specs), MAEConfig.from_dict(MODEL))
    marks = []
    pretrain(mae, data, PretrainConfig(epochs=2, batch_size=32), on_epoch_end=lambda *_: marks.append(time.perf_counter()))
    pretrain_s = marks[1] - marks[0]  # the second epoch: the first carries one-off warm-up costs

    ft_train = make_batchable(ca, subset, transforms, population(ca, subset, train_idx, "finetune"), device)
    ft_val = make_batchable(ca, subset, transforms, population(ca, subset, val_idx, "validate"), device)
    marks = []
    fitted = finetune(mae, ft_train, ft_val, FinetuneConfig(epochs=2, batch_size=32, lr=1e-3), device,
                      progress=lambda _: marks.append(time.perf_counter()))
    finetune_s = marks[1] - marks[0]

    hold = make_batchable(ca, subset, transforms, population(ca, subset, ca.holdout_indices(), "anchor"), device)
    logits = predict_logits(fitted.model, hold)
    start = time.perf_counter()
    bootstrap_ci(logits, fitted.bins.cuts, hold.time, hold.event, ft_train.time, ft_train.event, n_boot=1000,
                 from_logits=True)
    boot_s = time.perf_counter() - start
    tokens = sum(s.n_tokens for s in mae.specs.values())
    return {"subset": subset_text, "patients": len(ca.ids), "pretrain patients": len(data),
            "finetune patients": len(ft_train), "holdout": len(hold), "tokens": tokens,
            "resident data (MB)": sum(v.numel() * v.element_size() for v in data.x.values()) / 1e6,
            "params (M)": sum(p.numel() for p in mae.parameters()) / 1e6,
            "load (s)": load_s, "pretrain epoch (s)": pretrain_s, "finetune epoch (s)": finetune_s,
            "holdout bootstrap (s)": boot_s, "peak RSS (GB)": peak_rss_gb()}


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--size-subset", default="rna,dna,mri", help="subset for the size sweep (default %(default)s)")
    p.add_argument("--modalities", nargs="+", default=["rna", "rna,dna", "rna,dna,mri", "rna,dna,mri,wsi"],
                   help="subsets for the modality sweep, at the smallest size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dir", default=None, help="scratch folder (default: temporary, removed after)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    directory = args.dir or tempfile.mkdtemp(prefix="impumae-scaling-")
    size_rows, modality_rows = [], []
    try:
        urls = {}
        for n in sorted(set(args.sizes)):
            url = os.path.join(directory, f"synthetic-{n}.zarr")
            start = time.perf_counter()
            if not os.path.exists(url):
                build_synthetic(url, n_patients=n, progress=False)
            build_s = time.perf_counter() - start
            urls[n] = url
            row = {"build (s)": build_s, **measure(url, args.size_subset, args.device)}
            size_rows.append(row)
            print(f"size {n}: {row}", flush=True)
        smallest = urls[min(urls)]
        for subset in args.modalities:
            row = measure(smallest, subset, args.device)
            modality_rows.append(row)
            print(f"modalities {subset}: {row}", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)

    print(f"\nscaling on {args.device}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {dt.date.today()}; tiny-scale synthetic "
          f"cohort, model width 64\n")
    print(f"Cohort size (subset {args.size_subset}):\n")
    print(table(size_rows, ["patients", "build (s)", "load (s)", "pretrain patients", "pretrain epoch (s)",
                            "finetune patients", "finetune epoch (s)", "holdout", "holdout bootstrap (s)", "peak RSS (GB)"]))
    print(f"\nNumber of modalities ({min(urls)} patients):\n")
    print(table(modality_rows, ["subset", "tokens", "params (M)", "pretrain patients", "resident data (MB)", "load (s)",
                                "pretrain epoch (s)", "finetune epoch (s)"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
