"""Search throughput on one GPU: trials per hour with 1 and with 4 trials packed per GPU.

    python experiments/bench/search_gpu.py --trials 8 --folds 2 --out results.json

Runs the real engine (Ray Train pretraining on the GPU, Ray Tune trials with fractional GPUs,
MLflow in a local SQLite file) on the embedded synthetic cohort with the default (laptop) space.
Both settings share one pretraining cache, so the second setting times the search alone; the
pretraining throughput through Ray Train is reported from the first. Results are written after
each setting, so a run cut short still reports what it finished.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--per-gpu", type=int, nargs="+", default=[1, 4], help="trials packed per GPU")
    p.add_argument("--cpus-per-trial", type=float, default=2.0)
    p.add_argument("--out", default="search_gpu.json")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()

    import ray
    import torch
    from impumae.data.synthetic import default_cohort
    from impumae.engine.search import SearchOptions, run_search
    from impumae.engine.space import SearchSpace

    work = Path(args.workdir or tempfile.mkdtemp(prefix="impumae-gpu-bench-"))
    cohort = str(default_cohort(work / "cache").url)
    space = SearchSpace.load(ROOT / "search_spaces" / "default.yaml")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results = {"device": device, "date": time.strftime("%Y-%m-%d"), "trials": args.trials, "folds": args.folds,
               "cohort": "synthetic tiny, 600 patients", "space": "search_spaces/default.yaml", "settings": []}
    ray.init(include_dashboard=False, configure_logging=False)
    for per_gpu in args.per_gpu:
        started = time.perf_counter()
        summary = run_search(SearchOptions(
            cohort=cohort, subsets=["rna,dna,mri"], space=space, trials=args.trials, folds=args.folds,
            gpus_per_trial=1.0 / per_gpu, cpus_per_trial=args.cpus_per_trial, storage=str(work / "runs"),
            mlflow_uri=f"sqlite:///{work}/mlflow.db", experiment=f"gpu-bench-{per_gpu}-per-gpu", n_boot=200))
        timings = summary["timings"]
        done = sum(t["folds_done"] for t in summary["trials"]) / args.folds
        results["settings"].append({
            "trials_per_gpu": per_gpu, "trials_finished_equivalent": done,
            "search_s": timings["search_s"], "trials_per_hour": done / timings["search_s"] * 3600,
            "pretrain_s": timings["pretrain_s"], "pretrain_samples_per_s_ray_train": timings["pretrain_samples_per_s"],
            "refit_and_holdout_s": timings["refit_and_holdout_s"], "total_s": time.perf_counter() - started,
            "best_mean_val_cs": summary["best"]["mean_val_cs_score"],
            "holdout_anchor_cs": summary["holdout"]["conditions"]["anchor"].get("cs_score")})
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(json.dumps(results["settings"][-1]), flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
