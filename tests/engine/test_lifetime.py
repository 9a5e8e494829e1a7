"""Workers of a Ray that the search started end with it.

After SIGKILL of a search's process group, one Ray worker was seen to survive as an orphan
(parent 1). The workers of a Ray the search starts call ``die_with_raylet`` (PR_SET_PDEATHSIG)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.engine.test_search import tiny_space

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

MIDDLE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "from impumae.engine.lifetime import die_with_raylet; import time; "
                          "print(die_with_raylet(), flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "True"
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs, seconds: float) -> list:
    deadline = time.time() + seconds
    while time.time() < deadline:
        left = [p for p in procs if _alive(p)]
        if not left:
            return []
        time.sleep(0.5)
    return [p for p in procs if _alive(p)]


@linux_only
def test_a_process_that_asked_dies_with_its_parent():
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = psutil.Process(int(middle.stdout.readline()))
    assert _alive(child)
    middle.kill()
    middle.wait()
    assert _wait_gone([child], 10) == []


@linux_only
@pytest.mark.ray
@pytest.mark.slow
def test_sigkill_of_a_search_leaves_no_process_of_its_ray(tmp_path):
    from impumae.data.synthetic import build_synthetic
    cohort = str(build_synthetic(str(tmp_path / "tiny.zarr"), n_patients=240, seed=3, progress=False).url)
    space = Path(tiny_space(tmp_path))
    space.write_text(space.read_text().replace("pretrain: {epochs: 2", "pretrain: {epochs: 200"))
    command = [sys.executable, str(ROOT / "experiments" / "cv_search.py"), "--cohort", cohort,
               "--subset", "rna,dna", "--space", str(space), "--trials", "2", "--folds", "2",
               "--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db",
               "--experiment", "kill-test", "--address", "local"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp_path / "search.log", "wb")
    search = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    driver = psutil.Process(search.pid)
    try:
        deadline, procs = time.time() + 300, []
        while time.time() < deadline and search.poll() is None:
            procs = driver.children(recursive=True)
            if any(_pretraining(p) for p in procs):
                break
            time.sleep(1)
        assert any(_pretraining(p) for p in procs), \
            f"pretraining never started:\n{(tmp_path / 'search.log').read_text()[-3000:]}"
        time.sleep(3)  # let the worker get into the training loop
        procs = [driver] + driver.children(recursive=True)
        workers = [p for p in procs if _cmdline(p)[:1] and _cmdline(p)[0].startswith("ray::")]
        assert workers  # Ray's workers run in process groups of their own: killpg alone misses them
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
        search.wait()
        log.close()
    left = _wait_gone(procs, 30)
    assert left == [], [(p.pid, _cmdline(p)) for p in left]


def _pretraining(proc: psutil.Process) -> bool:
    """A pretraining worker: a Ray task of one job (``workers=1``) or a Ray Train DDP worker."""
    line = " ".join(_cmdline(proc))
    return "task_loop" in line or "RayTrainWorker" in line


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []
