"""The same command against a real multi-node Ray cluster: two nodes on loopback, token auth on,
the search submitted through infra/entrypoint.sh (the RayJob's entrypoint), both nodes stopped by PID."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from impumae.data.synthetic import build_synthetic
from tests.engine.test_search import tiny_space

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rayjob_entrypoint() -> list[str]:
    docs = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "rayjob.yaml").read_text()))
    job = next(d for d in docs if d and d.get("kind") == "RayJob")
    return job["spec"]["entrypoint"].split()


@pytest.fixture
def two_node_cluster(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's Unix socket paths must fit in 107 bytes
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--include-dashboard", "false", "--temp-dir", temp_dir, *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        probe = ("import ray, sys; ray.init(address=sys.argv[1]); "
                 "print(sum(n['Alive'] for n in ray.nodes())); ray.shutdown()")

        def alive_nodes() -> int:
            out = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True, timeout=60)
            return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

        deadline = time.time() + 90
        while alive_nodes() < 1 and time.time() < deadline:
            time.sleep(1)
        worker = subprocess.Popen([RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        nodes.append(worker)
        while alive_nodes() < 2 and time.time() < deadline:
            time.sleep(1)
        assert alive_nodes() == 2, "the second node did not join"
        yield address, env
    finally:
        for proc in reversed(nodes):  # stop by PID: SIGTERM to each `ray start --block` and its node processes
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(nodes):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_rayjob_and_this_test_share_the_entrypoint():
    assert rayjob_entrypoint()[:2] == ["bash", "infra/entrypoint.sh"]


def test_search_runs_on_a_two_node_cluster(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    cohort = build_synthetic(str(tmp_path / "tiny.zarr"), n_patients=200, seed=5, progress=False).url
    env = {**env, "RAY_ADDRESS": address, "IMPUMAE_COHORT": cohort, "IMPUMAE_STORAGE": str(tmp_path / "runs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "IMPUMAE_EXPERIMENT": "two-node",
           "IMPUMAE_PYTHON": sys.executable}
    command = rayjob_entrypoint()[:2] + ["--subset", "rna,dna", "--space", tiny_space(tmp_path), "--trials", "2",
                                         "--folds", "2", "--n-boot", "20"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(next((tmp_path / "runs").glob("two-node-*/summary.json")).read_text())
    assert [t["folds_done"] for t in summary["trials"]] == [2, 2]
    assert "cs_score" in summary["holdout"]["conditions"]["anchor"]
