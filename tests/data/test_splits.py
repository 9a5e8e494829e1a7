"""Holdout and cross-validation folds."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from impumae.data.splits import SplitError, make_splits

AUTHORS_TABLE = "../shared/data/tcga_gbmlgg_mtcp_cohort/updated_utf8.csv.gz"


def make_labels(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    project = rng.choice(["GBM", "LGG"], n, p=[0.6, 0.4])
    event = (rng.random(n) < np.where(project == "GBM", 0.8, 0.3)).astype(int)
    return pd.DataFrame({"time": rng.exponential(2, n), "event": event, "project": project},
                        index=[f"P{i:04d}" for i in range(n)])


def test_every_patient_in_exactly_one_place():
    labels = make_labels()
    splits = make_splits(labels, test_frac=0.2, n_folds=5, seed=0)
    assert list(splits.index) == list(labels.index)
    assert splits["holdout"].sum() == 80
    assert (splits.loc[splits["holdout"], "fold"] == -1).all()
    development = splits.loc[~splits["holdout"], "fold"]
    assert set(development) == set(range(5))
    assert development.value_counts().between(63, 65).all()  # 320 patients in 5 folds of 64
    assert splits.attrs == {"seed": 0, "k": 5, "test_frac": 0.2, "source": "holdout: stratified; folds: stratified"}


def test_stratified_by_event_and_project():
    labels = make_labels()
    splits = make_splits(labels, seed=3)
    overall = labels["event"].mean()
    holdout = splits["holdout"]
    assert abs(labels.loc[holdout, "event"].mean() - overall) < 0.02
    assert abs((labels.loc[holdout, "project"] == "GBM").mean() - (labels["project"] == "GBM").mean()) < 0.02
    for k in range(5):
        in_fold = splits["fold"] == k
        assert abs(labels.loc[in_fold, "event"].mean() - overall) < 0.03
        gbm = labels["project"] == "GBM"
        assert abs(labels.loc[in_fold & gbm, "event"].mean() - labels.loc[gbm, "event"].mean()) < 0.05


def test_deterministic_for_a_seed_and_different_for_another():
    labels = make_labels()
    first, again, other = make_splits(labels, seed=7), make_splits(labels, seed=7), make_splits(labels, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert (first["holdout"] != other["holdout"]).any()
    assert (first["fold"] != other["fold"]).any()


def test_user_group_and_fold_columns_are_honoured():
    labels = make_labels(60)
    labels["group"] = np.where(np.arange(60) % 4 == 0, "test", "train")
    labels["fold"] = np.where(labels["group"] == "test", np.nan, np.arange(60) % 3)
    splits = make_splits(labels, test_frac=0.5, n_folds=5, seed=1)
    assert (splits["holdout"] == (labels["group"] == "test")).all()
    assert (splits.loc[~splits["holdout"], "fold"] == labels.loc[~splits["holdout"], "fold"]).all()
    assert splits.attrs["k"] == 3 and splits.attrs["source"] == "holdout: user group; folds: user fold"


def test_user_group_only_gets_stratified_folds():
    labels = make_labels(100)
    labels["group"] = np.where(np.arange(100) < 30, "Test", "train")
    splits = make_splits(labels, n_folds=4)
    assert splits["holdout"].sum() == 30 and splits.loc[~splits["holdout"], "fold"].nunique() == 4


def test_no_holdout_and_tiny_strata():
    labels = make_labels(12)
    labels["project"] = ["A"] * 11 + ["B"]  # a one-patient project cannot be stratified: it is merged
    splits = make_splits(labels, test_frac=0.0, n_folds=3)
    assert not splits["holdout"].any() and sorted(splits["fold"].value_counts()) == [4, 4, 4]


@pytest.mark.parametrize("change, message", [
    ({"group": ["train"] * 9 + ["later"]}, r"patient 'P0009': column 'group' is 'later'; expected 'train' or 'test'"),
    ({"group": ["train"] * 9 + [None]}, r"patient 'P0009': column 'group' is empty"),
    ({"fold": [0, 1] * 4 + [1.5, 0]}, r"patient 'P0008': column 'fold' is 1.5; expected an integer"),
    ({"fold": [0, 1] * 4 + [np.nan, 0]}, r"patient 'P0008': column 'fold' is nan; every non-holdout patient needs"),
    ({"fold": [0, 2] * 5}, r"column 'fold' must number folds 0..K-1, got \[0, 2\]"),
])
def test_bad_user_columns(change, message):
    labels = make_labels(10).assign(**change)
    with pytest.raises(SplitError, match=message):
        make_splits(labels, test_frac=0.0)


def test_bad_arguments():
    with pytest.raises(SplitError, match="test_frac must be in"):
        make_splits(make_labels(10), test_frac=1.0)
    with pytest.raises(SplitError, match="n_folds must be at least 2"):
        make_splits(make_labels(10), n_folds=1)
    with pytest.raises(SplitError, match="cannot fill 5 folds"):
        make_splits(make_labels(4), test_frac=0.0, n_folds=5)


@pytest.mark.skipif(not os.path.exists(AUTHORS_TABLE), reason="shared data absent")
def test_authors_table_splits_are_reproduced():
    table = pd.read_csv(AUTHORS_TABLE).set_index("submitter_id").rename(columns={"splits": "fold", "project_id": "project"})
    splits = make_splits(table)
    assert splits["holdout"].sum() == 218
    assert splits.loc[~splits["holdout"], "fold"].value_counts().sort_index().tolist() == [178, 177, 177, 177, 177]
