"""The final, single evaluation on the holdout split.

The chosen configuration, of whatever model family (:mod:`impumae.engine.families`), is refitted
on every non-holdout patient with the anchor modality: impuTMAE from the MAE pretrained on every
non-holdout patient, for its fixed epoch (where the mean validation curve of its folds peaked):
the first ``fixed_epoch`` epochs of the same ``epochs``-long schedule the folds trained; a
scikit-survival family fits its model once. Every family is scored through its survival curves at
its grid (``survival(rows)``, ``grid``). The holdout is scored once under the paper's two conditions: patients with
every selected modality, and patients with at least the anchor (first) modality. Each metric
comes with a bootstrap 95% CI over holdout patients. Figures (Kaplan-Meier by predicted risk
tertile, training curves) are saved as PNG and logged to MLflow with a results table.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from impumae import storage
from impumae.engine import audit
from impumae.engine.cohort_view import Population, population
from impumae.engine.families import family_of
from impumae.engine.trial import fit_refit
from impumae.evaluation import plots
from impumae.export.mlflow_model import export_refit
from impumae.survival.metrics import bootstrap_ci, survival_curve, survival_risk

PREDICTIONS_FILE = "holdout_predictions.npz"  # anchor-condition survival at cuts, labels, training labels
CONDITIONS = {Population.ANCHOR.value: "at least the first modality present",
              Population.ALL_PRESENT.value: "every selected modality present"}


def saved_survival(predictions: dict) -> np.ndarray:
    """The survival curves [N, len(cuts)] of a saved ``holdout_predictions.npz`` (older files hold
    impuTMAE's hazard logits instead)."""
    return predictions["survival"] if "survival" in predictions else survival_curve(predictions["logits"])


def family_file(name: str, family: str | None) -> str:
    """``name`` of the selected model's scoring, or of ``family``'s best configuration scored beside
    it (``holdout_predictions.npz`` -> ``holdout_predictions-<family>.npz``)."""
    if family is None:
        return name
    stem, dot, ext = name.partition(".")
    return f"{stem}-{family}{dot}{ext}"


def score_holdout(ctx, best: dict, tracker, search_name: str, base_tags: dict, n_boot: int, echo,
                  register: str | None = None, per_family: bool = False, resources: dict | None = None) -> dict:
    """Refit ``best`` (a row of the search's trial table: ``config``, ``family`` and ``fixed_epoch``)
    and score the holdout once. The refit is logged as the holdout run's MLflow model and, with
    ``register``, registered under that name (:func:`impumae.export.mlflow_model.export_refit`).

    ``per_family``: ``best`` is not the selected configuration but the best of its family, scored
    beside the selected one (nested CV reports every family): its audit stages are
    ``refit-finetune-<family>`` and ``holdout-<family>``, its files in the search directory
    ``<name>-<family>.<ext>`` (:func:`family_file`), its MLflow run (kind ``holdout-family``) gets
    no model: it is neither exported nor registered. ``resources`` (a trial's): the refit runs in a
    Ray task with them (:func:`impumae.engine.trial.fit_refit`); scoring stays here."""
    config = dict(best["config"])
    epochs = int(best["fixed_epoch"])
    fitted = fit_refit(ctx, config, epochs, resources)
    suffix = fitted.family if per_family else None
    audit.record(ctx.search_dir, family_file("refit-finetune", suffix), train=fitted.train_ids)
    ca, subset = fitted.cohort, fitted.subset

    hold = ca.holdout_indices()
    results, rows_by_condition, surv_by_condition = {}, {}, {}
    for condition in CONDITIONS:
        rows = population(ca, subset, hold, condition)
        rows_by_condition[condition] = rows
        if len(rows) < 2 or ca.event[rows].sum() == 0:
            results[condition] = {"n": int(len(rows)), "events": int(ca.event[rows].sum()), "note": "too few patients or no event"}
            continue
        surv = fitted.survival(rows)
        surv_by_condition[condition] = surv
        ci = bootstrap_ci(surv, fitted.grid, ca.time[rows], ca.event[rows], fitted.train_time, fitted.train_event,
                          n_boot=n_boot, seed=ctx.seed, from_logits=False)
        results[condition] = {"n": int(len(rows)), "events": int(ca.event[rows].sum()),
                              **{k: {"estimate": v[0], "low": v[1], "high": v[2]} for k, v in ci.items()}}
    stage = family_file("holdout", suffix)
    audit.record(ctx.search_dir, stage, **{c: ca.ids[r] for c, r in rows_by_condition.items()})
    echo(format_holdout(results, config))

    run = tracker.start_run(stage, {**base_tags, "kind": "holdout-family" if per_family else "holdout",
                                    "subset": config["subset"], "family": fitted.family},
                            params={**{k: v for k, v in config.items() if not k.startswith("_")},
                                    "family": fitted.family, "refit_epochs": epochs, "n_boot": n_boot})
    for condition, res in results.items():
        tracker.log_metrics(run, {f"holdout_{condition}_{k}": v["estimate"] for k, v in res.items() if isinstance(v, dict)}
                            | {f"holdout_{condition}_{k}_ci_low": v["low"] for k, v in res.items() if isinstance(v, dict)}
                            | {f"holdout_{condition}_{k}_ci_high": v["high"] for k, v in res.items() if isinstance(v, dict)})
    tracker.log_history(run, fitted.history)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "holdout_results.json").write_text(json.dumps(results, indent=1))
        (d / "holdout_results.md").write_text(format_holdout(results, config) + "\n")
        if "anchor" in surv_by_condition:
            rows = rows_by_condition["anchor"]
            plots.km_by_risk_group(ca.time[rows], ca.event[rows], survival_risk(surv_by_condition["anchor"], fitted.grid),
                                   d / "km_holdout_by_risk_tertile.png",
                                   title=f"Holdout ({config['subset']}): Kaplan-Meier by predicted risk tertile")
        plots.training_curves({"refit fine-tuning": fitted.history}, d / "refit_training_curve.png")
        if "anchor" in surv_by_condition:  # what the report needs to redraw KM and calibration plots
            rows = rows_by_condition["anchor"]
            np.savez(d / PREDICTIONS_FILE, patient_id=ca.ids[rows], survival=surv_by_condition["anchor"],
                     cuts=fitted.grid, time=ca.time[rows], event=ca.event[rows],
                     all_present=np.isin(rows, rows_by_condition["all_present"]),
                     train_time=fitted.train_time, train_event=fitted.train_event)
        for path in sorted(d.iterdir()):
            tracker.log_artifact(run, path)
        for path in sorted([*d.glob("*.png"), *d.glob("*.npz")]):
            storage.write_bytes(storage.join(ctx.search_dir, family_file(path.name, suffix)), path.read_bytes())
    model = None
    if not per_family:
        model = export_refit(fitted, tracker.client, run, register,
                             info={"search": search_name, "config": config, "refit_epochs": epochs})
    tracker.end_run(run)
    return {"config": config, "family": fitted.family, "refit_epochs": epochs, "conditions": results, "model": model}


def format_holdout(results: dict, config: dict) -> str:
    lines = [f"holdout evaluation (scored once) of {family_of(config)} on subset {config['subset']}:"]
    for condition, res in results.items():
        head = f"  {CONDITIONS[condition]:<40} n={res['n']:<4} events={res['events']:<4}"
        if "note" in res:
            lines.append(f"{head} {res['note']}")
            continue
        parts = [f"{k} {v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for k, v in res.items()
                 if isinstance(v, dict) and k in ("c_index", "ibs", "cs_score")]
        lines.append(head + "  " + "  ".join(parts))
    return "\n".join(lines)
