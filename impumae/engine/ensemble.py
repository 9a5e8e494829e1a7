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
"fixed_epoch"}, ...]}`` is a configuration of the ``ensemble`` family (:mod:`impumae.families.ensemble`),
fitted like any other (the refit: every member refitted on every non-holdout patient with the anchor).
"""
from __future__ import annotations

from impumae import families as model_families
from impumae.engine.curves import summarise_folds, validation_curve
from impumae.families.ensemble import NAME as ENSEMBLE, EnsembleFit


def ensemble_config(complete: list[dict], k: int) -> dict | None:
    """The configuration of the top-``k`` ``complete`` trial rows (by mean validation CS-score) that
    share the best one's subset; None when fewer than two qualify."""
    ranked = sorted(complete, key=lambda r: -r["mean_val_cs_score"])
    subset = ranked[0]["config"]["subset"]
    members = [r for r in ranked if r["config"]["subset"] == subset][:k]
    if len(members) < 2:
        return None
    return {model_families.PARAM: ENSEMBLE, "subset": subset,
            "members": [{"trial_id": r["trial_id"], "config": r["config"], "fixed_epoch": int(r["fixed_epoch"])}
                        for r in members]}


def ensemble_row(config: dict, fold_fits: list[EnsembleFit]) -> dict:
    """The ensemble as a row of the search's trial table (the keys selection and the table read)."""
    summary = summarise_folds([validation_curve(f.history) for f in fold_fits])
    return {"trial_id": "ensemble", model_families.PARAM: ENSEMBLE, "config": config, "folds_done": len(fold_fits),
            "fixed_epoch": summary["fixed_epoch"], "error": None,
            **{key: summary[key] for key in ("mean_val_cs_score", "std_val_cs_score", "mean_val_c_index",
                                             "mean_val_ibs", "mean_val_c_index_peek")}}
