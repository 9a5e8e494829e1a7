"""Ray workers that end with the Ray the search started.

A search that starts its own local Ray owns its raylet and GCS: they share the driver's fate
(Ray starts them with ``PR_SET_PDEATHSIG``), so killing the search's process group ends them. The
workers, though, are the raylet's children in process groups of their own; they notice a dead
raylet by polling it, and one busy in a long C call (a torch op) was seen to outlive it as an
orphan (parent 1). :func:`die_with_raylet`, run in each worker as a setup hook, asks the kernel to
SIGKILL the worker when its parent (the raylet) dies; :func:`start_reaper` covers the workers that
were still starting (below). Only for a Ray the search started itself: on
a cluster the raylet is not the search's to end (see docs/scaling.md for what to do there).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_raylet() -> bool:
    """Linux: SIGKILL this process when its parent exits. Returns whether it was set up."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the parent died before the request was made: nothing will signal us
        os._exit(1)
    return True


# --- a reaper for the workers that were still starting ------------------------------------------
# A worker that the raylet had just forked when the search was killed has not run the setup hook
# yet (it is still importing, tens of seconds on a loaded machine) and outlives the raylet as an
# orphan until it fails to register. The reaper, a small process in a session of its own started
# by the driver, waits for the driver to end and then kills every process of that Ray session.

def start_reaper(session_dir: str) -> None:
    """Start the reaper of the Ray session at ``session_dir`` for this (the driver) process."""
    import subprocess
    subprocess.Popen([sys.executable, "-m", "impumae.engine.lifetime", str(os.getpid()), session_dir],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def _session_processes(session_dir: str, own: int):
    import psutil
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] != own and any(session_dir in part for part in (proc.info["cmdline"] or ())):
            yield proc


def reap(driver_pid: int, session_dir: str, poll_s: float = 0.5, linger_s: float = 5.0) -> None:
    import time

    import psutil
    try:
        driver = psutil.Process(driver_pid)
        driver.wait()
    except psutil.NoSuchProcess:
        pass
    deadline = time.time() + linger_s  # the raylet may still fork a worker or two on its way down
    while time.time() < deadline:
        for proc in _session_processes(session_dir, os.getpid()):
            try:
                proc.kill()
            except psutil.Error:
                pass
        time.sleep(poll_s)


if __name__ == "__main__":
    reap(int(sys.argv[1]), sys.argv[2])
