"""The cohort store: one zarr v3 group per cohort, at a local path or any fsspec URL.

Layout (``docs/design.md``): ``labels/time`` float32 [N] (years), ``labels/event`` int8 [N],
optional ``labels/true_risk`` float32 [N], ``present`` bool [N, M], ``modalities/<m>`` [N, *shape]
(float32; images uint8) with one chunk per patient (images: one chunk per patch) and one shard per
block of patients, ``split/holdout`` bool [N] and ``split/fold`` int8 [N]; an imputed store adds
``imputed`` bool [N, M]. The root attributes hold patient ids, modality names, specs, feature names,
value types, per-patient string columns (``obs_columns``) and provenance.

One file per responsibility:

- ``schema.py``: format constants, ``CohortError``, ``CohortPlan`` and the
  checks of labels, plans and samples;
- ``write.py``: ``write_cohort``, ``write_imputed_cohort``, ``write_options`` and the codec policy;
- ``shards.py``: the direct reader of the zarr shards that ``write_cohort`` writes;
- ``read.py``: ``Cohort`` (open a store and read it);
- ``summary.py``: ``summarize`` (the text report of a store).
"""
from __future__ import annotations

from .read import Cohort
from .schema import (COMPRESSOR_NAMES, FORMAT, FORMAT_VERSION, LABEL_COLUMNS, SPLIT_INPUT_COLUMNS, VALUE_TYPES, CohortError, CohortPlan, store_location,
                     validate_labels)
from .summary import summarize
from .write import write_cohort, write_imputed_cohort, write_options

__all__ = ["COMPRESSOR_NAMES", "FORMAT", "FORMAT_VERSION",
           "LABEL_COLUMNS", "SPLIT_INPUT_COLUMNS", "VALUE_TYPES", "Cohort", "CohortError", "CohortPlan", "summarize",
           "store_location", "validate_labels", "write_cohort", "write_imputed_cohort", "write_options"]
