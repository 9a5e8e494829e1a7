"""From a cohort store to the tensors one stage of one fold trains or evaluates on.

Each selected modality is held as :class:`ModalityRows`: only the rows of patients who have it.
A modality whose present rows fit in ``resident_bytes()`` (``IMPUMAE_RESIDENT_MB``, default 512 MB
per modality per process) is read once per process and kept (:class:`ResidentRows`: today's speed
for small cohorts); a bigger one (paper-scale slides) stays in the store and is read per batch from
its shards (:class:`StreamedRows`; uncompressed image shards come straight from the page cache, which
every process on a node shares), with a background thread preparing the next batch
(:func:`iter_batches`). Absent rows are never read: they are the store's fill value. Who sees which
patients is decided here, in one place:

- ``role="pretrain"``: the training patients of the fold with at least one tokenised modality of
  the subset (the method's point: every patient counts);
- ``role="finetune"`` / ``"validate"``: training / validation patients of the fold that have the
  anchor modality (the first of the subset), the paper's "at least RNA" population;
- the holdout split is reachable only through ``holdout_indices``, which the final evaluation alone calls.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator
from enum import Enum

import numpy as np
import torch

from impumae import storage
from impumae.data.store import Cohort
from impumae.data.transforms import FoldTransforms
from impumae.modalities import ModalitySpec

REFIT = -1  # the "fold" id of the final refit on every non-holdout patient
RESIDENT_COHORTS = 4  # cohort views kept in memory per process (see load_cohort_arrays)
RESIDENT_MB = 512     # default per-modality limit of resident present rows (IMPUMAE_RESIDENT_MB overrides)
PREFETCH_BATCHES = 2  # batches a background thread prepares ahead of a streamed modality's consumer


def resident_bytes() -> int:
    """A modality whose present rows take more than this is streamed from the store per batch."""
    text = os.environ.get("IMPUMAE_RESIDENT_MB", "")
    try:
        megabytes = float(text) if text.strip() else RESIDENT_MB
    except ValueError:
        raise ValueError(f"IMPUMAE_RESIDENT_MB={text!r}: expected a number of megabytes") from None
    return int(megabytes * 2**20)


class ModalityRows:
    """One modality of a cohort indexed like the dense ``[N, *shape]`` array: ``rows_view[rows]`` ->
    ``[len(rows), *shape]`` (any order, repeats allowed), absent patients' rows filled with the store's
    fill value (NaN, or 0 for uint8) without reading them. ``reads`` / ``rows_read`` count what came
    from the store (tests check that absent rows and unused modalities are never read)."""
    resident: bool

    def __init__(self, cohort: Cohort, name: str, present: np.ndarray):
        spec = cohort.specs[name]
        self.name = name
        self.shape = (len(present), *spec.shape)
        self.dtype = np.dtype(spec.dtype)
        self.fill = 0 if self.dtype == np.uint8 else np.nan
        self.present_rows = np.flatnonzero(present)
        self.slot = np.full(len(present), -1, np.int64)  # cohort row -> position among present rows
        self.slot[self.present_rows] = np.arange(len(self.present_rows))
        self.row_nbytes = int(np.prod(spec.shape, dtype=np.int64)) * self.dtype.itemsize
        self.reads = 0
        self.rows_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of values this object holds in memory."""
        return 0

    def _present_values(self, slots: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).reshape(-1)
        slots = self.slot[rows]
        keep = slots >= 0
        if keep.all():
            return self._present_values(slots)
        out = np.full((len(rows), *self.shape[1:]), self.fill, dtype=self.dtype)
        if keep.any():
            out[keep] = self._present_values(slots[keep])
        return out

    def copy(self) -> np.ndarray:
        """The dense ``[N, *shape]`` array (a new one; absent rows = the fill value)."""
        return np.asarray(self)

    def __array__(self, dtype=None, copy=None):
        dense = self[np.arange(len(self))]
        return dense if dtype is None else dense.astype(dtype)


