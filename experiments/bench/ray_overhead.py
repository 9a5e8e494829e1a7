"""What Ray costs: the same pretraining job in-process and through Ray Train (1 and 2 workers), the
same trial in-process and through Tune, and the phase breakdown of a main-command search.

    python experiments/bench/ray_overhead.py                  # embedded default cohort, fold 0, 30 epochs
    python experiments/bench/ray_overhead.py --epochs 10 --repeats 2 --skip-search

Pretraining: every run trains the same PretrainJob (embedded default cohort, fold 0, the default
space's model, ``--epochs``) from scratch into a fresh storage directory. "in-loop" is the job's own
samples/s (the training loop's wall time, what ``train_job`` stores in the checkpoint); "wall" is
the whole call (Ray Train: trainer start, worker group, cohort load, training, teardown).

Trial: one fixed configuration over ``--folds`` folds, once by calling ``run_fold`` per fold in this
process and once as a one-trial Tune run of ``cv_trial`` (pretraining cached beforehand). The
per-trial overhead is the Tune wall time minus the in-process wall time, and "first fold start"
is the time from ``Tuner.fit`` to the trial's first fold result minus that fold's in-process time.

Search: ``run_search`` on the embedded cohort with a small budget, printing ``summary.json``'s
phase timings (Ray start, cohort load, pretraining, search, refit, holdout).
Start no other Ray on the machine meanwhile; on a shared machine repeat and compare ratios.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from impumae.data.synthetic import default_cohort
from impumae.data.cohort_view import load_cohort_arrays
from impumae.engine.pretrain_jobs import PretrainJob, checkpoint_url, run_pretraining
from impumae.engine.runtime import init_ray
from impumae.engine.search import SearchOptions, run_search
from impumae.engine.space import SearchSpace
from impumae.engine.trial import SearchContext, cv_trial, run_fold
from impumae.train import checkpoint

ROOT = Path(__file__).resolve().parents[2]

SPACE = ROOT / "search_spaces" / "default.yaml"
SUBSET = ("rna", "dna", "mri")


def quiet(*_a, **_k):
    pass


def pretrain_once(cohort: str, space: SearchSpace, epochs: int, workers: int, tmp: Path) -> dict:
    storage = tmp / f"pre-w{workers}-{time.monotonic_ns()}"
    ctx = SearchContext(cohort_url=cohort, n_folds=2, storage=str(storage), search_dir=str(storage / "s"),
                        model=space.model, pretrain={**space.pretrain, "epochs": epochs}, transforms=space.transforms)
    ca = load_cohort_arrays(cohort, SUBSET)
    job = PretrainJob.for_subset(ca, SUBSET, 0, ctx.model, ctx.pretrain, ctx.seed, ctx.transforms)
    started = time.perf_counter()
    run_pretraining([job], str(storage), workers=workers, echo=quiet,
                    cpus_per_worker=None if workers < 2 else 1.0)
    wall = time.perf_counter() - started
    state = checkpoint.load_pretrained_state(checkpoint_url(str(storage), job.key))
    shutil.rmtree(storage, ignore_errors=True)
    return {"wall_s": wall, "samples_per_s": state["samples_per_s"], "steady_samples_per_s": state.get("steady_samples_per_s"),
            "final_loss": state["history"][-1]["loss"]}


def trial_once(cohort: str, space: SearchSpace, folds: int, epochs: int, tmp: Path) -> dict:
    from ray import tune
    storage = tmp / "trial"
    ctx = SearchContext(cohort_url=cohort, n_folds=folds, storage=str(storage), search_dir=str(storage / "search"),
                        model=space.model, pretrain={**space.pretrain, "epochs": 2},
                        finetune={**space.finetune, "epochs": epochs}, transforms=space.transforms)
    ca = load_cohort_arrays(cohort, SUBSET)
    jobs = [PretrainJob.for_subset(ca, SUBSET, f, ctx.model, ctx.pretrain, ctx.seed, ctx.transforms) for f in range(folds)]
    run_pretraining(jobs, str(storage), workers=0, echo=quiet)
    config = {"subset": ",".join(SUBSET), "lr": 1e-3, "dropout": 0.1, "imputation": "decoder", "epochs": epochs}

    # in-process, with the thread count a 1-CPU Tune trial gets
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    fold_s = []
    for fold in range(folds):
        t0 = time.perf_counter()
        run_fold(ctx, {**config, "_trial_id": "inproc"}, fold, torch.device("cpu"))
        fold_s.append(time.perf_counter() - t0)
    inproc = time.perf_counter() - started
    torch.set_num_threads(threads)

    started = time.time()
    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(cv_trial, ctx=ctx), {"cpu": 1}),
                       param_space=config, tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(name="bench-trial", storage_path=str(storage / "tune"), verbose=0))
    grid = tuner.fit()
    tune_wall = time.time() - started
    rows = [json.loads(line) for line in open(Path(grid[0].path) / "result.json") if line.strip()]
    first_fold_at = rows[0]["timestamp"] - started
    shutil.rmtree(storage, ignore_errors=True)
    return {"inproc_s": inproc, "tune_s": tune_wall, "overhead_s": tune_wall - inproc,
            "first_fold_result_s": first_fold_at, "first_fold_overhead_s": first_fold_at - fold_s[0],
            "trial_time_total_s": rows[-1]["time_total_s"]}


def search_phases(cohort: str, tmp: Path, trials: int, pretrain_epochs: int) -> dict:
    summary = run_search(SearchOptions(
        cohort=cohort, subsets=[",".join(SUBSET)], space=SearchSpace.load(str(SPACE)), trials=trials,
        folds=2, pretrain_epochs=pretrain_epochs, storage=str(tmp / "search"), n_boot=100,
        mlflow_uri=f"sqlite:///{tmp}/mlflow.db", experiment="bench-ray-overhead"), echo=quiet)
    return summary["timings"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="pretraining epochs (default %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="repeats of each pretraining measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train worker counts (default 1 2)")
    p.add_argument("--trial-folds", type=int, default=2)
    p.add_argument("--trial-epochs", type=int, default=4)
    p.add_argument("--search-trials", type=int, default=2)
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-trial", action="store_true")
    args = p.parse_args(argv)

    cohort = str(default_cohort().url)
    space = SearchSpace.load(str(SPACE))
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), ray {ray.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    results = {}
    try:
        threads = torch.get_num_threads()
        for rep in range(args.repeats):
            r = pretrain_once(cohort, space, args.epochs, 0, tmp)
            results.setdefault("inproc", []).append(r)
            print(f"pretrain in-process      rep {rep}: wall {r['wall_s']:6.1f} s, in-loop {r['samples_per_s']:7.0f} samples/s, "
                  f"after epoch 1 {r['steady_samples_per_s']:7.0f} ({threads} torch threads)")
            # a 1-CPU Ray worker runs torch with OMP_NUM_THREADS=1: the same job at 1 thread separates
            # what the thread count costs from what Ray costs
            torch.set_num_threads(1)
            r = pretrain_once(cohort, space, args.epochs, 0, tmp)
            torch.set_num_threads(threads)
            results.setdefault("inproc_1thread", []).append(r)
            print(f"pretrain in-process      rep {rep}: wall {r['wall_s']:6.1f} s, in-loop {r['samples_per_s']:7.0f} samples/s, "
                  f"after epoch 1 {r['steady_samples_per_s']:7.0f} (1 torch thread)")
        t0 = time.perf_counter()
        init_ray("local")
        print(f"ray start: {time.perf_counter() - t0:.1f} s")
        for workers in args.workers:
            for rep in range(args.repeats):
                r = pretrain_once(cohort, space, args.epochs, workers, tmp)
                results.setdefault(f"ray{workers}", []).append(r)
                print(f"pretrain Ray Train w={workers} rep {rep}: wall {r['wall_s']:6.1f} s, "
                      f"in-loop {r['samples_per_s']:7.0f} samples/s, after epoch 1 {r['steady_samples_per_s']:7.0f}")
        for ref in ("inproc", "inproc_1thread"):
            base = max(r["samples_per_s"] for r in results[ref])
            base_wall = min(r["wall_s"] for r in results[ref])
            for workers in args.workers:
                best = max(results[f"ray{workers}"], key=lambda r: r["samples_per_s"])
                steady = max(r["steady_samples_per_s"] for r in results[ref])
                best_steady = max(r["steady_samples_per_s"] for r in results[f"ray{workers}"])
                print(f"ratio Ray Train w={workers} / {ref}: in-loop {best['samples_per_s'] / base:.2f}x, "
                      f"after epoch 1 {best_steady / steady:.2f}x, "
                      f"wall {base_wall / min(r['wall_s'] for r in results[f'ray{workers}']):.2f}x")
        if not args.skip_trial:
            r = trial_once(cohort, space, args.trial_folds, args.trial_epochs, tmp)
            results["trial"] = r
            print(f"trial ({args.trial_folds} folds x {args.trial_epochs} epochs): in-process {r['inproc_s']:.1f} s, "
                  f"Tune {r['tune_s']:.1f} s (trial's own time {r['trial_time_total_s']:.1f} s); "
                  f"overhead {r['overhead_s']:.1f} s, of it before the first fold's result {r['first_fold_overhead_s']:.1f} s")
        ray.shutdown()
        if not args.skip_search:
            timings = search_phases(cohort, tmp, args.search_trials, args.epochs)
            results["search"] = timings
            print("search phases: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in timings.items()))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
