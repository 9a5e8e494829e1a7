"""Plugins: the modules that register kinds of modality (and model families) in every process.

A kind registered by ``impumae.kinds.register(...)`` in a script exists in that process only; a Ray
worker, the MLflow model loader, ``mlflow models serve`` and every command are fresh interpreters,
and a store or a model that names the kind would fail there with ``unknown kind``. So a plugin is
declared where every process can find it, in either of two ways:

- an entry point of an installed distribution (the way to ship one), in the group ``impumae.kinds``
  for kinds or ``impumae.families`` for model families. In the plugin's ``pyproject.toml``::

      [project.entry-points."impumae.kinds"]
      plane = "my_package.plane"          # a module whose import registers the kind

  The value is a module (importing it registers) or ``module:function`` (a function of no
  arguments that registers, called once);
- the environment variable ``IMPUMAE_PLUGINS``: module names separated by commas, imported the same
  way (for code that is importable but not installed as a distribution). The engine passes it on
  to the Ray workers (``impumae.engine.runtime.init_ray``).

:func:`load_plugins` imports every declared plugin once per process. It is called where a name
is looked up and not found (``impumae.kinds.get``, ``impumae.families.get``), so nothing needs
to call it up front, and a process that never meets a plugin's name never imports it.
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

ENTRY_POINT_GROUPS = ("impumae.kinds", "impumae.families")
ENVIRONMENT_VARIABLE = "IMPUMAE_PLUGINS"

_loaded: set[str] = set()  # "module" or "module:function" of every plugin already loaded here


def declared() -> list[str]:
    """Every plugin declared to this process: entry points first (by group), then the environment's."""
    found = [ep.value.replace(" ", "") for group in ENTRY_POINT_GROUPS for ep in entry_points(group=group)]
    found += [name.strip() for name in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if name.strip()]
    return list(dict.fromkeys(found))


def load_plugins() -> list[str]:
    """Import every declared plugin not loaded yet in this process (and call it when it names a
    function); returns those loaded now. An import error propagates, naming the plugin."""
    loaded = []
    for target in declared():
        if target in _loaded:
            continue
        module_name, _, function = target.partition(":")
        try:
            module = importlib.import_module(module_name)
            if function:
                getattr(module, function)()
        except Exception as error:
            raise ImportError(f"impumae plugin {target!r} failed to load: {error}") from error
        _loaded.add(target)
        loaded.append(target)
    return loaded


def environment() -> dict[str, str]:
    """The environment variables a worker process needs to see this process's plugins: the
    ``IMPUMAE_PLUGINS`` list when set (entry points come with the installed distribution)."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return {ENVIRONMENT_VARIABLE: value} if value else {}
