"""From a cohort store to the tensors one stage of one fold trains or evaluates on.

The whole of each selected modality is read once per process (TCGA-scale cohorts fit in memory,
and reading whole shards is where zarr is fast), then every stage takes rows by index. Who sees
which patients is decided here, in one place:

- ``role="pretrain"``: the training patients of the fold with at least one tokenised modality of
  the subset (the method's point: every patient counts);
- ``role="finetune"`` / ``"validate"``: training / validation patients of the fold that have the
  anchor modality (the first of the subset), the paper's "at least RNA" population;
- the holdout split is reachable only through ``holdout_indices``, which the final evaluation alone calls.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from impumae import storage
from impumae.data.store import Cohort
from impumae.data.transforms import FoldTransforms
from impumae.modalities import ModalitySpec

REFIT = -1  # the "fold" id of the final refit on every non-holdout patient
RESIDENT_COHORTS = 4  # cohort views kept in memory per process (see load_cohort_arrays)


class Population(str, Enum):
    """Who a stage uses among the patients it is given (see the module docstring)."""
    PRETRAIN = "pretrain"          # at least one tokenised modality of the subset
    FINETUNE = "finetune"          # the anchor (first) modality
    VALIDATE = "validate"          # the anchor modality
    ANCHOR = "anchor"              # the anchor modality (the holdout's first condition)
    ALL_PRESENT = "all_present"    # every modality of the subset (the holdout's second condition)


def parse_fold(text: str) -> int:
    """A fold named on a command line: ``0..K-1`` or ``refit`` (= ``REFIT``)."""
    if str(text).strip().lower() == "refit":
        return REFIT
    try:
        fold = int(text)
    except ValueError:
        raise ValueError(f"--fold must be an integer or 'refit', got {text!r}") from None
    if fold < 0:
        raise ValueError(f"--fold must be >= 0 or 'refit', got {fold}")
    return fold


def resolve_cohort(url: str | None, echo=print) -> str:
    """The cohort a command uses, as an absolute path or URL; None = the embedded synthetic cohort
    (built and cached on first use)."""
    if url is None:
        from impumae.data.synthetic import default_cohort  # noqa: PLC0415 (builds a cohort: only when asked)
        url = str(default_cohort().url)
        echo(f"using the embedded synthetic cohort at {url}")
    return storage.resolve(url)


@dataclass
class CohortArrays:
    url: str
    fingerprint: str
    ids: np.ndarray
    time: np.ndarray
    event: np.ndarray
    holdout: np.ndarray          # bool
    fold: np.ndarray             # int, -1 on holdout
    arrays: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    specs: dict[str, ModalitySpec]
    value_types: dict[str, str]

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1

    def train_indices(self, fold: int) -> np.ndarray:
        """Non-holdout patients outside validation fold ``fold`` (all non-holdout for REFIT)."""
        keep = ~self.holdout if fold == REFIT else (~self.holdout & (self.fold != fold))
        return np.flatnonzero(keep)

    def validation_indices(self, fold: int) -> np.ndarray:
        return np.flatnonzero(~self.holdout & (self.fold == fold))

    def holdout_indices(self) -> np.ndarray:
        return np.flatnonzero(self.holdout)

    def any_present(self, modalities) -> np.ndarray:
        return np.any([self.present[m] for m in modalities], axis=0)


def fingerprint(cohort: Cohort) -> str:
    """What identifies a cohort's contents in pretraining cache keys: its resolved URL (a relative
    and an absolute path share it), its creation time and its size, and the store's unique build id
    (stores written before build ids existed have none; their keys are unchanged)."""
    provenance = cohort.provenance
    created = provenance.get("created", "")
    build_id = f"|{provenance['build_id']}" if "build_id" in provenance else ""
    return hashlib.sha256(f"{cohort.url}|{created}|{len(cohort.patient_ids)}{build_id}".encode()).hexdigest()[:16]


_resident: OrderedDict[tuple, CohortArrays] = OrderedDict()


def load_cohort_arrays(url: str, modalities: tuple[str, ...]) -> CohortArrays:
    """The cohort's selected modalities, read once per process and kept (the last
    ``RESIDENT_COHORTS``), keyed by URL *and* fingerprint: a store rewritten at the same URL (a
    long-lived Ray worker sees it between searches) is read again, not served stale."""
    cohort = Cohort.open(url)
    key = (cohort.url, fingerprint(cohort), tuple(modalities))
    if key in _resident:
        _resident.move_to_end(key)
        return _resident[key]
    missing = [m for m in modalities if m not in cohort.modalities]
    if missing:
        raise ValueError(f"cohort {url} has no modality {missing[0]!r}; it has {cohort.modalities}")
    labels, splits, present = cohort.labels, cohort.splits, cohort.present
    view = CohortArrays(
        url=url, fingerprint=key[1],
        ids=np.asarray(cohort.patient_ids).astype(str),
        time=labels["time"].to_numpy(np.float64), event=labels["event"].to_numpy(np.int64),
        holdout=splits["holdout"].to_numpy(bool), fold=splits["fold"].to_numpy(np.int64),
        arrays={m: cohort.load(m) for m in modalities},
        present={m: present[m].to_numpy(bool) for m in modalities},
        specs={m: cohort.specs[m] for m in modalities},
        value_types={m: cohort.value_types.get(m, "raw") for m in modalities},
    )
    _resident[key] = view
    while len(_resident) > RESIDENT_COHORTS:
        _resident.popitem(last=False)
    return view


@dataclass
class Batchable:
    """Tensors for one set of patients, resident on one device."""
    ids: np.ndarray
    x: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    clinical: torch.Tensor | None
    time: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows) -> "Batchable":
        rows_t = torch.as_tensor(rows, device=next(iter(self.present.values())).device)
        return Batchable(self.ids[rows], {m: v[rows_t] for m, v in self.x.items()},
                         {m: v[rows_t] for m, v in self.present.items()},
                         None if self.clinical is None else self.clinical[rows_t],
                         self.time[rows], self.event[rows])


def split_subset(subset, specs) -> tuple[list[str], list[str]]:
    """(tokenised modalities, clinical modalities) of a subset, in subset order."""
    tokenised = [m for m in subset if specs[m].tokenised]
    clinical = [m for m in subset if not specs[m].tokenised]
    return tokenised, clinical


def fit_transforms(ca: CohortArrays, subset, train_idx: np.ndarray, **options) -> FoldTransforms:
    """The transforms of ``subset`` fitted on the rows ``train_idx``; ``options``: the search space's
    ``transforms:`` section (:class:`impumae.data.transforms.TransformOptions`)."""
    return FoldTransforms.fit({m: ca.arrays[m] for m in subset}, ca.present, train_idx, ca.specs,
                              ca.value_types, patient_ids=ca.ids, **options)


def make_batchable(ca: CohortArrays, subset, transforms: FoldTransforms, rows: np.ndarray,
                   device: str | torch.device = "cpu") -> Batchable:
    tokenised, clinical = split_subset(subset, ca.specs)
    arrays = {m: ca.arrays[m][rows] for m in subset}
    present = {m: ca.present[m][rows] for m in subset}
    values = transforms.apply(arrays, present)
    x = {m: torch.as_tensor(values[m], device=device) for m in tokenised}
    pres = {m: torch.as_tensor(present[m], device=device) for m in tokenised}
    clin = torch.as_tensor(np.concatenate([values[m] for m in clinical], axis=1), device=device) if clinical else None
    return Batchable(ca.ids[rows], x, pres, clin, ca.time[rows], ca.event[rows])


def population(ca: CohortArrays, subset, idx: np.ndarray, role: Population | str) -> np.ndarray:
    """The patients of ``idx`` that a stage uses (see :class:`Population`)."""
    try:
        role = Population(role)
    except ValueError:
        raise ValueError(f"unknown population role {role!r}") from None
    if role is Population.PRETRAIN:
        tokenised, _ = split_subset(subset, ca.specs)
        return idx[ca.any_present(tokenised)[idx]]
    if role is Population.ALL_PRESENT:
        return idx[np.all([ca.present[m][idx] for m in subset], axis=0)]
    return idx[ca.present[subset[0]][idx]]  # FINETUNE, VALIDATE, ANCHOR: the anchor modality
