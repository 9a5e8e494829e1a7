"""Holdout test split and K cross-validation folds for a cohort.

``make_splits(labels)`` returns one row per patient: ``holdout`` (True = the test split, touched
once at the end) and ``fold`` (0..K-1 for the other patients, -1 for holdout patients). Splits are
stratified by event and, when the labels have a ``project`` column, by project; a stratum too small
to spread over the folds falls back to event-only strata, then to one stratum. Splits a user already
has are honoured: a ``group`` column (``train``/``test``) fixes the holdout, a ``fold`` column
(integers, empty for holdout patients) fixes the folds (the authors' table has ``group`` and
``splits`` 0-4; rename ``splits`` to ``fold``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split


class SplitError(ValueError):
    """Bad split input; the message names the patient and column."""


class SplitSizeError(SplitError):
    """``test_frac`` or ``n_folds`` out of range, or too large for the number of patients."""


def make_splits(labels: pd.DataFrame, test_frac: float = 0.2, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Holdout flag and fold per patient (index = ``labels.index``).

    ``labels`` needs an ``event`` column; ``project``, ``group`` and ``fold`` are used when present.
    The result's ``attrs`` hold ``seed``, ``k``, ``test_frac`` and ``source`` (what decided the split).
    """
    if not 0.0 <= test_frac < 1.0:
        raise SplitSizeError(f"test_frac must be in [0, 1), got {test_frac}")
    if n_folds < 2:
        raise SplitSizeError(f"n_folds must be at least 2, got {n_folds}")
    if "event" not in labels.columns:
        raise SplitError("labels have no 'event' column: splits are stratified by event")
    n = len(labels)
    user_group = _user_holdout(labels)
    if user_group is not None:
        holdout = user_group
        holdout_source = "user group"
    elif test_frac > 0:
        strata = _strata(labels, min_count=2)
        n_test = max(1, int(round(test_frac * n)))
        if n_test >= n:
            raise SplitSizeError(f"test_frac {test_frac} leaves no training patients out of {n}")
        positions = np.arange(n)
        n_strata = len(np.unique(strata))
        stratify = strata if min(n_test, n - n_test) >= n_strata else None  # too few patients to stratify
        _, test_pos = train_test_split(positions, test_size=n_test, random_state=seed, stratify=stratify)
        holdout = np.zeros(n, dtype=bool)
        holdout[test_pos] = True
        holdout_source = "stratified"
    else:
        holdout = np.zeros(n, dtype=bool)
        holdout_source = "none"

    user_fold = _user_folds(labels, holdout)
    fold = np.full(n, -1, dtype=np.int64)
    if user_fold is not None:
        fold[~holdout] = user_fold[~holdout]
        k = int(len(np.unique(user_fold[~holdout])))
        fold_source = "user fold"
    else:
        development = np.flatnonzero(~holdout)
        if len(development) < n_folds:
            raise SplitSizeError(f"{len(development)} non-holdout patients cannot fill {n_folds} folds")
        strata = _strata(labels.iloc[development], min_count=n_folds)
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k_index, (_, val_pos) in enumerate(splitter.split(np.zeros(len(development)), strata)):
            fold[development[val_pos]] = k_index
        k = n_folds
        fold_source = "stratified"

    splits = pd.DataFrame({"holdout": holdout, "fold": fold}, index=labels.index)
    splits.attrs = {"seed": int(seed), "k": k, "test_frac": float(holdout.mean()) if n else 0.0,
                    "source": f"holdout: {holdout_source}; folds: {fold_source}"}
    return splits


def _strata(labels: pd.DataFrame, min_count: int) -> np.ndarray:
    """Stratum label per patient: event x project; patients whose stratum has fewer than ``min_count``
    members fall back to their event stratum, and if that is still too small, join the largest one."""
    event = labels["event"].astype(int).astype(str).to_numpy()
    if "project" in labels.columns:
        project = labels["project"].astype(str).to_numpy()
        strata = np.char.add(np.char.add(event, "|"), project.astype(str))
    else:
        strata = event.copy()
    for fallback in (event, None):
        values, counts = np.unique(strata, return_counts=True)
        rare = np.isin(strata, values[counts < min_count])
        if not rare.any():
            break
        if fallback is None:  # still too small: join the largest stratum
            fallback = np.full(len(strata), values[np.argmax(np.where(counts >= min_count, counts, -1))])
        strata = np.where(rare, fallback, strata)
    return strata


def _user_holdout(labels: pd.DataFrame) -> np.ndarray | None:
    if "group" not in labels.columns or labels["group"].isna().all():
        return None
    group = labels["group"]
    missing = group.isna()
    if missing.any():
        raise SplitError(f"patient {labels.index[missing.to_numpy()][0]!r}: column 'group' is empty; "
                         "give 'train' or 'test' for every patient or drop the column")
    text = group.astype(str).str.strip().str.lower()
    bad = ~text.isin(["train", "test"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise SplitError(f"patient {labels.index[row]!r}: column 'group' is {group.iloc[row]!r}; expected 'train' or 'test'")
    return (text == "test").to_numpy()


def _user_folds(labels: pd.DataFrame, holdout: np.ndarray) -> np.ndarray | None:
    if "fold" not in labels.columns or labels["fold"].isna().all():
        return None
    fold = pd.to_numeric(labels["fold"], errors="coerce").to_numpy(dtype=float)
    raw = labels["fold"].tolist()
    for row in np.flatnonzero(~holdout):
        value = fold[row]
        if np.isnan(value):
            raise SplitError(f"patient {labels.index[row]!r}: column 'fold' is {raw[row]!r}; every non-holdout "
                             "patient needs an integer fold")
        if value != int(value) or value < 0:
            raise SplitError(f"patient {labels.index[row]!r}: column 'fold' is {raw[row]!r}; expected an integer >= 0")
    development_folds = np.unique(fold[~holdout]).astype(int)
    if len(development_folds) < 2:
        raise SplitError(f"column 'fold' has {len(development_folds)} distinct value(s) for non-holdout patients; need at least 2")
    if not np.array_equal(development_folds, np.arange(len(development_folds))):
        raise SplitError(f"column 'fold' must number folds 0..K-1, got {development_folds.tolist()}")
    return np.where(np.isnan(fold), -1, fold).astype(np.int64)
