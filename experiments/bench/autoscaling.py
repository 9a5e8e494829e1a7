"""A search on a simulated autoscaling cluster (infra/local/fake_cluster.py): nodes and running
trials over time (a PNG), and the wall time at 1, 2, 3 worker nodes against the cost model of
docs/scaling.md.

Each run starts a fresh cluster whose only worker type is ``gpu`` (2 CPUs + 1 logical GPU) with at
most ``N`` nodes, runs ``experiments/cv_search.py --address`` on it (families space, impuTMAE with
pretraining, tiny model and cohort; ``--gpus-per-trial`` / ``--cpus-per-trial`` as given) and
reads back, from the GCS and from Tune's result files: when each worker node was added and
removed, and when each trial ran on which node.

The cost model (docs/scaling.md, "What it costs") predicts the wall clock at ``G`` nodes as
``S*K*T_pre / (G/W) + N*K*f*T_fold / (G/g)`` plus start-up. ``T_pre`` (one pretraining job) and
the trials' total run time come from the smallest run; start-up and the driver's own work (the
refit, the holdout) are taken from it as measured and held fixed.

    python experiments/bench/autoscaling.py --nodes 2 --png docs/figures/autoscaling-timeline.png
    python experiments/bench/autoscaling.py --nodes 1 2 3          # the cost-model table

On this 2-core shared machine every simulated node shares the same two cores: a second or third
node adds slots, not compute. Start no other Ray with this temp dir meanwhile.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "local"))
from fake_cluster import FakeCluster  # noqa: E402


def families_space(folder: Path, pretrain_epochs: int, epochs: int) -> str:
    path = folder / "families-bench.yaml"
    path.write_text(f"""
