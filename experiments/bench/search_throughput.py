"""Search throughput: trials per hour on a local multi-node Ray cluster with 1 and with 2 nodes.

Each node is a separate raylet (``ray.cluster_utils.Cluster``, Ray's own way to run several
nodes on one machine) with ``--cpus-per-node`` CPUs; a trial asks for 1 CPU, so one node runs
one trial at a time and two nodes run two. For each node count the same search runs through
``run_search`` with ``address=<the cluster>`` (exactly what ``cv_search.py --address HOST:PORT``
does): tiny synthetic cohort, subset rna,dna,mri, ``--trials`` configurations x ``--folds``
folds, ASHA's grace period = all folds (no early stopping, so every trial does the same work).

Pretraining is cached and shared, and an unmeasured warm-up search (``--warmup-trials``) runs
first: on a small machine the first cluster of a process otherwise pays start-up costs that swamp
the difference (measured: whichever node count ran first looked slower). Both node counts then
time only the Tune phase. Trials per hour = trials / (last trial end - first trial start), from the
trials' own Tune results (``timestamp``, ``time_total_s``); the whole ``run_search`` wall time
(including the holdout refit) is printed too.

    python experiments/bench/search_throughput.py                       # 8 trials x 2 folds
    python experiments/bench/search_throughput.py --trials 4 --patients 300
Start no other Ray on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import shutil
import tempfile
import time

import ray

from impumae.data.synthetic import build_synthetic
from impumae.engine.search import SearchOptions, run_search
from impumae.engine.space import SearchSpace
from local_cluster import local_cluster  # this script's folder is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tune_phase(search_dir: str) -> tuple[int, float, float]:
    """(trials, seconds from the first trial's start to the last trial's end, median trial seconds)
    from the trials' result.json files."""
    starts, ends, durations = [], [], []
    for path in glob.glob(os.path.join(search_dir, "*", "result.json")):
        rows = [json.loads(line) for line in open(path) if line.strip()]
        if not rows:
            continue
        last = rows[-1]
        ends.append(last["timestamp"])
        starts.append(rows[0]["timestamp"] - rows[0]["time_total_s"])
        durations.append(last["time_total_s"])
    if not ends:
        return 0, float("nan"), float("nan")
    return len(ends), max(ends) - min(starts), float(sorted(durations)[len(durations) // 2])


def run_with_nodes(nodes: int, cpus_per_node: int, opts: dict, echo) -> dict:
    with local_cluster(nodes, cpus_per_node) as (address, timing):
        summary = run_search(SearchOptions(address=address, experiment=f"throughput-{nodes}node", **opts), echo=echo)
    wall, alive = timing["wall s"], timing["alive"]
    trials, seconds, median_trial = tune_phase(summary["search_dir"])
    complete = sum(1 for t in summary["trials"] if t["folds_done"] == summary["n_folds"])
    return {"nodes": nodes, "alive nodes": alive, "trials": trials, "complete": complete, "tune s": seconds,
            "trials/h": trials / seconds * 3600, "median trial s": median_trial, "search wall s": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--warmup-trials", type=int, default=2,
                   help="a first, unmeasured search of this many trials on 1 node (fills the pretraining cache and "
                        "pays one-off start-up costs); 0 to skip (default %(default)s)")
    p.add_argument("--dir", default=None, help="scratch folder (default: temporary, removed after)")
    p.add_argument("--quiet", action="store_true", help="do not echo the searches' progress")
    args = p.parse_args(argv)
    directory = args.dir or tempfile.mkdtemp(prefix="impumae-throughput-")
    echo = (lambda *_: None) if args.quiet else print
    try:
        cohort = os.path.join(directory, "cohort.zarr")
        if not os.path.exists(cohort):
            build_synthetic(cohort, n_patients=args.patients, progress=False)
        opts = dict(cohort=cohort, subsets=["rna,dna,mri"], space=SearchSpace.load(os.path.join(ROOT, "search_spaces", "default.yaml")),
                    trials=args.trials, folds=args.folds, pretrain_epochs=args.pretrain_epochs, workers=0,
                    storage=os.path.join(directory, "runs"), mlflow_uri=f"sqlite:///{os.path.join(directory, 'mlflow.db')}",
                    n_boot=200, grace_folds=args.folds, cpus_per_trial=1.0)
        if args.warmup_trials:
            run_with_nodes(1, args.cpus_per_node, {**opts, "trials": args.warmup_trials}, echo)
        rows = [run_with_nodes(n, args.cpus_per_node, opts, echo) for n in args.nodes]
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"\nsearch throughput: tiny synthetic cohort ({args.patients} patients), subset rna,dna,mri, "
          f"{args.trials} trials x {args.folds} folds, default space, 1 CPU per trial, {args.cpus_per_node} CPU(s) "
          f"per node; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ray {ray.__version__}, "
          f"{dt.date.today()}\n")
    print("| nodes | trials (complete) | median trial (s) | Tune phase (s) | trials/hour | speed-up | whole search (s) |")
    print("|---|---|---|---|---|---|---|")
    base = next(r["trials/h"] for r in rows if r["nodes"] == min(args.nodes))
    for r in rows:
        print(f"| {r['nodes']} ({r['alive nodes']} alive) | {r['trials']} ({r['complete']}) | {r['median trial s']:.1f} | "
              f"{r['tune s']:.0f} | "
              f"{r['trials/h']:.0f} | {r['trials/h'] / base:.2f}x | {r['search wall s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
