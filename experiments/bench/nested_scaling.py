"""Nested cross-validation on a local multi-node Ray cluster with 1 and with 2 nodes: wall time and speed-up.

Each node is a separate raylet (``ray.cluster_utils.Cluster``, as in ``search_throughput.py``) with
``--cpus-per-node`` CPUs (default 1: this dev machine has 2 cores, so 2 nodes of 1 CPU use both and
1 node uses one). The same nested run goes through ``run_nested`` with ``address=<the cluster>``
(what ``cv_search.py --outer-folds K --address HOST:PORT`` does): tiny synthetic cohort, subset
rna,dna, ``--outer-folds`` outer folds x (``--trials`` trials x ``--folds`` inner folds), pretraining
as one Ray task per model (1 CPU), no early stopping. ``concurrent_outer`` is left at its default (as
many outer folds at once as the cluster has CPUs for one trial each: 1 on one node, 2 on two).

Measured: the whole ``run_nested`` wall time (pretraining of every inner fold and refit, the
searches, the refits and outer-test scorings, the pooled summary). The refits' fine-tuning runs in
Ray tasks on the nodes (``trial.fit_refit``); the driver's own torch work (scoring) is held to 1
thread per outer fold, so one node's run does not borrow the second core there. Each run has its own storage (no pretraining
cache shared between them). An unmeasured warm-up nested run on 1 node comes first (a process's
first cluster pays one-off start-up costs; see search_throughput.py).

    python experiments/bench/nested_scaling.py                       # 2 outer folds, 2 trials x 2 folds
    python experiments/bench/nested_scaling.py --patients 1000 --pretrain-epochs 20 --epochs 12
                                  # work that dominates the per-node cold start (docs/benchmarks.md)
Start no other Ray on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the driver's torch (refits run there): 1 thread per outer fold

import ray  # noqa: E402
import torch  # noqa: E402

from impumae.data.synthetic import build_synthetic  # noqa: E402
from impumae.engine.nested import run_nested  # noqa: E402
from impumae.engine.search import SearchOptions  # noqa: E402
from impumae.engine.space import SearchSpace  # noqa: E402
from local_cluster import local_cluster  # noqa: E402  (this script's folder is on sys.path)


def run_with_nodes(nodes: int, cpus_per_node: int, opts: dict, outer_folds: int, label: str, echo) -> dict:
    with local_cluster(nodes, cpus_per_node) as (address, timing):
        summary = run_nested(SearchOptions(address=address, experiment=f"nested-{label}", **opts),
                             outer_folds=outer_folds, echo=echo)
    return {"nodes": nodes, "alive": timing["alive"], "wall s": timing["wall s"], "concurrent": summary["concurrent_outer"],
            "oof c": summary["pooled"][0]["c_index"]["estimate"], "n": summary["pooled"][0]["n"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outer-folds", type=int, default=2)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (default %(default)s)")
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up run")
    p.add_argument("--dir", default=None, help="scratch folder (default: temporary, removed after)")
    p.add_argument("--quiet", action="store_true", help="do not echo the runs' progress")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    directory = args.dir or tempfile.mkdtemp(prefix="impumae-nested-")
    echo = (lambda *_, **__: None) if args.quiet else print
    try:
        cohort = os.path.join(directory, "cohort.zarr")
        if not os.path.exists(cohort):
            build_synthetic(cohort, n_patients=args.patients, progress=False)
        space = SearchSpace.load(os.path.join(ROOT, "search_spaces", "default.yaml"))
        opts = dict(cohort=cohort, subsets=["rna,dna"], space=space, trials=args.trials, folds=args.folds,
                    pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, workers=1,
                    mlflow_uri=f"sqlite:///{os.path.join(directory, 'mlflow.db')}",
                    n_boot=200, grace_folds=args.folds, cpus_per_trial=1.0)
        if not args.no_warmup:
            run_with_nodes(1, args.cpus_per_node, {**opts, "trials": 1, "pretrain_epochs": 1, "epochs": 1,
                                                   "storage": os.path.join(directory, "warmup")},
                           2, "warmup", echo)
        rows = [run_with_nodes(n, args.cpus_per_node, {**opts, "storage": os.path.join(directory, f"runs-{n}")},
                               args.outer_folds, f"{n}node", echo) for n in args.nodes]
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"\nnested CV scaling: tiny synthetic cohort ({args.patients} patients), subset rna,dna, "
          f"{args.outer_folds} outer folds x ({args.trials} trials x {args.folds} inner folds), default space, "
          f"{args.pretrain_epochs} pretraining / {args.epochs} fine-tuning epochs, 1 CPU per trial and per "
          f"pretraining task, {args.cpus_per_node} CPU(s) per node; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, ray {ray.__version__}, {dt.date.today()}, 1-minute load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| nodes | outer folds at once | nested wall time (s) | speed-up | pooled OOF C-index (n) |")
    print("|---|---|---|---|---|")
    base = next(r["wall s"] for r in rows if r["nodes"] == min(args.nodes))
    for r in rows:
        print(f"| {r['nodes']} ({r['alive']} alive) | {r['concurrent']} | {r['wall s']:.0f} | "
              f"{base / r['wall s']:.2f}x | {r['oof c']:.3f} ({r['n']}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