extends: {ROOT / 'search_spaces' / 'families.yaml'}
model: {{width: 32, heads: 2, mlp_ratio: 2.0, decoder_width: 32, decoder_depth: 1, decoder_heads: 2, decoder_mlp: 64}}
pretrain: {{epochs: {pretrain_epochs}, batch_size: 32, lr: 1.0e-3}}
finetune: {{epochs: {epochs}, batch_size: 32}}
""")
    return str(path)


def trial_spans(search_dir: Path) -> list[dict]:
    spans = []
    for path in search_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            spans.append({"trial_id": rows[-1]["trial_id"], "pid": rows[-1]["pid"], "folds": rows[-1].get("folds_done"),
                          "start": rows[0]["timestamp"] - rows[0]["time_this_iter_s"], "end": rows[-1]["timestamp"]})
    return spans


def run_once(nodes: int, args, work: Path, cohort: str, echo=print) -> dict:
    temp_dir = tempfile.mkdtemp(prefix="impumae-bench-", dir="/tmp")
    cluster = FakeCluster(temp_dir, idle_timeout_s=args.idle_timeout_s, cpu_max=0, gpu_max=nodes).start()
    try:
        storage = work / f"runs-{nodes}"
        command = [sys.executable, str(ROOT / "experiments" / "cv_search.py"), "--address", cluster.address,
                   "--cohort", cohort, "--subset", args.subset, "--space", families_space(work, args.pretrain_epochs, args.epochs),
                   "--trials", str(args.trials), "--folds", str(args.folds), "--n-boot", "20",
                   "--gpus-per-trial", str(args.gpus_per_trial), "--cpus-per-trial", str(args.cpus_per_trial),
                   "--selection", "best", "--storage", str(storage), "--mlflow-uri", f"sqlite:///{work}/mlflow-{nodes}.db",
                   "--experiment", f"bench-{nodes}", "--seed", "0"]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}, **cluster.client_env()}
        if args.max_pending:   # Tune lets a custom searcher (Optuna) have 1 pending trial unless told otherwise
            env["TUNE_MAX_PENDING_TRIALS_PG"] = str(args.max_pending)
        started = time.time()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - started
        if done.returncode != 0:
            raise RuntimeError(f"the search on {nodes} node(s) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        ended = time.time()
        cluster.wait_until(lambda: cluster.alive_workers() == [], args.idle_timeout_s + 120, "nodes released", every_s=2)
        released = time.time()
        record = cluster.record()
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    search_dir = next(storage.glob(f"bench-{nodes}-*"))
    summary = json.loads((search_dir / "summary.json").read_text())
    node_of_pid = {w["pid"]: w["node_id"] for w in record["workers"]}
    spans = trial_spans(search_dir)
    for span in spans:
        span["node_id"] = node_of_pid.get(span["pid"])
    workers = [n for n in record["nodes"] if not n["is_head"]]
    result = {"nodes": nodes, "wall_s": wall, "started": started, "ended": ended, "released_s": released - ended,
              "timings": summary["timings"], "trials": spans, "worker_nodes": workers,
              "n_jobs": args.folds, "selected": summary["best"]["trial_id"]}
    echo(f"{nodes} node(s): wall {wall:.0f} s, pretrain {summary['timings']['pretrain_s']:.0f} s, "
         f"search {summary['timings']['search_s']:.0f} s; {len(workers)} node(s) added; released {released - ended:.0f} s after")
    return result


def predict(base: dict, nodes: int, gpus_per_trial: float) -> float:
    """The cost model's wall clock at ``nodes``, with T_pre and the trials' total time from ``base``."""
    jobs = base["n_jobs"]
    t_pre = base["timings"]["pretrain_s"] / math.ceil(jobs / base["nodes"])       # one round of jobs
    trial_time = sum(t["end"] - t["start"] for t in base["trials"])               # = N*K*f*T_fold
    fixed = base["wall_s"] - base["timings"]["pretrain_s"] - base["timings"]["search_s"]
    search_overhead = base["timings"]["search_s"] - trial_time / (base["nodes"] / gpus_per_trial)
    return math.ceil(jobs / nodes) * t_pre + trial_time / (nodes / gpus_per_trial) + max(0.0, search_overhead) + fixed


def draw(result: dict, png: Path) -> None:
    from matplotlib.figure import Figure

    t0 = result["started"]
    fig = Figure(figsize=(8, 4.5))
    ax_nodes, ax_trials = fig.subplots(2, 1, sharex=True)
    grid = [t0 + i for i in range(int(result["ended"] - t0 + result["released_s"]) + 2)]
    alive = [sum(1 for n in result["worker_nodes"] if n["start_time_ms"] / 1000 <= t
                 and (not n["end_time_ms"] or n["end_time_ms"] / 1000 > t)) for t in grid]
    ax_nodes.step([t - t0 for t in grid], alive, where="post", color="tab:blue")
    ax_nodes.set_ylabel("gpu worker nodes")
    ax_nodes.axvline(result["ended"] - t0, color="grey", ls="--", lw=1)
    ax_nodes.text(result["ended"] - t0, max(alive + [1]) * 0.9, " search done", color="grey", fontsize=8)
    running = [sum(1 for s in result["trials"] if s["start"] <= t < s["end"]) for t in grid]
    ax_trials.step([t - t0 for t in grid], running, where="post", color="tab:orange")
    # the driver's clock starts after its imports: place the phases back from the last trial's end
    search_start = max(s["end"] for s in result["trials"]) - result["timings"]["search_s"]
    ax_trials.axvspan(search_start - result["timings"]["pretrain_s"] - t0, search_start - t0, color="tab:green",
                      alpha=0.15, label="pretraining (incl. waiting for the node)")
    ax_trials.set_ylabel("running trials")
    ax_trials.set_xlabel("seconds since the search started")
    ax_trials.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"simulated autoscaling cluster: <= {result['nodes']} gpu node(s), from zero and back", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], help="most gpu worker nodes, one run each")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--subset", default="rna,dna")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--gpus-per-trial", type=float, default=0.5)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--idle-timeout-s", type=float, default=10.0)
    p.add_argument("--max-pending", type=int, default=0, help="TUNE_MAX_PENDING_TRIALS_PG for the driver (0: Tune's default)")
    p.add_argument("--png", type=Path, default=None, help="draw the timeline of the first run here")
    p.add_argument("--json", type=Path, default=None, help="write every run's record here")
    p.add_argument("--redraw", type=Path, default=None, help="only draw --png from an earlier --json")
    args = p.parse_args(argv)
    if args.redraw:
        draw(json.loads(args.redraw.read_text())[0], args.png)
        return 0

    from impumae.data.synthetic import build_synthetic

    work = Path(tempfile.mkdtemp(prefix="impumae-autoscaling-"))
    cohort = build_synthetic(str(work / "cohort.zarr"), n_patients=args.patients, seed=0, progress=False).url
    results = [run_once(n, args, work, cohort) for n in args.nodes]
    if args.png:
        draw(results[0], args.png)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    base = results[0]
    print(f"\n{platform.node()} ({os.cpu_count()} CPUs), {dt.date.today()}: {args.trials} trials x {args.folds} folds, "
          f"{args.patients} patients, --gpus-per-trial {args.gpus_per_trial} --cpus-per-trial {args.cpus_per_trial}\n")
    print("| gpu nodes (at most) | nodes added | wall s | pretraining s | search s | predicted wall s | selected trial |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['nodes']} | {len(r['worker_nodes'])} | {r['wall_s']:.0f} | {r['timings']['pretrain_s']:.0f} | "
              f"{r['timings']['search_s']:.0f} | {predict(base, r['nodes'], args.gpus_per_trial):.0f} | {r['selected']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
