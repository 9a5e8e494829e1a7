"""Starting Ray for the engine: ``ray.init`` with the workers' setup hooks, and the reaper.

The search, nested CV and the pretraining jobs all start Ray through :func:`init_ray`, so it lives
below them (``pretrain_jobs`` used to import it from ``search``, which imports ``pretrain_jobs``).
The setup hooks themselves stay in :mod:`impumae.engine.console`, which imports nothing heavy:
every Ray worker imports its hook's module before it runs anything. The reaper is
:mod:`impumae.engine.lifetime` (a process of its own).
"""
from __future__ import annotations

import ray

from impumae.engine import console, lifetime


def init_ray(address: str | None):
    """Local Ray (no dashboard) for None/""/"local", else connect to ``address`` ("auto", "ray://...")."""
    if ray.is_initialized():
        return
    common = dict(log_to_driver=True, configure_logging=False)
    if address in (None, "", "local"):
        # "local", not None: None joins a Ray that `ray start` left on this machine, and Ray's own
        # clients then find several instances ("Found multiple active Ray instances")
        ray.init(address="local", include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": console.local_worker_setup}, **common)
        try:
            lifetime.start_reaper(ray._private.worker._global_node.get_session_dir_path())
        except (AttributeError, OSError):  # private API moved: the setup hook still covers most workers
            pass
    else:
        ray.init(address=address, runtime_env={"worker_process_setup_hook": console.quiet_ray_chatter}, **common)
