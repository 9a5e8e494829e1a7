"""External validation of the selected model on a labelled cohort.

The same metrics as the holdout (:func:`impumae.survival.metrics.bootstrap_ci`: Antolini and Harrell
C-index, IBS, CS-score, each with a percentile bootstrap 95% CI over the cohort's patients; the IBS's
censoring weights come from the model's training labels), over the patients with the anchor
modality (the holdout's first condition) and over every patient; Kaplan-Meier curves by risk group
cut at the **training** risk tertiles; a calibration plot (predicted survival against Kaplan-Meier
at the median training time, by groups of predicted survival). Logged as an MLflow run
(``kind=external_validation``) in the experiment of the run that produced the model, tagged with the
model's URI, registered name and version and LoggedModel id, its metrics linked to that LoggedModel;
the model version gets a tag naming the run.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from impumae import plots
from impumae.export.predict import Prediction
from impumae.survival.metrics import bootstrap_ci

EXTERNAL_CONDITIONS = {"anchor": "at least the first modality present", "all": "every patient"}


def external_metrics(model, prediction: Prediction, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{condition: {n, events, metric: {estimate, low, high}}}`` (a note instead when too few events)."""
    view = prediction.aligned.view
    if not prediction.aligned.has_labels:
        raise ValueError("external validation needs a cohort with labels (time, event)")
    rows_by = {"anchor": np.flatnonzero(view.present[model.subset[0]]), "all": np.arange(len(view.ids))}
    results = {}
    for condition, rows in rows_by.items():
        events = int(view.event[rows].sum())
        if len(rows) < 2 or events == 0:
            results[condition] = {"n": int(len(rows)), "events": events, "note": "too few patients or no event"}
            continue
        ci = bootstrap_ci(prediction.surv[rows], model.grid, view.time[rows], view.event[rows], model.train_time,
                          model.train_event, n_boot=n_boot, seed=seed)
        results[condition] = {"n": int(len(rows)), "events": events,
                              **{k: {"estimate": v[0], "low": v[1], "high": v[2]} for k, v in ci.items()}}
    return results


def validation_figures(model, prediction: Prediction, out_dir: Path, title: str) -> dict:
    """KM by the training risk cut-points and the calibration plot, written under ``out_dir``."""
    view = prediction.aligned.view
    km = plots.km_by_risk_group(view.time, view.event, prediction.risk, out_dir / "km_external_by_training_risk_tertile.png",
                                title=f"{title}: Kaplan-Meier by risk group (training cut-points)",
                                cuts=model.risk_cuts)
    points = plots.calibration_plot({title: {"survival": prediction.surv, "cuts": model.grid, "time": view.time,
                                       "event": view.event, "train_time": model.train_time}},
                              out_dir / "calibration_external.png", title=f"{title}: calibration")
    return {"km": km, "calibration": out_dir / "calibration_external.png", "calibration_points": points}


def format_results(results: dict) -> str:
    lines = []
    for condition, res in results.items():
        head = f"  {EXTERNAL_CONDITIONS[condition]:<38} n={res['n']:<5} events={res['events']:<5}"
        if "note" in res:
            lines.append(f"{head} {res['note']}")
            continue
        lines.append(head + "  " + "  ".join(f"{k} {res[k]['estimate']:.3f} [{res[k]['low']:.3f}, {res[k]['high']:.3f}]"
                                             for k in ("c_index", "c_index_harrell", "ibs", "cs_score")))
    return "\n".join(lines)


def log_external_validation(client: MlflowClient, model, reference: dict, prediction: Prediction, results: dict,
                            cohort_url: str, n_boot: int, seed: int, experiment_id: str | None = None) -> str:
    """An MLflow run with the metrics, figures and results; returns its id. ``reference``:
    ``model_uri`` and, when known, ``registered_name``, ``version``, ``model_id``, ``source_run_id``."""
    if experiment_id is None:
        source_run = reference.get("source_run_id")
        experiment_id = client.get_run(source_run).info.experiment_id if source_run else "0"
    tags = {"kind": "external_validation", "cohort": cohort_url, "family": model.family,
            "subset": ",".join(model.subset), **{f"model_{k}": str(v) for k, v in reference.items() if v}}
    run = client.create_run(experiment_id, run_name=f"external-validation-{Path(cohort_url).name}", tags=tags)
    run_id = run.info.run_id
    client.log_param(run_id, "n_boot", n_boot)
    client.log_param(run_id, "seed", seed)
    now, model_id = int(time.time() * 1000), reference.get("model_id") or None
    metrics = []
    for condition, res in results.items():
        metrics += [Metric(f"external_{condition}_n", res["n"], now, 0, model_id=model_id),
                    Metric(f"external_{condition}_events", res["events"], now, 0, model_id=model_id)]
        for name, value in res.items():
            if isinstance(value, dict):
                metrics += [Metric(f"external_{condition}_{name}", value["estimate"], now, 0, model_id=model_id),
                            Metric(f"external_{condition}_{name}_ci_low", value["low"], now, 0, model_id=model_id),
                            Metric(f"external_{condition}_{name}_ci_high", value["high"], now, 0, model_id=model_id)]
    client.log_batch(run_id, metrics=[m for m in metrics if np.isfinite(m.value)])
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        figures = validation_figures(model, prediction, d, title=Path(cohort_url).name or "external cohort")
        (d / "external_validation.json").write_text(json.dumps({"results": results, "calibration": figures["calibration_points"],
                                                                "risk_cuts": model.risk_cuts.tolist(), **reference},
                                                               indent=1, default=str))
        (d / "external_validation.md").write_text(format_results(results) + "\n")
        client.log_artifacts(run_id, str(d))
    client.set_terminated(run_id)
    if reference.get("registered_name") and reference.get("version"):
        client.set_model_version_tag(reference["registered_name"], str(reference["version"]),
                                     f"external_validation.{run_id}", cohort_url)
    return run_id
