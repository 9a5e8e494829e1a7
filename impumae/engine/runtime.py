"""Starting Ray for the engine: ``ray.init`` with the workers' setup hooks, and the reaper.

The search, nested CV and the pretraining jobs all start Ray through :func:`init_ray`, so it lives
below them (``pretrain_jobs`` used to import it from ``search``, which imports ``pretrain_jobs``).
Workers get this process's plugins (kinds and families from other packages) through the
runtime environment. The setup hooks themselves stay in :mod:`impumae.engine.console`, which imports nothing heavy:
every Ray worker imports its hook's module before it runs anything. The reaper is
:mod:`impumae.engine.lifetime` (a process of its own).
"""
from __future__ import annotations

import ray

from impumae import plugins
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
                 runtime_env=_runtime_env(console.local_worker_setup), **common)
        try:
            lifetime.start_reaper(ray._private.worker._global_node.get_session_dir_path())
        except (AttributeError, OSError):  # private API moved: the setup hook still covers most workers
            pass
    else:
        ray.init(address=address, runtime_env=_runtime_env(console.quiet_ray_chatter), **common)


def _runtime_env(setup_hook) -> dict:
    """Every worker runs ``setup_hook`` first and sees this process's plugins (``IMPUMAE_PLUGINS``;
    entry points come with the installed distributions), so it knows the kinds and families the
    driver knows (:mod:`impumae.plugins`)."""
    env_vars = plugins.environment()
    return {"worker_process_setup_hook": setup_hook, **({"env_vars": env_vars} if env_vars else {})}
