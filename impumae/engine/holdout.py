"""The final, single evaluation on the holdout split.

The chosen configuration, of whatever model family (:mod:`impumae.families`), is refitted
on every non-holdout patient with the anchor modality: impuTMAE from the MAE pretrained on every
non-holdout patient, for its fixed epoch (where the mean validation curve of its folds peaked):
the first ``fixed_epoch`` epochs of the same ``epochs``-long schedule the folds trained; a
scikit-survival family fits its model once. Every family is scored through its survival curves at
its grid (``survival(rows)``, ``grid``). The holdout is scored once under the paper's two conditions: patients with
every selected modality, and patients with at least the anchor (first) modality. Each metric
comes with a bootstrap 95% CI over holdout patients. Figures (Kaplan-Meier by predicted risk
tertile, training curves) are saved as PNG and logged to MLflow with a results table.

The single holdout (not nested CV's outer test splits, not a family scored beside the selected one)
also scores the report's classical baselines (CoxPH, CoxNet, RSF: :func:`score_baselines`) once,
with the search's seed, bootstrap size and transforms, and logs them (``baseline_results.json``),
so that the report reads them instead of refitting them.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from impumae import plots, storage
from impumae.data.cohort_view import REFIT, Population, load_cohort_arrays, population
from impumae.data.transforms import TransformOptions
from impumae.engine import audit
from impumae.engine.trial import fit_refit
from impumae.export.mlflow_model import export_refit
from impumae.families import family_name
from impumae.families.sksurv import fit_sksurv_fold
from impumae.modalities import parse_subset
from impumae.survival.baselines import BASELINES
from impumae.survival.metrics import bootstrap_ci, survival_curve, survival_risk

PREDICTIONS_FILE = "holdout_predictions.npz"  # anchor-condition survival at cuts, labels, training labels
HOLDOUT_CONDITIONS = {Population.ANCHOR.value: "at least the first modality present",
              Population.ALL_PRESENT.value: "every selected modality present"}
BASELINES_FILE = "baseline_results.json"  # the report's baseline rows, scored with the single holdout


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
    for condition in HOLDOUT_CONDITIONS:
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
    if not per_family and ctx.outer is None:
        try:
            log_baselines(ctx, config["subset"], n_boot, tracker, run)
        except Exception as error:  # the search's result stands; the report will score them itself
            echo(f"note: the report's baselines were not scored with the holdout ({type(error).__name__}: {error})")
    tracker.end_run(run)
    return {"config": config, "family": fitted.family, "refit_epochs": epochs, "conditions": results, "model": model}


def format_holdout(results: dict, config: dict) -> str:
    lines = [f"holdout evaluation (scored once) of {family_name(config)} on subset {config['subset']}:"]
    for condition, res in results.items():
        head = f"  {HOLDOUT_CONDITIONS[condition]:<40} n={res['n']:<4} events={res['events']:<4}"
        if "note" in res:
            lines.append(f"{head} {res['note']}")
            continue
        parts = [f"{k} {v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for k, v in res.items()
                 if isinstance(v, dict) and k in ("c_index", "ibs", "cs_score")]
        lines.append(head + "  " + "  ".join(parts))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the report's baselines
def score_baselines(cohort_url: str, subset_text: str, names=BASELINES, n_boot: int = 1000, seed: int = 0,
                    echo=print, transform_options: dict | None = None) -> dict[str, dict]:
    """``{baseline: {condition: {n, events, metric: {estimate, low, high}}}}`` on the holdout.

    Same protocol as the impuTMAE refit, through the families' one path
    (:func:`impumae.families.sksurv.fit_sksurv_fold` with ``fold=REFIT``): transforms fitted on every
    non-holdout patient (with the search's ``transform_options``), models fitted on the non-holdout
    patients with the anchor modality, curves read at the common grid of their training times
    (as every family is scored; the model's own risk for Harrell's C), holdout scored once per
    condition with a percentile bootstrap over holdout patients.
    """
    subset = parse_subset(subset_text)
    ca = load_cohort_arrays(cohort_url, subset)
    hold = ca.holdout_indices()
    rows_by_condition = {c: population(ca, subset, hold, c) for c in HOLDOUT_CONDITIONS}
    out = {}
    for name in names:
        fitted = fit_sksurv_fold(ca, subset, REFIT, name, seed=seed, transform_options=transform_options)
        out[name] = {}
        for condition, rows in rows_by_condition.items():
            entry = {"n": int(len(rows)), "events": int(ca.event[rows].sum())}
            if len(rows) < 2 or ca.event[rows].sum() == 0:
                out[name][condition] = {**entry, "note": "too few patients or no event"}
                continue
            ci = bootstrap_ci(fitted.survival(rows), fitted.grid, ca.time[rows], ca.event[rows], fitted.train_time,
                              fitted.train_event, n_boot=n_boot, seed=seed, risk=fitted.risk(rows))
            out[name][condition] = {**entry, **{k: {"estimate": v[0], "low": v[1], "high": v[2]} for k, v in ci.items()}}
        echo(format_baseline(name, subset_text, out[name]))
    return out


def format_baseline(name: str, subset_text: str, results: dict) -> str:
    """One baseline's CS-score under each condition, as the report prints it."""
    def cell(result: dict) -> str:
        if "cs_score" not in result:
            return "n/a"
        v = result["cs_score"]
        return f"{v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
    return f"  baseline {name} on {subset_text}: " + ", ".join(f"{c} {cell(results.get(c, {}))}" for c in HOLDOUT_CONDITIONS)


def baseline_settings(n_boot: int, seed: int, transform_options: dict | None, names=BASELINES) -> dict:
    """What the baseline scores depend on besides the cohort and the subset (how the report knows
    whether the logged ones are the ones it was asked for)."""
    return {"names": list(names), "n_boot": int(n_boot), "seed": int(seed),
            "transform_options": TransformOptions.from_dict(transform_options or {}).to_dict()}


def log_baselines(ctx, subset_text: str, n_boot: int, tracker, run) -> dict:
    """Score the report's baselines on the holdout (the search's seed, bootstrap size and transforms)
    and log them to the holdout run as ``baseline_results.json``: ``{settings..., baselines}``."""
    settings = baseline_settings(n_boot, ctx.seed, ctx.transforms)
    results = score_baselines(ctx.cohort_url, subset_text, BASELINES, n_boot=n_boot, seed=ctx.seed,
                              echo=lambda *_: None, transform_options=settings["transform_options"])
    record = {**settings, "baselines": results}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / BASELINES_FILE
        path.write_text(json.dumps(record, indent=1))
        tracker.log_artifact(run, path)
    return record
