"""The selection rules, on trial tables (validation numbers only)."""
import math

import pytest

from impumae.engine.selection import ranked_candidates


def row(trial, family, mean, std, done=3, failed=None):
    return {"trial_id": trial, "family": family, "config": {"subset": "rna", "family": family}, "folds_done": done,
            "fixed_epoch": 1, "mean_val_cs_score": mean, "std_val_cs_score": std, "failed": failed}


TABLE = [row("a", "rsf", 0.70, 0.05), row("b", "coxnet", 0.69, 0.01), row("c", "rsf", 0.66, 0.02),
         row("d", "impumae", 0.75, 0.02, done=2),                       # stopped early by ASHA
         row("e", "gbsa", math.nan, math.nan, done=0, failed="gbsa failed in fold 0: ValueError: x")]


def test_best_takes_the_highest_complete_configuration_and_orders_the_rest():
    ranked = ranked_candidates(TABLE, "best", n_folds=3)
    assert [r["trial_id"] for r in ranked] == ["a", "b", "c"]      # not the stopped one, never the failed one


def test_one_se_moves_to_the_steadier_family_within_one_standard_error():
    # impumae 0.75 ± 0.02 (stopped early, stands for its family) is the top; SE 0.02/sqrt(3) = 0.0115:
    # nothing else is within it, so impumae; without it rsf 0.70 ± 0.05: SE 0.029, coxnet 0.69 is within and steadier
    assert ranked_candidates(TABLE, "one_se", n_folds=3)[0]["trial_id"] == "d"
    assert ranked_candidates(TABLE[:3], "one_se", n_folds=3)[0]["trial_id"] == "b"


def test_family_ensemble_averages_each_family_s_representative():
    first, *rest = ranked_candidates(TABLE, "family_ensemble", n_folds=3)
    assert first["family"] == "ensemble" and first["chosen_by_rule"]
    assert [m["trial_id"] for m in first["config"]["members"]] == ["d", "a", "b"]   # by score; no failed gbsa
    assert [r["trial_id"] for r in rest] == ["a", "b", "c"]          # the fallbacks if a member fails its refit
    assert ranked_candidates(TABLE[:1], "family_ensemble", n_folds=3)[0]["trial_id"] == "a"   # one family: itself


def test_an_unknown_rule_is_named():
    with pytest.raises(ValueError, match="unknown selection rule 'worst'"):
        ranked_candidates(TABLE, "worst", n_folds=3)


def test_the_trial_table_flags_constant_predictions():
    from impumae.engine.search import _format_table

    flat = {**row("t1", "rsf", 0.6, 0.01), "mean_val_c_index": 0.5, "mean_val_c_index_peek": 0.5, "mean_val_ibs": 0.2,
            "error": None, "constant_folds": 2 / 3}
    assert "CONSTANT predictions in 67% of folds" in _format_table([flat], 3)
    assert "CONSTANT" not in _format_table([{**flat, "constant_folds": 0.0}], 3)
