"""A search on a simulated autoscaling cluster (infra/local/fake_cluster.py): Ray's fake_multinode
provider, a head with no room for work, worker nodes added from zero as work waits and removed
after the idle timeout, token authentication on. One cluster for the module (starting one takes
~20 s); the search is the families space with impuTMAE pretraining, tiny sizes."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from impumae.data.synthetic import build_synthetic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "infra" / "local"))
from fake_cluster import FakeCluster, node_processes, remaining_processes  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
IDLE_TIMEOUT_S = 10.0


def tiny_families_space(folder: Path) -> str:
    path = folder / "families-tiny.yaml"
    path.write_text(f"""
extends: {ROOT / 'search_spaces' / 'families.yaml'}
model: {{width: 32, heads: 2, mlp_ratio: 2.0, decoder_width: 32, decoder_depth: 1, decoder_heads: 2, decoder_mlp: 64}}
pretrain: {{epochs: 2, batch_size: 32, lr: 1.0e-3}}
finetune: {{epochs: 2, batch_size: 32}}
""")
    return str(path)


class RssWatch:
    """The summed RSS of the cluster's processes and the driver, sampled every second."""

    def __init__(self, temp_dir: str):
        self.temp_dir, self.peak_gb, self._stop = temp_dir, 0.0, threading.Event()
        self.driver_pid = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(1.0):
            pids = set(remaining_processes(self.temp_dir)) | ({self.driver_pid} if self.driver_pid else set())
            total = 0
            for pid in pids:
                try:
                    total += psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    pass
            self.peak_gb = max(self.peak_gb, total / 1024 ** 3)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="impumae-fc-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    fake = FakeCluster(temp_dir, idle_timeout_s=IDLE_TIMEOUT_S, auth="token")
    fake.start()
    try:
        yield fake
    finally:
        left = fake.stop()
        assert left == [] and remaining_processes(temp_dir) == [], f"processes of the cluster left: {left}"
        shutil.rmtree(temp_dir, ignore_errors=True)


def driver_env(cluster: FakeCluster, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, **cluster.client_env(), "RAY_USAGE_STATS_ENABLED": "0", **extra}


def test_a_client_without_the_token_is_refused(cluster):
    probe = "import ray; ray.init(); print(ray.cluster_resources())"
    env = driver_env(cluster)
    env.pop("RAY_AUTH_TOKEN_PATH")
    env["RAY_AUTH_TOKEN"] = "0" * 64
    refused = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()
    allowed = subprocess.run([sys.executable, "-c", probe], env=driver_env(cluster), capture_output=True, text=True,
                             timeout=120)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


