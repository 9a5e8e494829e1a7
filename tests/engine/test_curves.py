"""The fixed epoch of a configuration comes from its mean validation curve over folds, never from a
fold's own best epoch (which only feeds the reported optimistic 'peek')."""
import re
from pathlib import Path

import numpy as np
import pytest

from impumae.engine.curves import FOLD_METRICS, fixed_epoch, mean_curve, summarise_folds, validation_curve

ROOT = Path(__file__).resolve().parents[2]

# Three folds whose own best CS epochs are 1, 4 and 2; the mean CS curve peaks at epoch 3.
CS = [[0.80, 0.60, 0.70, 0.50],
      [0.50, 0.60, 0.75, 0.90],
      [0.60, 0.85, 0.80, 0.55]]
C_INDEX = [[0.70, 0.71, 0.72, 0.73],
           [0.60, 0.62, 0.64, 0.66],
           [0.65, 0.66, 0.67, 0.90]]


def history(fold: int) -> list[dict]:
    return [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_cs_score": CS[fold][e], "val_c_index": C_INDEX[fold][e],
             "val_c_index_harrell": C_INDEX[fold][e] + 0.01, "val_ibs": 0.2} for e in range(4)]


def test_the_fixed_epoch_is_the_argmax_of_the_mean_curve_not_of_any_fold():
    curves = [validation_curve(history(f)) for f in range(3)]
    own_best = [int(np.argmax(c["val_cs_score"])) + 1 for c in curves]
    assert own_best == [1, 4, 2]
    np.testing.assert_allclose(mean_curve(curves)["val_cs_score"], np.mean(CS, axis=0))
    assert fixed_epoch(mean_curve(curves)) == 3 and 3 not in own_best

    s = summarise_folds(curves)
    assert s["fixed_epoch"] == 3
    assert s["held_out_epochs"] == [3, 3, 3]          # every pair of the other folds also peaks at 3
    assert s["mean_val_cs_score_shared_epoch"] == s["mean_val_cs_score"]
    assert s["mean_val_cs_score"] == pytest.approx(np.mean([0.70, 0.75, 0.80]))
    assert s["std_val_cs_score"] == pytest.approx(np.std([0.70, 0.75, 0.80]))
    assert s["mean_val_c_index"] == pytest.approx(np.mean([0.72, 0.64, 0.67]))
    # the peek: each fold at its own best CS epoch (1, 4, 2), what the per-fold choice used to report
    assert s["mean_val_cs_score_peek"] == pytest.approx(np.mean([0.80, 0.90, 0.85]))
    assert s["mean_val_c_index_peek"] == pytest.approx(np.mean([0.70, 0.66, 0.66]))
    assert s["mean_val_cs_score_peek"] > s["mean_val_cs_score"]
    assert s["fold_mean_curve"]["val_cs_score"] == pytest.approx(list(np.mean(CS, axis=0)))


def test_each_fold_is_scored_at_the_epoch_the_other_folds_choose():
    """The epoch is fitted on validation folds: read at the epoch of the same folds' mean curve an
    epoch-wise configuration looks better than it is. Fold j is read at the epoch of the other
    folds' mean curve (leave-one-fold-out), as a one-shot family's score is never tuned on it."""
    two = [validation_curve([{"epoch": e + 1, "val_cs_score": v} for e, v in enumerate(cs)])
           for cs in ([0.9, 0.5], [0.5, 0.8])]
    s = summarise_folds(two)
    assert s["fixed_epoch"] == 1                                  # the refit's epoch: the mean curve's
    assert s["held_out_epochs"] == [2, 1]                         # fold 0 by fold 1's curve and back
    assert s["mean_val_cs_score"] == pytest.approx(0.5)           # 0.5 at epoch 2, 0.5 at epoch 1
    assert s["mean_val_cs_score_shared_epoch"] == pytest.approx(0.7)   # the optimistic read
    assert s["mean_val_cs_score_peek"] == pytest.approx(0.85)
    one_shot = [validation_curve([{"epoch": 1, "val_cs_score": v}]) for v in (0.6, 0.7, 0.8)]
    s = summarise_folds(one_shot)                                 # a scikit-survival family: nothing to tune
    assert s["held_out_epochs"] == [1, 1, 1]
    assert s["mean_val_cs_score"] == s["mean_val_cs_score_shared_epoch"] == s["mean_val_cs_score_peek"]


def test_the_trial_reports_the_fixed_epoch_summary_and_asha_reads_the_mean_there():
    from impumae.engine.trial import summarise
    folds = [{"fold": f, "n_train": 10, "n_val": 5, "fold_history": history(f)} for f in range(3)]
    out = summarise(folds, n_folds=5)
    assert (out["folds_done"], out["n_folds"], out["fold"], out["fixed_epoch"]) == (3, 5, 2, 3)
    assert out["running_mean_val_cs_score"] == out["mean_val_cs_score"] == pytest.approx(0.75)
    assert {f"{k}_{m}" for k in ("mean", "std") for m in FOLD_METRICS} <= set(out)
    # after the first fold alone its curve peaks elsewhere: the epoch follows the folds done so far
    assert summarise(folds[:1], n_folds=5)["fixed_epoch"] == 1


def test_ties_go_to_the_earliest_epoch_and_a_curve_without_scores_to_its_last():
    assert fixed_epoch({"val_cs_score": np.array([0.5, 0.7, 0.7, 0.6])}) == 2
    assert fixed_epoch({"val_cs_score": np.array([np.nan, 0.6, np.nan])}) == 2
    assert fixed_epoch(validation_curve([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}])) == 2


def test_folds_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="different lengths"):
        mean_curve([validation_curve(history(0)), validation_curve(history(1)[:3])])


def test_no_code_reads_a_per_fold_best_epoch():
    pattern = re.compile(r"best_epoch|best_metrics|best_state|mean_best")
    hits = [f"{path.relative_to(ROOT)}:{i}" for path in [*(ROOT / "impumae").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]
            for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