class ResidentRows(ModalityRows):
    """The present rows read once and held (``[n_present, *shape]``)."""
    resident = True

    def __init__(self, cohort: Cohort, name: str, present: np.ndarray):
        super().__init__(cohort, name, present)
        self.values = cohort.read(name, self.present_rows)
        self.reads, self.rows_read = 1, len(self.present_rows)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def _present_values(self, slots: np.ndarray) -> np.ndarray:
        return self.values[slots]


class StreamedRows(ModalityRows):
    """Nothing held: every access reads the present rows it needs from the store's shards."""
    resident = False

    def __init__(self, cohort: Cohort, name: str, present: np.ndarray):
        super().__init__(cohort, name, present)
        self.cohort = cohort

    def _present_values(self, slots: np.ndarray) -> np.ndarray:
        self.reads += 1
        self.rows_read += len(slots)
        return self.cohort.read(self.name, self.present_rows[slots])


def modality_rows(cohort: Cohort, name: str, present: np.ndarray, limit: int | None = None) -> ModalityRows:
    """Resident if the present rows fit in ``limit`` bytes (default :func:`resident_bytes`), else streamed."""
    limit = resident_bytes() if limit is None else limit
    rows = ResidentRows if int(np.sum(present)) * _row_nbytes(cohort, name) <= limit else StreamedRows
    return rows(cohort, name, present)


def _row_nbytes(cohort: Cohort, name: str) -> int:
    spec = cohort.specs[name]
    return int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize


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
    arrays: dict[str, ModalityRows | np.ndarray]  # ModalityRows from a store; dense arrays from tables (export)
    present: dict[str, np.ndarray]
    specs: dict[str, ModalitySpec]
    value_types: dict[str, str]
    split: dict = field(default_factory=dict)   # {} = the stored split; else the outer split (see outer_split)

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

    def with_split(self, holdout: np.ndarray, fold: np.ndarray, split: dict) -> "CohortArrays":
        """The same patients and arrays (shared, not copied) under another holdout and fold
        assignment; ``split`` names it (pretraining cache keys and checkpoints carry it)."""
        if holdout.shape != self.holdout.shape or fold.shape != self.fold.shape:
            raise ValueError(f"split {split}: {holdout.shape[0]} holdout flags and {fold.shape[0]} folds "
                             f"for {len(self.ids)} patients of {self.url}")
        return replace(self, holdout=np.asarray(holdout, bool), fold=np.asarray(fold, np.int64), split=dict(split))