def trial_intervals(search_dir: Path) -> dict[str, dict]:
    """Per trial, from Tune's result.json: the worker pid and when it ran (the first result's
    start to the last result)."""
    trials = {}
    for path in search_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        first, last = rows[0], rows[-1]
        trials[last["trial_id"]] = {"pids": {r["pid"] for r in rows},
                                    "start": first["timestamp"] - first["time_this_iter_s"], "end": last["timestamp"]}
    return trials


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_a_families_search_scales_from_zero_and_back(cluster, tmp_path):
    assert cluster.alive_workers() == [], "the cluster starts with no worker node"
    cohort = build_synthetic(str(tmp_path / "tiny.zarr"), n_patients=160, seed=3, progress=False).url
    command = [sys.executable, str(ROOT / "experiments" / "cv_search.py"), "--address", cluster.address,
               "--cohort", cohort, "--subset", "rna,dna", "--space", tiny_families_space(tmp_path),
               "--trials", "6", "--folds", "2", "--n-boot", "20", "--gpus-per-trial", "0.25",
               "--cpus-per-trial", "0.5", "--selection", "best", "--storage", str(tmp_path / "runs"),
               "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "autoscale"]
    with RssWatch(cluster.temp_dir) as rss:
        started = time.time()
        # Tune gives a custom searcher (Optuna) 1 pending trial unless told: trials would start one at a time
        driver = subprocess.Popen(command, cwd=ROOT, env=driver_env(cluster, TUNE_MAX_PENDING_TRIALS_PG="8"),
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        rss.driver_pid = driver.pid
        out, _ = driver.communicate(timeout=420)
        wall = time.time() - started
    assert driver.returncode == 0, out[-4000:]
    (tmp_path / "driver.log").write_text(out)
    record = cluster.record()
    nodes = {n["node_id"]: n for n in record["nodes"]}
    head = next(n["node_id"] for n in record["nodes"] if n["is_head"])
    workers = [n for n in record["nodes"] if not n["is_head"]]
    assert workers and {n["node_type"] for n in workers} <= {"cpu", "gpu"}
    # never more nodes of a type alive at once than it allows (a node released when idle and added
    # again later counts twice in all, once at a time)
    now_ms = time.time() * 1000
    for node_type, most in (("gpu", 2), ("cpu", 3)):
        spans = [(n["start_time_ms"], n["end_time_ms"] or now_ms) for n in workers if n["node_type"] == node_type]
        assert max_overlap(spans) <= most, (node_type, spans)
    # every task and actor process of the search (pretraining tasks, trials, the refit) ran on a worker node
    assert record["workers"] and all(w["node_id"] != head for w in record["workers"]), record["workers"]
    # the pretraining tasks wanted a whole GPU each, the trials a quarter: both only on gpu nodes
    search_dir = next((tmp_path / "runs").glob("autoscale-*"))
    summary = json.loads((search_dir / "summary.json").read_text())
    trials = trial_intervals(search_dir)
    assert set(trials) == {t["trial_id"] for t in summary["trials"]} and len(trials) == 6
    node_of_pid = {w["pid"]: w["node_id"] for w in record["workers"]}
    per_node: dict[str, list] = {}
    for trial_id, t in trials.items():
        (pid,) = t["pids"]   # one worker ran the whole trial (no retries in a fault-free run)
        node = node_of_pid[pid]
        assert nodes[node]["node_type"] == "gpu", (trial_id, nodes[node])
        per_node.setdefault(node, []).append((t["start"], t["end"]))
    assert all(max_overlap(spans) <= 4 for spans in per_node.values()), per_node
    # the bound was exercised: trials did run side by side
    assert max_overlap([span for spans in per_node.values() for span in spans]) >= 2, per_node
    # and the nodes go away once idle
    cluster.wait_until(lambda: cluster.alive_workers() == [], IDLE_TIMEOUT_S + 90, "worker nodes released")
    print(f"search wall {wall:.0f} s; nodes added {[(n['node_type']) for n in workers]}; "
          f"trials per node {[len(v) for v in per_node.values()]}; peak RSS {rss.peak_gb:.2f} GB; log {tmp_path / 'driver.log'}")



def test_losing_a_node_during_the_trials(cluster, tmp_path):
    """SIGKILL every process of the worker node that runs a trial, between its first and its
    last fold: Tune retries the trial (FailureConfig) in another worker, from its fold checkpoint;
    every trial appears once in the summary and once as an MLflow parent run, and no run is left
    RUNNING. (Pretraining and the refit losing their node are not tested.)"""
    from mlflow.tracking import MlflowClient

    cohort = build_synthetic(str(tmp_path / "tiny.zarr"), n_patients=160, seed=4, progress=False).url
    command = [sys.executable, str(ROOT / "experiments" / "cv_search.py"), "--address", cluster.address,
               "--cohort", cohort, "--subset", "rna,dna", "--space", tiny_families_space(tmp_path),
               "--trials", "4", "--folds", "3", "--epochs", "6", "--n-boot", "20", "--gpus-per-trial", "0",
               "--cpus-per-trial", "1",
               "--selection", "best", "--storage", str(tmp_path / "runs"), "--max-failures", "3",
               "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "lose-node"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(command, cwd=ROOT, env=driver_env(cluster), stdout=log, stderr=subprocess.STDOUT)
    killed = None
    deadline = time.time() + 400
    while killed is None and time.time() < deadline and driver.poll() is None:
        time.sleep(0.3)
        search_dirs = list((tmp_path / "runs").glob("lose-node-*"))
        # a trial between its first and its last fold: its worker is busy with the next fold
        running = [rows[0] for d in search_dirs for path in d.glob("*/result.json")
                   for rows in [[json.loads(line) for line in path.read_text().splitlines() if line.strip()]]
                   if len(rows) == 1 and rows[0]["folds_done"] < 3]
        if not running:
            continue
        try:   # the worker inherits its simulated node's id from the raylet's environment
            node = psutil.Process(running[0]["pid"]).environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
        except psutil.Error:
            node = None
        if node is None:
            continue
        victim = running[0]["trial_id"]
        procs = node_processes(node)
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        killed = (node, len(procs))
    assert killed is not None, "no trial was seen running"
    rc = driver.wait(timeout=600)
    log.close()
    out = (tmp_path / "driver.log").read_text()
    assert rc == 0, out[-4000:]
    summary = json.loads(next((tmp_path / "runs").glob("lose-node-*/summary.json")).read_text())
    trial_ids = [t["trial_id"] for t in summary["trials"]]
    assert len(trial_ids) == len(set(trial_ids)) == 4
    # the trial on the lost node was retried in another worker process and finished its folds
    retried = trial_intervals(next((tmp_path / "runs").glob("lose-node-*")))[victim]
    assert len(retried["pids"]) >= 2, retried
    # past the fold it was killed in (ASHA may still stop it after 2 of the 3 folds)
    assert next(t for t in summary["trials"] if t["trial_id"] == victim)["folds_done"] >= 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("lose-node")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.tags["trial_id"] for r in parents) == sorted(trial_ids)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    print(f"killed node {killed[0][-5:]} ({killed[1]} processes); search finished; "
          f"{sum(1 for r in runs if r.info.status == 'FAILED')} run(s) FAILED")
