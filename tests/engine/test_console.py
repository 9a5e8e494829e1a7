"""The main command's console: the project's progress lines, the trial table and the results; Ray's
and Tune's internals in a log file under the search's directory. Run while a second local Ray
instance is up (the machine of the report had one), a successful search prints no traceback."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from impumae.data.synthetic import build_synthetic
from tests.engine.test_search import tiny_space

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]

SECOND_RAY = """
import sys, time, ray
ray.init(address="local", num_cpus=1, include_dashboard=False)
print("up", flush=True)
sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def second_ray():
    """Another Ray instance on this machine, started and ended by this test (never `ray stop`)."""
    proc = subprocess.Popen([sys.executable, "-c", SECOND_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_successful_search_prints_no_traceback_with_a_second_ray_up(tmp_path, second_ray):
    cohort = str(build_synthetic(str(tmp_path / "tiny.zarr"), n_patients=240, seed=3, progress=False).url)
    command = [sys.executable, str(ROOT / "experiments" / "cv_search.py"), "--cohort", cohort,
               "--subset", "rna,dna,mri", "--space", tiny_space(tmp_path), "--trials", "2", "--folds", "2",
               "--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db",
               "--experiment", "console-test", "--n-boot", "20", "--address", "local"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.time()
    done = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    assert "Traceback" not in out, out
    for noise in ("Checkpoint successfully created", "snapshotting has been triggered",
                  "You are trying to log an invalid value", "Found multiple active Ray instances"):
        assert noise not in out, noise
    # the project's own lines are there: pretraining progress, the trial table, the results
    assert re.search(r"pretrain rna\+dna\+mri fold 0: epoch +2/2", out), out
    assert re.search(r"selected by the rule '\w+' \(validation folds only\)", out) and "results:" in out
    # issue #24: no ANSI codes off a terminal, one line per trial result, why a trial ended, one 'selected model'
    assert "\x1b[" not in out, [line for line in out.splitlines() if "\x1b[" in line][:3]
    assert re.search(r"trial \S+ fold 1/2: fixed epoch \d+, mean CS [\d.]+  \[", out), out
    assert re.search(r"trial \S+ (complete: 2 folds|stopped by ASHA after 1/2 folds)", out), out
    assert out.count("selected model:") == 1 and "fold_history" not in out
    (log_line,) = [line for line in out.splitlines() if line.startswith("Ray and Tune messages: ")]
    log = Path(log_line.split(": ", 1)[1])
    assert log.is_file() and log.parent.parent == tmp_path / "runs"
    assert len(out.splitlines()) < 150, f"{len(out.splitlines())} console lines in {time.time() - started:.0f} s"


def test_nested_console_labels_every_line_of_an_outer_fold_and_stays_short(tmp_path):
    """Issue #24: in nested CV every line printed while the outer folds run names its outer fold (two run at
    once here), pretraining included (one line per model from the driver, none from the Ray workers), one
    line per trial, and the whole console stays within a budget that scales to < 300 lines for 5 x 8."""
    cohort = str(build_synthetic(str(tmp_path / "tiny.zarr"), n_patients=240, seed=3, progress=False).url)
    command = [sys.executable, str(ROOT / "experiments" / "cv_search.py"), "--cohort", cohort,
               "--subset", "rna,dna,mri", "--space", tiny_space(tmp_path), "--trials", "2", "--folds", "2",
               "--outer-folds", "2", "--concurrent-outer", "2", "--storage", str(tmp_path / "runs"),
               "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "nested-console",
               "--n-boot", "20", "--address", "local"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)   # one stream: the console's order
    out = done.stdout
    assert done.returncode == 0, out[-5000:]
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("outer folds at once: 2"))
    end = next(i for i, line in enumerate(lines) if line.startswith("# Nested CV"))
    inside = [line for line in lines[start + 1:end] if line.strip()]
    unlabelled = [line for line in inside if not re.match(r"\[r0-outer[01]\] ", line)]
    assert not unlabelled, unlabelled[:5]
    for k in (0, 1):
        pretrain = [line for line in inside if re.match(rf"\[r0-outer{k}\]   pretrain rna\+dna\+mri outer 0-{k} "
                                                        r"(fold \d|refit): epoch +2/2  loss ", line)]
        assert len(pretrain) == 3, inside            # folds 0 and 1 and the refit, one line each
        trials = [line for line in inside if re.match(rf"\[r0-outer{k}\] trial \S+ (complete|stopped|failed)", line)]
        assert len(trials) == 2 and all("lr=" in line for line in trials), trials
        assert not [line for line in inside if re.match(rf"\[r0-outer{k}\] trial \S+ fold \d/2:", line)]
    assert "(task_loop pid=" not in out and "Configuration for experiment" not in out and "\x1b[" not in out
    per_outer = len(inside) / 2
    assert per_outer <= 30, f"{per_outer} lines per outer fold:\n" + "\n".join(inside)
    assert len(lines) - len(inside) <= 60, "\n".join(lines[:start + 1] + lines[end:])
