"""How the search picks its model from the trials: the selection rule, validation folds only.

Every rule reads the trial table alone (each configuration's mean and SD over the validation
folds of its CS-score, read at held-out epochs: :mod:`impumae.engine.curves`) and returns the
candidates in the order they are refitted: the first, or the next when a model fails on the refit
(:func:`impumae.engine.search._run_search`).

=================  ==============================================================================
``best``           the configuration with the highest mean validation CS-score
``one_se``         the one-standard-error rule across families: among the families whose best
                   configuration is within one standard error (SD over folds / sqrt(K)) of the
                   best configuration, the one whose best configuration varies least over folds
``family_ensemble``  the survival curves of the best configuration of each of the top families
                   (by their best mean validation CS-score; ``ensemble_families``, default every
                   family) averaged: one model, refitted member by member (:mod:`impumae.engine.ensemble`)
=================  ==============================================================================

Why a rule other than ``best`` at all: with ~120 deaths per training set the validation folds rank
families that differ by 0.01-0.03 in C-index almost at random (GBM/LGG: five outer folds of nested
CV chose four different families), and the family that wins on validation is the one whose score
happened to be high on those folds. Nested CV compares the rules on the outer test patients
(:func:`impumae.engine.nested.rule_comparison`); docs/results-gbmlgg.md has the numbers that chose
the default (``DEFAULT_RULE``).
"""
from __future__ import annotations

import math

import numpy as np

from impumae import families as model_families
from impumae.families.ensemble import NAME as ENSEMBLE

RULES = ("best", "one_se", "family_ensemble")
DEFAULT_RULE = "family_ensemble"


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose from {RULES}")
    return rule


def best_per_family(rows: list[dict]) -> dict[str, dict]:
    """Each family's best row of ``rows`` (highest mean validation CS-score), families in the order
    first seen; ensembles are not a family here."""
    best: dict[str, dict] = {}
    for row in rows:
        family = row["family"]
        if not model_families.get(family).searchable:
            continue
        if family not in best or row["mean_val_cs_score"] > best[family]["mean_val_cs_score"]:
            best[family] = row
    return best


def family_representatives(table: list[dict], n_folds: int) -> dict[str, dict]:
    """The configuration that stands for each searched family: its best trial that finished every
    validation fold; for a family whose every trial ASHA stopped early, its best stopped trial by
    the mean over the folds it ran (a row with ``folds_done`` < ``n_folds``, said so wherever it is
    reported). Failed trials (NaN scores) never stand for a family. Nested CV scores these beside
    the selected configuration; ``one_se`` and ``family_ensemble`` choose among them."""
    scored = [r for r in table if model_families.get(r["family"]).searchable and r["folds_done"] >= 1
              and np.isfinite(r["mean_val_cs_score"]) and not r.get("failed")]
    complete = best_per_family([r for r in scored if r["folds_done"] == n_folds])
    stopped = best_per_family([r for r in scored if r["family"] not in complete])
    return {**complete, **stopped}


def by_score(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: -r["mean_val_cs_score"])


def one_se_family(family_rows: dict[str, dict], n_folds: int) -> str:
    """The family the one-standard-error rule picks from each family's best row."""
    ranked = by_score(list(family_rows.values()))
    top = ranked[0]
    threshold = top["mean_val_cs_score"] - top["std_val_cs_score"] / math.sqrt(max(n_folds, 1))
    eligible = [r for r in ranked if r["mean_val_cs_score"] >= threshold]
    return min(eligible, key=lambda r: (r["std_val_cs_score"], -r["mean_val_cs_score"]))["family"]


def family_ensemble_config(family_rows: dict[str, dict], k: int | None = None) -> dict | None:
    """The ensemble of the best configuration of each of the top-``k`` families (None: all) that
    share the top family's subset; None when fewer than two families qualify."""
    ranked = by_score(list(family_rows.values()))
    subset = ranked[0]["config"]["subset"]
    members = [r for r in ranked if r["config"]["subset"] == subset][: (k or len(ranked))]
    if len(members) < 2:
        return None
    return {model_families.PARAM: ENSEMBLE, "subset": subset,
            "members": [{"trial_id": r["trial_id"], "config": r["config"], "fixed_epoch": int(r["fixed_epoch"])}
                        for r in members]}


def ensemble_row(config: dict) -> dict:
    """A trial-table row for an ensemble chosen by the rule (not scored on the validation folds:
    its validation numbers are NaN; ``--ensemble-top-k`` scores a top-k ensemble on them)."""
    nan = float("nan")
    return {"trial_id": "family-ensemble", "family": ENSEMBLE, "config": config, "folds_done": 0,
            "fixed_epoch": 1, "mean_val_cs_score": nan, "std_val_cs_score": nan, "mean_val_c_index": nan,
            "mean_val_ibs": nan, "mean_val_c_index_peek": nan, "error": None, "failed": None,
            "chosen_by_rule": True}


def ranked_candidates(table: list[dict], rule: str, n_folds: int, ensemble_families: int | None = None) -> list[dict]:
    """The candidates in refit order under ``rule``, from the search's trial ``table``: the rule's
    choice first, then every complete configuration (and validated ensemble) by mean validation
    CS-score. ``best`` takes complete trials only; ``one_se`` and ``family_ensemble`` choose among
    the :func:`family_representatives` (a family ASHA cut short stands in by its best stopped trial,
    as in nested CV's per-family rows)."""
    check_rule(rule)
    complete = [r for r in table if model_families.get(r["family"]).searchable and r["folds_done"] == n_folds
                and np.isfinite(r["mean_val_cs_score"]) and not r.get("failed")]
    ensembles = [r for r in table if not model_families.get(r["family"]).searchable and np.isfinite(r["mean_val_cs_score"])]
    scored = by_score([*complete, *ensembles])
    if not scored:
        raise ValueError("no complete configuration to select from")
    first = scored[0]
    families = family_representatives(table, n_folds)
    if rule == "one_se" and len(families) > 1:
        first = families[one_se_family(families, n_folds)]
    elif rule == "family_ensemble" and len(families) > 1:
        config = family_ensemble_config(families, ensemble_families)
        if config is not None:
            first = ensemble_row(config)
    return [first, *[r for r in scored if r is not first]]


def describe(row: dict, rule: str, n_folds: int) -> str:
    """The console's line for the selected candidate."""
    if row.get("chosen_by_rule"):
        members = ", ".join(f"{model_families.family_of(m['config']).label} ({m['trial_id']})"
                            for m in row["config"]["members"])
        return f"selected by the rule {rule!r} (validation folds only): the average of {members}"
    return (f"selected by the rule {rule!r} (validation folds only): family {row['family']}, {row['config']}  "
            f"CS-score {row['mean_val_cs_score']:.3f} ± {row['std_val_cs_score']:.3f} over {n_folds} folds, "
            f"each read at the epoch the other folds chose; refit for {row['fixed_epoch']} epoch(s) "
            f"(C-index {row['mean_val_c_index']:.3f}; {row['mean_val_c_index_peek']:.3f} with each fold's own best "
            f"epoch, the optimistic peek)")