def outer_split(event: np.ndarray, stored_holdout: np.ndarray, stored_fold: np.ndarray, *, outer_folds: int,
                outer_fold: int, repeat: int = 0, seed: int = 0,
                strata: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(holdout, fold) of outer fold ``outer_fold`` of ``outer_folds`` in repeat ``repeat``: nested CV.

    The outer folds partition ALL patients (the stored holdout included), stratified by event and
    by ``strata`` when given (e.g. presence of the anchor modality), shuffled with a seed drawn from
    (``seed``, ``repeat``): every patient is in exactly one outer test split per repeat. The outer
    test split becomes the holdout; the other patients keep their stored inner fold, and those
    without one (the stored holdout) are spread over the stored folds, stratified the same way and
    seeded by (``seed``, ``repeat``, ``outer_fold``). A pure function of its arguments.
    """
    from sklearn.model_selection import StratifiedKFold  # noqa: PLC0415 (only nested CV needs it)

    n_inner = int(stored_fold.max()) + 1
    if not 2 <= outer_folds <= len(event) or not 0 <= outer_fold < outer_folds:
        raise ValueError(f"outer fold {outer_fold} of {outer_folds} for {len(event)} patients: need "
                         f"2 <= outer folds <= patients and 0 <= outer fold < outer folds")
    if n_inner < 2:
        raise ValueError(f"nested CV needs at least 2 stored inner folds, the cohort stores {n_inner}")
    labels = np.asarray(event, np.int64) * 2 + (0 if strata is None else np.asarray(strata, np.int64))
    # a stratum smaller than outer_folds cannot be spread over every outer fold: merge it into events
    counts = np.bincount(labels)
    labels = np.where(counts[labels] < outer_folds, np.asarray(event, np.int64) * 2, labels)
    shuffle_seed = int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])
    splitter = StratifiedKFold(n_splits=outer_folds, shuffle=True, random_state=shuffle_seed)
    test = list(splitter.split(np.zeros(len(labels)), labels))[outer_fold][1]
    holdout = np.zeros(len(labels), bool)
    holdout[test] = True
    fold = np.where(holdout, -1, np.asarray(stored_fold, np.int64))
    rng = np.random.default_rng([seed, repeat, outer_fold])
    spread = np.flatnonzero(~holdout & (fold < 0))
    spread = spread[rng.permutation(len(spread))]
    spread = spread[np.argsort(labels[spread], kind="stable")]   # grouped by stratum, shuffled within
    fold[spread] = (np.arange(len(spread)) + rng.integers(n_inner)) % n_inner
    return holdout, fold


def fingerprint(cohort: Cohort) -> str:
    """What identifies a cohort's contents in pretraining cache keys: its resolved URL (a relative
    and an absolute path share it), its creation time and its size, and the store's unique build id
    (stores written before build ids existed have none; their keys are unchanged)."""
    provenance = cohort.provenance
    created = provenance.get("created", "")
    build_id = f"|{provenance['build_id']}" if "build_id" in provenance else ""
    return hashlib.sha256(f"{cohort.url}|{created}|{len(cohort.patient_ids)}{build_id}".encode()).hexdigest()[:16]


_resident: OrderedDict[tuple, CohortArrays] = OrderedDict()


def load_cohort_arrays(url: str, modalities: tuple[str, ...], split: dict | None = None) -> CohortArrays:
    """The cohort's selected modalities, read once per process and kept (the last
    ``RESIDENT_COHORTS``), keyed by URL *and* fingerprint: a store rewritten at the same URL (a
    long-lived Ray worker sees it between searches) is read again, not served stale.

    ``split``: None or {} = the stored holdout and folds; else an outer split of nested CV
    (``outer_split``'s keywords: ``outer_folds``, ``outer_fold``, ``repeat``, ``seed``, and
    ``stratify``: a modality whose presence stratifies the outer folds, or None), applied as a
    view that shares the arrays. Every load of a search goes through here with its split."""
    view = _load_stored(url, tuple(modalities))
    if not split:
        return view
    options = {k: v for k, v in split.items() if k != "stratify"}
    stratify = split.get("stratify")
    strata = Cohort.open(url).present[stratify].to_numpy(bool) if stratify else None
    holdout, fold = outer_split(view.event, view.holdout, view.fold, strata=strata, **options)
    return view.with_split(holdout, fold, split)


def _load_stored(url: str, modalities: tuple[str, ...]) -> CohortArrays:
    cohort = Cohort.open(url)
    key = (cohort.url, fingerprint(cohort), tuple(modalities), resident_bytes())
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
        arrays={m: modality_rows(cohort, m, present[m].to_numpy(bool)) for m in modalities},
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
        held = [*self.present.values(), *([] if self.clinical is None else [self.clinical])]
        rows_t = torch.as_tensor(rows, device=held[0].device if held else "cpu")
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


class StreamedBatchable:
    """A :class:`Batchable` whose streamed modalities (:class:`StreamedRows`) stay in the store:
    ``take(rows)`` reads those rows' values from the shards, applies the fold-fitted transforms to
    them and returns a resident :class:`Batchable` of the batch; resident modalities, presence,
    clinical values and labels are held as in a Batchable. ``x`` materialises every row (only for
    code that needs the whole set at once, e.g. the linear path's warm start)."""

    def __init__(self, ca: CohortArrays, subset, transforms: FoldTransforms, rows: np.ndarray,
                 device: str | torch.device = "cpu"):
        tokenised, clinical = split_subset(subset, ca.specs)
        self.rows = np.asarray(rows, np.int64)
        self.streamed = [m for m in tokenised if not getattr(ca.arrays[m], "resident", True)]
        held = [m for m in subset if m not in self.streamed]
        self.resident = _batchable(ca, held, tokenised, clinical, transforms, self.rows, device)
        self.sources = {m: ca.arrays[m] for m in self.streamed}
        self.present_np = {m: ca.present[m][self.rows] for m in self.streamed}
        self.transforms, self.device = transforms, torch.device(device)
        self.order = [m for m in tokenised]
        self.ids, self.time, self.event = self.resident.ids, self.resident.time, self.resident.event
        self.clinical = self.resident.clinical
        self.present = {**self.resident.present,
                        **{m: torch.as_tensor(self.present_np[m], device=self.device) for m in self.streamed}}

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows) -> Batchable:
        rows = np.asarray(rows, np.int64)
        part = self.resident.take(rows)
        x = dict(part.x)
        for m in self.streamed:
            present = self.present_np[m][rows]
            values = self.transforms.transforms[m].apply(self.sources[m][self.rows[rows]], present)
            x[m] = torch.as_tensor(values, device=self.device)
        x = {m: x[m] for m in self.order}
        pres = {m: (part.present[m] if m in part.present else self.present[m][torch.as_tensor(rows, device=self.device)])
                for m in self.order}
        return Batchable(part.ids, x, pres, part.clinical, part.time, part.event)

    @property
    def x(self) -> dict[str, torch.Tensor]:
        return self.take(np.arange(len(self))).x


