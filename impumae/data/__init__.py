"""Cohort data: the zarr cohort store, splits and the builders that fill it (see docs/design.md)."""
from impumae.data.splits import make_splits
from impumae.data.store import Cohort, CohortError, CohortPlan, summarize, write_cohort

__all__ = ["Cohort", "CohortError", "CohortPlan", "make_splits", "summarize", "write_cohort"]
