"""An ensemble of the search's best configurations, chosen and scored on the validation folds only.

With ``--ensemble-top-k K`` (``SearchOptions.ensemble_top_k``), after the trials the K complete
trials with the highest mean validation CS-score that share the best trial's modality subset (an
average of survival curves needs the same patients and the same grid) form one more candidate: its
survival curve is the mean of its members' curves. Its validation score is computed like a
trial's: on each fold every member is refitted as its trial fitted it (impuTMAE for its fixed
epoch, ``stop_after``: the model its trial scored at that epoch; a scikit-survival family once, with
the trial's seed), the members' survival curves of the fold's validation patients are averaged and
scored with :func:`impumae.survival.metrics.evaluate`; mean and SD over folds. The ensemble is
selected when its mean validation CS-score beats the best single configuration's. It is one more
candidate chosen on the same folds as the others (its members were ranked on them too), and, like
every candidate, it never sees the holdout before the final score.

A configuration ``{"family": "ensemble", "subset": ..., "members": [{"trial_id", "config",
"fixed_epoch"}, ...]}`` is fitted by :func:`impumae.engine.trial.fit_search_fold` like any other
(the refit: every member refitted on every non-holdout patient with the anchor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from impumae.engine.curves import summarise_folds
from impumae.engine.families import ENSEMBLE, FAMILY_PARAM
from impumae.engine.fold import FittedFold
from impumae.survival.metrics import evaluate


@dataclass
class EnsembleFit(FittedFold):
    """The members' fits of one fold (the same rows and grid); its survival is their mean."""
    members: list
    history: list[dict]
    family = ENSEMBLE

    @property
    def cohort(self):
        return self.members[0].cohort

    @property
    def subset(self):
        return self.members[0].subset

    @property
    def fold(self) -> int:
        return self.members[0].fold

    @property
    def transforms(self):
        return self.members[0].transforms

    @property
    def train_rows(self) -> np.ndarray:
        return self.members[0].train_rows

    @property
    def val_rows(self) -> np.ndarray:
        return self.members[0].val_rows

    @property
    def grid(self) -> np.ndarray:
        return self.members[0].grid

    def survival(self, rows: np.ndarray) -> np.ndarray:
        """The mean of the members' survival curves at :attr:`grid`."""
        return np.mean([m.survival(rows) for m in self.members], axis=0)


def ensemble_config(complete: list[dict], k: int) -> dict | None:
    """The configuration of the top-``k`` ``complete`` trial rows (by mean validation CS-score) that
    share the best one's subset; None when fewer than two qualify."""
    ranked = sorted(complete, key=lambda r: -r["mean_val_cs_score"])
    subset = ranked[0]["config"]["subset"]
    members = [r for r in ranked if r["config"]["subset"] == subset][:k]
    if len(members) < 2:
        return None
    return {FAMILY_PARAM: ENSEMBLE, "subset": subset,
            "members": [{"trial_id": r["trial_id"], "config": r["config"], "fixed_epoch": int(r["fixed_epoch"])}
                        for r in members]}


def fit_ensemble_fold(config: dict, fold: int, fit_member: Callable[[dict, int, int], FittedFold]) -> EnsembleFit:
    """Every member of ensemble ``config`` fitted on ``fold`` by ``fit_member(member_config, fold,
    fixed_epoch)``, and the validation metrics of their mean survival (one row, epoch 1)."""
    members = [fit_member(m["config"], fold, int(m["fixed_epoch"])) for m in config["members"]]
    first = members[0]
    for m in members[1:]:
        if not (np.array_equal(m.train_rows, first.train_rows) and np.array_equal(m.val_rows, first.val_rows)
                and np.allclose(m.grid, first.grid)):
            raise ValueError(f"ensemble members {[x['trial_id'] for x in config['members']]} were not fitted on the "
                             f"same patients and grid on fold {fold}; an ensemble needs one subset and one n_bins")
    fit = EnsembleFit(members=members, history=[])
    row = {"epoch": 1}
    if len(fit.val_rows):
        ca, rows = fit.cohort, fit.val_rows
        metrics = evaluate(fit.survival(rows), fit.grid, ca.time[rows], ca.event[rows], fit.train_time, fit.train_event)
        row.update({f"val_{k}": v for k, v in metrics.items()})
    fit.history = [row]
    return fit


def ensemble_row(config: dict, fold_fits: list[EnsembleFit]) -> dict:
    """The ensemble as a row of the search's trial table (the keys selection and the table read)."""
    summary = summarise_folds([f.curve for f in fold_fits])
    return {"trial_id": "ensemble", FAMILY_PARAM: ENSEMBLE, "config": config, "folds_done": len(fold_fits),
            "fixed_epoch": summary["fixed_epoch"], "error": None,
            **{key: summary[key] for key in ("mean_val_cs_score", "std_val_cs_score", "mean_val_c_index",
                                             "mean_val_ibs", "mean_val_c_index_peek")}}