def _batchable(ca: CohortArrays, names, tokenised, clinical, transforms: FoldTransforms, rows: np.ndarray,
               device) -> Batchable:
    arrays = {m: ca.arrays[m][rows] for m in names}
    present = {m: ca.present[m][rows] for m in names}
    values = transforms.apply(arrays, present)
    x = {m: torch.as_tensor(values[m], device=device) for m in tokenised if m in names}
    pres = {m: torch.as_tensor(present[m], device=device) for m in tokenised if m in names}
    clin = torch.as_tensor(np.concatenate([values[m] for m in clinical], axis=1), device=device) if clinical else None
    return Batchable(ca.ids[rows], x, pres, clin, ca.time[rows], ca.event[rows])


def make_batchable(ca: CohortArrays, subset, transforms: FoldTransforms, rows: np.ndarray,
                   device: str | torch.device = "cpu") -> Batchable | StreamedBatchable:
    """The tensors of ``rows``: a resident :class:`Batchable`, or a :class:`StreamedBatchable` when a
    tokenised modality of ``subset`` is streamed (read per batch by ``take``)."""
    tokenised, clinical = split_subset(subset, ca.specs)
    if any(not getattr(ca.arrays[m], "resident", True) for m in tokenised):
        return StreamedBatchable(ca, subset, transforms, rows, device)
    return _batchable(ca, list(subset), tokenised, clinical, transforms, rows, device)


def iter_batches(data: Batchable | StreamedBatchable, groups: Iterable[np.ndarray],
                 prefetch: int = PREFETCH_BATCHES) -> Iterator[tuple[np.ndarray, Batchable]]:
    """``(rows, data.take(rows))`` for each group of rows, in order. For a streamed set a background
    thread reads and transforms up to ``prefetch`` batches ahead (file reads and decompression release
    the GIL), so the consumer's compute overlaps the reads; a resident set is taken inline."""
    groups = [np.asarray(g) for g in groups]
    if not isinstance(data, StreamedBatchable) or prefetch < 1:
        for rows in groups:
            yield rows, data.take(rows)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="impumae-prefetch") as pool:
        pending = [pool.submit(data.take, rows) for rows in groups[:prefetch]]
        for i, rows in enumerate(groups):
            part = pending.pop(0).result()
            if i + prefetch < len(groups):
                pending.append(pool.submit(data.take, groups[i + prefetch]))
            yield rows, part


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
