"""Cohort data: the zarr cohort store, splits and the builders that fill it (see docs/design.md).

Names are imported lazily: ``import impumae.data`` (which every ``impumae.data.*`` import runs,
DataLoader workers included) costs nothing, and scikit-learn (~2.5 s) is imported only when
``make_splits`` or a writer is used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Cohort": "impumae.data.store", "CohortError": "impumae.data.store", "CohortPlan": "impumae.data.store",
    "summarize": "impumae.data.store", "write_cohort": "impumae.data.store",
    "make_splits": "impumae.data.splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
