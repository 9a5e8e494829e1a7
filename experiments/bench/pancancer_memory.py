"""Memory and speed of each stage on the pan-cancer paper-scale cohort (issue 22).

    python experiments/bench/pancancer_memory.py --patients 1000 [--cohort PATH] [--batches 3]

Builds (or opens) ``experiments/build_cohort.py pancancer --patients N`` (paper scale: rna 16,304,
dna 25,978, wsi 10x256x256x3, real pan-TCGA presence), then runs each stage in a fresh process on
fold 0 (the refit: every non-holdout patient) with the engine's data path
(:mod:`impumae.data.cohort_view`: present rows only, resident or streamed per modality by size):

- ``pretrain``: the pretraining population of fold 0, ``StreamedData``/``ResidentData`` batches, one
  masked-MAE optimiser step per batch (paper-scale MAE);
- ``trial_fold`` / ``refit``: the fine-tuning population of fold 0 / of every non-holdout patient,
  one survival step per batch (paper freeze, decoder imputation of missing modalities);
- ``holdout`` / ``prediction``: the holdout's anchor patients / every patient, forward only;
- ``imputation``: the patients missing a modality, ``MultimodalMAE.reconstruct``.

Each stage process reports its peak RSS (``ru_maxrss``), its USS at the end (psutil: the memory no
other process shares), the batch pipeline alone (reads, transforms, tensors; no model) in samples/s,
the model alone on the same batches, and both together (prefetch thread on). Then 4 ``trial_fold``
processes at once (one torch thread each). A watchdog kills everything when the processes together
pass ``--memory-cap-gb`` (default 8) of RSS. Prints one Markdown table and a JSON line.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[2]
SUBSET = ("rna", "dna", "wsi", "clinical")
# the small model of search_spaces/pancancer_small.yaml (CPU end-to-end runs); paper = MAEConfig() (256 wide)
SMALL_MODEL = dict(width=64, heads=2, mlp_ratio=2.0, depth={"rna": 1, "dna": 1, "wsi": 1}, decoder_width=64,
                   decoder_depth=1, decoder_heads=2, decoder_mlp=128)
STAGES = ("pretrain", "trial_fold", "refit", "holdout", "prediction", "imputation")


def stage_rows(ca, stage: str, subset):
    from impumae.data.cohort_view import REFIT, Population, population, split_subset

    tokenised, _ = split_subset(subset, ca.specs)
    everyone = np.arange(len(ca.ids))
    if stage == "pretrain":
        return 0, population(ca, tokenised, ca.train_indices(0), Population.PRETRAIN)
    if stage == "trial_fold":
        return 0, population(ca, subset, ca.train_indices(0), Population.FINETUNE)
    if stage == "refit":
        return REFIT, population(ca, subset, ca.train_indices(REFIT), Population.FINETUNE)
    if stage == "holdout":
        return REFIT, population(ca, subset, ca.holdout_indices(), Population.ANCHOR)
    if stage == "prediction":
        return REFIT, everyone
    if stage == "imputation":
        missing = ~np.all([ca.present[m] for m in tokenised], axis=0)
        return REFIT, everyone[missing & ca.any_present(tokenised)]
    raise ValueError(stage)


def worker(args) -> dict:
    """One stage in this process; returns its measurements."""
    import torch

    from impumae.data.cohort_view import fit_transforms, iter_batches, load_cohort_arrays, make_batchable, split_subset
    from impumae.model import MAEConfig, MultimodalMAE
    from impumae.survival.losses import nll_logistic_hazard
    from impumae.train.finetune_loop import FinetuneConfig, build_survival_model
    from impumae.train.pretrain_loop import (PretrainConfig, ResidentData, StreamedData, make_optimizer,
                                             pretrain_step)

    torch.set_num_threads(args.threads)
    stage, subset = args.worker, tuple(args.subset.split(","))
    start_rss = psutil.Process().memory_info().rss
    started = time.perf_counter()
    ca = load_cohort_arrays(args.cohort, subset)
    tokenised, clinical = split_subset(subset, ca.specs)
    fold, rows = stage_rows(ca, stage, subset)
    fitted = tokenised if stage == "pretrain" else subset
    transforms = fit_transforms(ca, fitted, ca.train_indices(fold))
    data = make_batchable(ca, fitted, transforms, rows)
    setup_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    n_batches = min(args.batches, -(-len(rows) // args.batch_size))
    order = rng.permutation(len(rows))
    groups = [order[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n_batches)]
    if stage == "pretrain":
        data = StreamedData(data) if hasattr(data, "streamed") else ResidentData(data.x, data.present)

        def batches():
            return data.batches(args.batch_size, seed=0, epoch=0)
    else:
        def batches():
            return (part for _, part in iter_batches(data, groups))

    def take(n):
        out, t0 = [], time.perf_counter()
        for i, part in enumerate(batches()):
            if i >= n:
                break
            out.append(part)
        return out, time.perf_counter() - t0

    prepared, pipeline_s = take(n_batches)
    samples = sum(len(next(iter((p[0] if isinstance(p, tuple) else p.x).values()))) for p in prepared)
    specs = {m: s for m, s in transforms.output_specs(ca.specs).items() if m in tokenised}
    torch.manual_seed(0)
    mae = MultimodalMAE(specs, MAEConfig() if args.model == "paper" else MAEConfig(**SMALL_MODEL))
    if stage == "pretrain":
        cfg = PretrainConfig(epochs=1, batch_size=args.batch_size)
        optimizer = make_optimizer(mae, cfg)

        def step(part):
            pretrain_step(mae, part[0], part[1], optimizer, None, cfg, None, False)
    else:
        n_clinical = 0 if prepared[0].clinical is None else prepared[0].clinical.shape[1]
        model = build_survival_model(mae, FinetuneConfig(), n_clinical)
        train = stage in ("trial_fold", "refit")
        optimizer = torch.optim.AdamW(model.parameter_groups(1e-2), lr=1e-4) if train else None

        def step(part):
            if stage == "imputation":
                with torch.no_grad():
                    mae.eval()
                    mae.reconstruct(part.x, part.present)
                return
            model.train(train)
            with torch.set_grad_enabled(train):
                logits = model(part.x, part.present, part.clinical)
                if train:
                    idx = torch.zeros(len(part), dtype=torch.long)
                    loss = nll_logistic_hazard(logits.float(), idx, torch.as_tensor(part.event, dtype=torch.float32))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()

    step(prepared[0])  # warm-up (first-call allocations), not timed
    timed = prepared[1:] or prepared
    t0 = time.perf_counter()
    for part in timed:
        step(part)
    model_s = (time.perf_counter() - t0) * len(prepared) / len(timed)
    del prepared
    t0 = time.perf_counter()
    together = 0
    for i, part in enumerate(batches()):
        if i >= n_batches:
            break
        step(part)
        together += 1
    both_s = time.perf_counter() - t0
    info = psutil.Process().memory_full_info()
    held = {m: int(getattr(ca.arrays[m], "nbytes", 0)) for m in subset}
    return {"stage": stage, "rows": int(len(rows)), "batches": n_batches, "samples": int(samples),
            "resident": {m: bool(getattr(ca.arrays[m], "resident", True)) for m in subset},
            "held_mb": {m: round(v / 2**20, 1) for m, v in held.items()},
            "setup_s": round(setup_s, 2), "pipeline_samples_per_s": round(samples / pipeline_s, 2),
            "model_samples_per_s": round(samples / model_s, 2), "together_samples_per_s": round(samples / both_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "start_rss_mb": round(start_rss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1)}


class Watchdog:
    """Sums the RSS of the given processes (and their children) every 0.2 s; kills them past the cap."""

    def __init__(self, cap_bytes: int):
        self.cap, self.procs, self.peak, self.killed = cap_bytes, [], 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.2):
            total = 0
            for p in list(self.procs):
                try:
                    proc = psutil.Process(p.pid)
                    total += sum(q.memory_info().rss for q in [proc, *proc.children(recursive=True)])
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            if total > self.cap:
                self.killed = True
                for p in self.procs:
                    p.kill()

    def stop(self):
        self._stop.set()


def run_stages(args, stages, copies=1) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--cohort", args.cohort, "--subset", args.subset, "--batches",
               str(args.batches), "--batch-size", str(args.batch_size), "--model", args.model]
    watchdog = Watchdog(int(args.memory_cap_gb * 2**30))
    results = []
    try:
        for stage in stages:
            threads = 1 if copies > 1 else args.threads
            procs = [subprocess.Popen(command + ["--worker", stage, "--threads", str(threads)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(copies)]
            watchdog.procs = procs
            watchdog.peak = 0
            for p in procs:
                out, err = p.communicate()
                if p.returncode != 0:
                    raise RuntimeError(f"stage {stage}: exit {p.returncode}{' (killed: memory cap)' if watchdog.killed else ''}\n{err[-3000:]}")
                results.append({**json.loads(out.strip().splitlines()[-1]), "copies": copies,
                                "group_peak_rss_mb": round(watchdog.peak / 2**20, 1)})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        watchdog.stop()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--cohort", help="an existing pan-cancer store (default: build /tmp/impumae-pancancer-N.zarr)")
    parser.add_argument("--subset", default=",".join(SUBSET))
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", choices=("paper", "small"), default="paper",
                        help="paper: the paper's MAE (width 256, depths 6/6/4); small: width 64, one block each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=4, help="trial_fold workers at once (0: skip)")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if not args.cohort:
        args.cohort = f"/tmp/impumae-pancancer-{args.patients}.zarr"
        if not Path(args.cohort).exists():
            from impumae.data.pancancer import TABLE, build_pancancer
            t0 = time.perf_counter()
            build_pancancer(args.cohort, ROOT.parent / "shared" / "data" / TABLE, n_patients=args.patients, progress=False)
            print(f"built {args.cohort} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    results = run_stages(args, args.stages.split(","))
    if args.concurrent:
        results += run_stages(args, ["trial_fold"], copies=args.concurrent)
    print(f"\n{dt.date.today()} | {os.cpu_count()} CPUs | model {args.model} | batch {args.batch_size} | "
          f"IMPUMAE_RESIDENT_MB={os.environ.get('IMPUMAE_RESIDENT_MB', 'default')} | cohort {args.cohort}\n")
    print("| stage | copies | rows | peak RSS MB | USS MB | group peak RSS MB | pipeline samples/s | model samples/s | both samples/s | resident |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        streamed = ",".join(m for m, v in r["resident"].items() if not v) or "-"
        print(f"| {r['stage']} | {r['copies']} | {r['rows']} | {r['peak_rss_mb']} | {r['uss_mb']} | {r['group_peak_rss_mb']} | "
              f"{r['pipeline_samples_per_s']} | {r['model_samples_per_s']} | {r['together_samples_per_s']} | streamed: {streamed} |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
