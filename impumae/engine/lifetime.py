"""Ray workers that end with the Ray the search started.

A search that starts its own local Ray owns its raylet and GCS: they share the driver's fate
(Ray starts them with ``PR_SET_PDEATHSIG``), so killing the search's process group ends them. The
workers, though, are the raylet's children in process groups of their own; they notice a dead
raylet by polling it, and one busy in a long C call (a torch op) was seen to outlive it as an
orphan (parent 1). :func:`die_with_raylet`, run in each worker as a setup hook, asks the kernel to
SIGKILL the worker when its parent (the raylet) dies. Only for a Ray the search started itself: on
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
