"""The shared tracking server: ``mlflow server`` on a throwaway PostgreSQL (pgserver: the server
binaries come in the wheel, so no apt package or service is needed in CI) with an artifact root of
its own, as in infra/k8s. The search's logger (``Tracker``) writes through it from many threads at
once, as a driver does for many trials; the server goes away for 10 s while they log and nothing
is lost (MLflow's client retries with backoff); a server that does not come back fails with its
address in the message."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from impumae.engine.tracking import Tracker

pgserver = pytest.importorskip("pgserver", reason="pgserver (the dev extra) starts the throwaway PostgreSQL")
pytestmark = pytest.mark.slow
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
EPOCHS, FOLDS, METRICS = 12, 2, ("val_cs_score", "val_c_index", "val_ibs", "train_loss")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """``mlflow server`` backed by PostgreSQL; :meth:`stop` / :meth:`start` take it away and bring it back."""

    def __init__(self, backend: str, artifacts: Path):
        self.backend, self.artifacts, self.port = backend, artifacts, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 240):   # ~80 s on the loaded 2-core machine (imports, migrations)
        self.proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", self.backend, "--host", "127.0.0.1",
                                      "--port", str(self.port), "--workers", "1",
                                      "--artifacts-destination", self.artifacts.as_uri()],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server at {self.uri} did not answer in {timeout_s:.0f} s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server():
    pgdata = tempfile.mkdtemp(prefix="h23pg-", dir="/tmp")   # short: PostgreSQL's socket path must fit 107 bytes
    pg = pgserver.get_server(pgdata, cleanup_mode="delete")
    pg.psql("CREATE DATABASE mlflow;")
    backend = pg.get_uri("mlflow").replace("postgresql://", "postgresql+psycopg://", 1)
    tracking = TrackingServer(backend, Path(pgdata) / "artifacts")
    try:
        tracking.start()
        yield tracking
    finally:
        tracking.stop()
        pg.cleanup()


def log_trial(tracker: Tracker, trial: int, epoch_pause_s: float = 0.0) -> str:
    """What the search's logger writes for one trial: a parent run, a child run per fold with its
    per-epoch curves (one request per epoch here, as results arrive), the summary at the end."""
    parent = tracker.start_run(f"trial-{trial}", {"kind": "trial", "trial_id": str(trial)}, params={"lr": 1e-3})
    for fold in range(FOLDS):
        child = tracker.start_run(f"trial-{trial}-fold{fold}", {"kind": "fold", "fold": fold}, parent=parent)
        for epoch in range(1, EPOCHS + 1):
            tracker.log_metrics(child, {m: trial + fold + epoch / 100 for m in METRICS}, step=epoch)
            time.sleep(epoch_pause_s)
        tracker.end_run(child)
        tracker.log_metrics(parent, {"running_mean_val_cs_score": 0.5, "folds_done": fold + 1}, step=fold + 1)
    tracker.end_run(parent)
    return parent


def log_trials_at_once(uri: str, experiment: str, n: int, epoch_pause_s: float = 0.0) -> tuple[dict, dict]:
    tracker = Tracker(uri, experiment)
    parents, errors = {}, {}

    def one(trial):
        try:
            parents[trial] = log_trial(tracker, trial, epoch_pause_s)
        except Exception as exc:   # noqa: BLE001 (counted and reported by the test)
            errors[trial] = exc

    threads = [threading.Thread(target=one, args=(t,)) for t in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return parents, errors


def assert_nothing_lost(uri: str, experiment: str, parents: dict):
    tracker = Tracker(uri, experiment)
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    assert len(runs) == len(parents) * (1 + FOLDS)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        if run.data.tags.get("kind") != "fold":
            continue
        for metric in METRICS:
            steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.info.run_name, metric, steps)


def test_eight_trials_log_at_once_through_the_server(server, tmp_path):
    parents, errors = log_trials_at_once(server.uri, "concurrent", 8)
    assert errors == {} and len(parents) == 8
    assert_nothing_lost(server.uri, "concurrent", parents)
    # the per-trial cost of logging (one trial's runs, one after another) through the server vs a local SQLite file
    seconds = {}
    for name, uri in (("server", server.uri), ("sqlite", f"sqlite:///{tmp_path}/mlflow.db")):
        tracker = Tracker(uri, "overhead")
        log_trial(tracker, 0)   # warm: the first request of a client opens its connections
        started = time.perf_counter()
        for trial in range(1, 4):
            log_trial(tracker, trial)
        seconds[name] = (time.perf_counter() - started) / 3
    print(f"logging one trial ({FOLDS} folds x {EPOCHS} epochs x {len(METRICS)} metrics, one request per epoch): "
          f"server+PostgreSQL {seconds['server']:.2f} s, local SQLite {seconds['sqlite']:.2f} s")


def test_the_server_away_for_ten_seconds_loses_nothing(server):
    done = {}
    logging = threading.Thread(target=lambda: done.update(zip(("parents", "errors"),
                                                              log_trials_at_once(server.uri, "outage", 8, 0.25))))
    logging.start()
    time.sleep(2.0)             # the trials are logging their epochs
    server.stop()
    away = time.time()
    time.sleep(10.0)
    server.start()
    back = time.time()           # away 10 s + the server's own start (tens of seconds here)
    logging.join(timeout=300)
    assert not logging.is_alive()
    assert back - away >= 10.0
    print(f"server away {back - away:.0f} s")
    assert done["errors"] == {}, done["errors"]
    assert_nothing_lost(server.uri, "outage", done["parents"])


def test_a_server_that_does_not_come_back_is_named(server, monkeypatch):
    tracker = Tracker(server.uri, "gone")
    run = tracker.start_run("trial-x", {"kind": "trial"})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    server.stop()   # the last test of the module: the server is not started again
    with pytest.raises(Exception) as failure:
        tracker.log_metrics(run, {"val_cs_score": 0.5}, step=1)
    assert f"127.0.0.1:{server.port}" in str(failure.value)
