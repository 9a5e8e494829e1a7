"""The report of one MLflow experiment: tables and figures from what the searches recorded.

Inputs, all written by `impumae.engine.search.run_search` (one search per modality subset, any
number of searches in one experiment):

- MLflow runs of the experiment, found by tag: ``kind=holdout`` (the single holdout evaluation of a
  search, with its artifacts ``holdout_results.json`` and ``holdout_predictions.npz``),
  ``kind=trial`` (validation-fold means of each configuration), ``kind=pretrain`` (the
  ``pretrain_key`` of each pretrained MAE);
- the pretrained MAE checkpoints under ``<storage>/pretrain/<key>/mae.pt`` (imputation quality);
- the classical baselines each holdout run scored (``baseline_results.json``, by
  :func:`impumae.engine.holdout.log_baselines`); only a subset without a search, other bootstrap or
  seed settings, or a run from before the holdout scored them is scored here, by the same function,
  on the cohort store named by the runs' ``cohort`` tag.

Sections (Markdown + PNG, also logged to MLflow as a run with ``kind=report``):

1. Table 1 (the paper's layout): rows = modality subsets, columns = C-index, CS-score and CS-score
   on holdout patients with every selected modality (CS-score*), each with its bootstrap 95% CI;
   impuTMAE beside CoxPH, CoxNet and RSF fitted on the same refit training patients (non-holdout
   patients with the anchor modality) and scored on the same holdout patients with the same
   metrics, their curves read at the common grid as every model family's
   (`impumae.families.sksurv.fit_sksurv_fold`). The searched row is labelled by the family the
   search selected. Baseline features: the subset's modalities after the same fold-fitted transforms
   (tabular: the transformed features; clinical: z-scored age and 0/1 treatments; MRI volume: mean
   and standard deviation of the voxels; WSI: per-channel mean intensity over the tiles); a missing
   modality is NaN, mean-imputed inside each baseline on its training patients. A subset with no
   tokenised modality (``clinical`` alone) cannot run the MAE: it gets baseline rows only.
2. Table 3: the pretraining ablation, from searches whose trials set ``pretrained``.
3. Imputation quality of the refit MAE per modality (`impumae.evaluation.imputation_quality`).
4. Kaplan-Meier curves of the holdout by predicted risk tertile; calibration at a fixed horizon.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from impumae import plots, storage as storage_io
from impumae.data.cohort_view import load_cohort_arrays, split_subset
from impumae import families as model_families
from impumae.families import PARAM as FAMILY_PARAM
from impumae.engine.holdout import (BASELINES_FILE, HOLDOUT_CONDITIONS, PREDICTIONS_FILE, baseline_settings,
                                    format_baseline, saved_survival, score_baselines)
from impumae.engine.nested import NESTED_SUMMARY
from impumae.engine.pretrain_jobs import PretrainJob, checkpoint_url
from impumae.engine.tracking import Tracker, resolve_uri
from impumae.evaluation.imputation_quality import imputation_quality
from impumae.train import checkpoint
from impumae.modalities import parse_subset
from impumae.survival.baselines import BASELINES
from impumae.survival.metrics import survival_risk

TABLE_METRICS = (("c_index", "anchor"), ("cs_score", "anchor"), ("cs_score", "all_present"))
TABLE_HEADERS = ("C-index", "CS-score", "CS-score*")
MAE_LABEL = model_families.label(model_families.DEFAULT)   # "impuTMAE": the pretraining ablation, runs before families


@dataclass
class HoldoutRecord:
    """One search's holdout evaluation, as MLflow recorded it."""
    run_id: str
    search: str
    subset: str
    cohort: str
    pretrained: bool
    params: dict
    start_time: int
    results: dict                         # holdout_results.json: {condition: {n, events, metric: {estimate, low, high}}}
    predictions: dict | None = None       # holdout_predictions.npz contents (anchor condition)
    transforms: dict = field(default_factory=dict)  # the search's transforms: options (tag; {} = standard)
    family: str = model_families.DEFAULT  # the model family the search selected (runs before families: impumae)
    pretraining: str = ""                 # the search space's: searched / on / off (SearchSpace.pretraining; "" = untagged)
    baselines: dict | None = None         # baseline_results.json: the baselines scored with this holdout, and their settings


@dataclass
class ExperimentRuns:
    experiment: str
    uri: str
    holdouts: list[HoldoutRecord] = field(default_factory=list)
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    pretrains: pd.DataFrame = field(default_factory=pd.DataFrame)
    nested: list[dict] = field(default_factory=list)  # nested CV runs: their nested_summary.json, oldest first


# ----------------------------------------------------------------------------- reading MLflow
def _truthy(value) -> bool:
    return str(value).strip().lower() not in ("false", "0", "no")


def _runs_of_kind(client: MlflowClient, experiment_id: str, kind: str) -> list:
    """Runs of ``kind``, without those of the inner searches of nested CV (tagged ``outer_fold``):
    they score outer test splits, not the single holdout (the nested table reads their summary)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.kind = '{kind}'", max_results=50000)
    return [r for r in runs if "outer_fold" not in r.data.tags]


def collect_runs(experiment: str, mlflow_uri: str | None = None) -> ExperimentRuns:
    """Holdout, trial and pretraining runs of ``experiment`` (tags set by the search engine)."""
    uri = resolve_uri(mlflow_uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no MLflow experiment {experiment!r} at {uri}; it has: {names}")
    out = ExperimentRuns(experiment, uri)
    with tempfile.TemporaryDirectory() as tmp:
        for run in _runs_of_kind(client, found.experiment_id, "holdout"):
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            if "holdout_results.json" not in names:
                continue
            local = Path(client.download_artifacts(run.info.run_id, "holdout_results.json", tmp))
            record = HoldoutRecord(
                run_id=run.info.run_id, search=run.data.tags.get("search", ""), subset=run.data.tags.get("subset", ""),
                cohort=run.data.tags.get("cohort", ""), pretrained=_truthy(run.data.params.get("pretrained", True)),
                params=dict(run.data.params), start_time=run.info.start_time, results=json.loads(local.read_text()),
                transforms=json.loads(run.data.tags.get("transforms", "{}")),
                family=run.data.tags.get(FAMILY_PARAM, model_families.DEFAULT), pretraining=run.data.tags.get("pretraining", ""))
            if PREDICTIONS_FILE in names:
                local = Path(client.download_artifacts(run.info.run_id, PREDICTIONS_FILE, tmp))
                with np.load(local, allow_pickle=False) as data:
                    record.predictions = {k: data[k] for k in data.files}
            if BASELINES_FILE in names:
                local = Path(client.download_artifacts(run.info.run_id, BASELINES_FILE, tmp))
                record.baselines = json.loads(local.read_text())
            out.holdouts.append(record)
        for run in sorted(_runs_of_kind(client, found.experiment_id, "nested"), key=lambda r: r.info.start_time):
            if NESTED_SUMMARY not in {a.path for a in client.list_artifacts(run.info.run_id)}:
                continue
            local = Path(client.download_artifacts(run.info.run_id, NESTED_SUMMARY, tmp))
            out.nested.append(json.loads(local.read_text()))
    out.trials = pd.DataFrame([{
        "search": r.data.tags.get("search", ""), "trial_id": r.data.tags.get("trial_id", ""),
        "subset": r.data.tags.get("subset", ""), "status": r.data.tags.get("status", ""),
        "family": r.data.tags.get(FAMILY_PARAM, model_families.DEFAULT), "params": dict(r.data.params),
        "pretrained": _truthy(r.data.params.get("pretrained", True)), **r.data.metrics}
        for r in _runs_of_kind(client, found.experiment_id, "trial")])
    out.pretrains = pd.DataFrame([{
        "search": r.data.tags.get("search", ""), "subset": r.data.tags.get("subset", ""),
        "fold": r.data.tags.get("fold", ""), "pretrain_key": r.data.tags.get("pretrain_key", "")}
        for r in _runs_of_kind(client, found.experiment_id, "pretrain")])
    _infer_untagged_pretraining(out)
    return out


def _infer_untagged_pretraining(runs: ExperimentRuns) -> None:
    """Runs logged before searches were tagged with their space's ``pretraining``: a search whose
    impuTMAE trials took both values of ``pretrained`` searched it, one whose trials all ran without
    pretraining was an ablation ("off"), else "on"."""
    untagged = [r for r in runs.holdouts if not r.pretraining]
    if not untagged:
        return
    trials = runs.trials
    for record in untagged:
        values = set()
        if not trials.empty and "search" in trials:
            values = set(trials.loc[(trials["search"] == record.search) & trials["family"].map(pretrains), "pretrained"])
        values = values or {record.pretrained}
        record.pretraining = "searched" if len(values) > 1 else ("on" if values.pop() else "off")


def latest_holdouts(runs: ExperimentRuns, ablation: bool = False) -> dict[str, HoldoutRecord]:
    """The most recent holdout evaluation per subset: of the searches that could use pretraining
    (Table 1: ``pretraining`` on or searched, whatever the search then chose), or with ``ablation``
    of the searches whose space switched it off."""
    chosen: dict[str, HoldoutRecord] = {}
    for record in sorted(runs.holdouts, key=lambda r: r.start_time):
        if (record.pretraining == "off") == ablation:
            chosen[record.subset] = record
    return chosen


# ----------------------------------------------------------------------------- tables
def _cell(result: dict | None, metric: str) -> str:
    if not result or metric not in result:
        return "n/a"
    v = result[metric]
    return f"{v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


def _n_cell(results: dict) -> str:
    return " / ".join(f"{results.get(c, {}).get('n', 0)} ({results.get(c, {}).get('events', 0)})" for c in HOLDOUT_CONDITIONS)


def table1_rows(holdouts: dict[str, HoldoutRecord], baselines: dict[str, dict], subsets: list[str]) -> list[dict]:
    rows = []
    for subset in subsets:
        models = []
        if subset in holdouts:
            models.append((holdout_label(holdouts[subset]), holdouts[subset].results))
        for name, results in baselines.get(subset, {}).items():
            models.append((model_families.label(name), results))
        for label, results in models:
            rows.append({"subset": subset, "model": label, "n": _n_cell(results),
                         **{h: _cell(results.get(c), m) for h, (m, c) in zip(TABLE_HEADERS, TABLE_METRICS)}})
    return rows


def holdout_label(record: HoldoutRecord) -> str:
    """A search's holdout row: ``impuTMAE`` (the pretrained model Table 1 is about), or the family
    the search selected instead, said so (its label may also be one of the baseline rows')."""
    if pretrains(record.family):
        return model_families.label(record.family)
    return f"{model_families.label(record.family)} (the search's choice)"


def pretrains(family: str) -> bool:
    """Whether ``family`` fine-tunes the pretrained MAE (its trials are the pretraining ablation's,
    its refit has a decoder whose imputations the report measures); False for a family this process
    does not know."""
    found = model_families.find(family)
    return bool(found is not None and found.needs_pretraining)


def family_rows(runs: ExperimentRuns) -> list[dict]:
    """Validation only: per search subset and model family, the best complete trial (highest mean
    validation CS-score at its fixed epoch), its mean ± std over folds and its configuration."""
    trials = runs.trials
    if trials.empty or "mean_val_cs_score" not in trials:
        return []
    complete = trials[(trials["status"] == "complete") & trials["mean_val_cs_score"].notna()]
    rows = []
    for (subset, family), group in complete.groupby(["subset", "family"], sort=True):
        best = group.sort_values("mean_val_cs_score", ascending=False).iloc[0]
        config = {k: v for k, v in best["params"].items() if k not in ("subset", FAMILY_PARAM)}
        rows.append({
            "subset": subset, "family": model_families.label(family), "trials": int(len(group)),
            "fixed epoch": _optional(best, "fixed_epoch", "{:.0f}"),
            "val C-index": f"{best.get('mean_val_c_index', np.nan):.3f} ± {best.get('std_val_c_index', np.nan):.3f}",
            "val CS-score": f"{best['mean_val_cs_score']:.3f} ± {best.get('std_val_cs_score', np.nan):.3f}",
            "configuration": ", ".join(f"{k}={v}" for k, v in sorted(config.items()))})
    return rows


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(nothing to show)_"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _optional(row, key: str, form: str) -> str:
    value = row.get(key, np.nan)
    return form.format(value) if value is not None and np.isfinite(value) else "n/a"


def ablation_rows(runs: ExperimentRuns) -> list[dict]:
    """Per subset and pretraining on/off: the best complete trial's validation means (± std over
    folds) at its fixed epoch, the optimistic C-index with each fold's own best epoch beside them
    ("peek"; n/a for runs logged before it existed), and, where a search refitted that variant,
    its holdout C-index and CS-score."""
    trials = runs.trials
    if trials.empty or "mean_val_cs_score" not in trials:
        return []
    complete = trials[(trials["status"] == "complete") & trials["mean_val_cs_score"].notna()
                      & trials["family"].map(pretrains)]
    holdouts = {(r.subset, r.pretrained): r for r in sorted(runs.holdouts, key=lambda r: r.start_time)
                if pretrains(r.family)}
    rows = []
    for (subset, pretrained), group in complete.groupby(["subset", "pretrained"], sort=True):
        best = group.sort_values("mean_val_cs_score", ascending=False).iloc[0]
        holdout = holdouts.get((subset, pretrained))
        rows.append({
            "subset": subset, "model": MAE_LABEL + (" + pretraining" if pretrained else " (no pretraining)"),
            "trials": int(len(group)),
            "fixed epoch": _optional(best, "fixed_epoch", "{:.0f}"),
            "val C-index": f"{best.get('mean_val_c_index', np.nan):.3f} ± {best.get('std_val_c_index', np.nan):.3f}",
            "val C-index (peek)": _optional(best, "mean_val_c_index_peek", "{:.3f}"),
            "val CS-score": f"{best['mean_val_cs_score']:.3f} ± {best.get('std_val_cs_score', np.nan):.3f}",
            "holdout C-index": _cell(holdout.results.get("anchor") if holdout else None, "c_index"),
            "holdout CS-score": _cell(holdout.results.get("anchor") if holdout else None, "cs_score")})
    return rows


NESTED_HEADERS = ("outer folds", "C-index", "IBS", "CS-score", "OOF n", "OOF C-index", "OOF IBS", "OOF CS-score",
                  "chosen", "resamples")


def _nested_row(subsets: str, model: str, summary: dict, entry: dict, chosen: dict) -> dict:
    """A nested table row of one model (``entry``: the summary itself for the selected model, or a
    ``by_family`` entry): mean ± sd over outer folds and the first pooled repeat's OOF metrics
    (``incomplete`` when no repeat scored it in every outer fold)."""
    folds, pooled = entry["over_outer_folds"], (entry["pooled"] or [None])[0]
    return {"subset": subsets, "model": model, "outer folds": f"{summary['repeats']} x {summary['outer_folds']}",
            **{h: f"{folds[m]['mean']:.3f} ± {folds[m]['sd']:.3f}"
               for h, m in zip(NESTED_HEADERS[1:4], ("c_index", "ibs", "cs_score"))},
            "OOF n": f"{pooled['n']} ({pooled['events']})" if pooled else "incomplete",
            **{h: _cell(pooled, m) if pooled else "incomplete"
               for h, m in zip(NESTED_HEADERS[5:8], ("c_index", "ibs", "cs_score"))},
            "chosen": ", ".join(f"{v} ({n})" for v, n in chosen.items()),
            "resamples": str(summary.get("n_boot", "?"))}   # the nested run's own bootstrap, not the report's


def nested_rows(runs: ExperimentRuns) -> list[dict]:
    """The latest nested CV per (subsets, model): mean ± sd over outer folds and the pooled
    out-of-fold metrics (first repeat) with their bootstrap CIs, beside Table 1. A nested CV of
    several families gives one row per family (each outer fold's best configuration of that family,
    scored on its outer test split) and the row of the configuration selected across families on
    inner validation (the protocol's estimate)."""
    latest = {}
    for summary in runs.nested:
        subsets = " ".join(summary.get("subsets", []))
        family = summary["selection"].get("family")
        chosen = {json.loads(v): n for v, n in summary["selection"].get("subset", {}).items()}
        for name, entry in summary.get("by_family", {}).items():
            counts = Counter(row["config"].get("subset") for row in entry["per_outer"])
            latest[(subsets, 0, model_families.label(name))] = (summary, entry, dict(counts.most_common()))
        if family is None:
            model = MAE_LABEL
        elif summary.get("by_family"):
            model = "selected on inner validation: " + ", ".join(
                f"{model_families.label(json.loads(v))} ({n})" for v, n in family.items())
        else:  # a summary written before every family was scored
            model = "family " + ", ".join(f"{json.loads(v)} ({n})" for v, n in family.items())
        latest[(subsets, 1, model)] = (summary, summary, chosen)
    return [_nested_row(subsets, model, summary, entry, chosen)
            for (subsets, _, model), (summary, entry, chosen) in sorted(latest.items())]


def search_rows(runs: ExperimentRuns) -> list[dict]:
    rows = []
    for record in sorted(runs.holdouts, key=lambda r: r.start_time):
        trials = runs.trials[runs.trials["search"] == record.search] if not runs.trials.empty else runs.trials
        status = trials["status"].value_counts().to_dict() if not trials.empty else {}
        config = {k: v for k, v in record.params.items() if k not in ("subset", "n_boot")}
        rows.append({"search": record.search, "subset": record.subset, "pretrained": record.pretrained,
                     "trials": ", ".join(f"{n} {s}" for s, n in sorted(status.items())) or "0",
                     "chosen configuration": ", ".join(f"{k}={v}" for k, v in sorted(config.items()))})
    return rows


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


# ----------------------------------------------------------------------------- the report
def build_report(experiment: str, out_dir: str | Path, mlflow_uri: str | None = None, storage: str = "runs",
                 extra_subsets: tuple[str, ...] = (), cohort: str | None = None, n_boot: int = 1000,
                 baselines: tuple[str, ...] = BASELINES, with_imputation: bool = True, log_to_mlflow: bool = True,
                 seed: int = 0, title: str | None = None, echo=print) -> Path:
    """Write ``<out_dir>/report.md`` and its PNG figures; returns the Markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(experiment, mlflow_uri)
    holdouts = latest_holdouts(runs)
    cohorts = {r.cohort for r in runs.holdouts if r.cohort}
    cohort = cohort or (sorted(cohorts)[0] if cohorts else None)
    if len(cohorts) > 1:
        echo(f"warning: the experiment's searches used several cohorts {sorted(cohorts)}; baselines use each search's own")
    subsets = list(holdouts) + [",".join(parse_subset(s)) for s in extra_subsets
                                if ",".join(parse_subset(s)) not in holdouts]
    if not subsets and not runs.nested:
        raise ValueError(f"experiment {experiment!r} has no holdout evaluation yet (and no --extra-subsets)")
    echo(f"report of {experiment!r}: {len(runs.holdouts)} holdout run(s), {len(runs.trials)} trial run(s); "
         f"subsets {subsets}")

    baseline_results = {}
    for subset in subsets:
        url = holdouts[subset].cohort if subset in holdouts else cohort
        if url is None:
            raise ValueError(f"subset {subset!r}: no cohort known; pass --cohort")
        # a searched subset: its search's transforms; a baseline-only subset: those of the searches when they agree
        options = [r.transforms for r in ([holdouts[subset]] if subset in holdouts else holdouts.values())]
        if any(o != options[0] for o in options):
            echo(f"warning: the searches used different transforms {options}; baselines of {subset} use the default")
        transform_options = options[0] if options and all(o == options[0] for o in options) else None
        if not baselines:
            continue
        logged = logged_baselines(holdouts.get(subset), baselines, n_boot, seed, transform_options)
        if logged is not None:
            for name in baselines:
                echo(format_baseline(name, subset, logged[name]))
            baseline_results[subset] = logged
        else:  # a baseline-only subset, other settings, or a search from before the holdout scored them
            baseline_results[subset] = score_baselines(url, subset, baselines, n_boot=n_boot, seed=seed, echo=echo,
                                                       transform_options=transform_options)

    figures: list[Path] = []
    predictions = {s: r.predictions for s, r in holdouts.items() if r.predictions is not None}
    for subset, p in predictions.items():
        path = out_dir / f"km_{_slug(subset)}.png"
        plots.km_by_risk_group(p["time"], p["event"], survival_risk(saved_survival(p), p["cuts"]), path,
                               title=f"Holdout, {subset}: Kaplan-Meier by predicted risk tertile")
        figures.append(path)
    calibration = {}
    if predictions:
        path = out_dir / "calibration.png"
        calibration = plots.calibration_plot({s: {**p, "survival": saved_survival(p)} for s, p in predictions.items()},
                                             path)
        figures.append(path)

    imputation = _imputation_section(runs, holdouts, storage, echo) if with_imputation else []

    no_mae = {s: _why_no_mae(s, holdouts[next(iter(holdouts))].cohort if holdouts else cohort)
              for s in subsets if s not in holdouts}
    tables = {"table1": table1_rows(holdouts, baseline_results, subsets), "nested": nested_rows(runs),
              "ablation": ablation_rows(runs), "families": family_rows(runs),
              "no_mae": no_mae,
              "imputation": imputation, "searches": search_rows(runs), "calibration": calibration,
              "baselines": baseline_results}
    (out_dir / "report.json").write_text(json.dumps(tables, indent=1, default=_json_default))
    markdown = render_markdown(experiment, runs, holdouts, tables, figures, subsets, n_boot, title)
    report = out_dir / "report.md"
    report.write_text(markdown)
    echo(f"wrote {report} and {len(figures)} figure(s)")
    if log_to_mlflow:
        tracker = Tracker(runs.uri, experiment)
        run = tracker.start_run("report", {"kind": "report", "subsets": " ".join(subsets)},
                                params={"n_boot": n_boot, "baselines": list(baselines)})
        for path in [report, out_dir / "report.json", *figures]:
            tracker.log_artifact(run, path)
        tracker.end_run(run)
    return report


def logged_baselines(record: HoldoutRecord | None, names, n_boot: int, seed: int,
                     transform_options: dict | None) -> dict[str, dict] | None:
    """The baselines ``names`` as the search's holdout scored them, when it scored them with the
    settings the report is asked for (bootstrap size, seed, transforms); else None."""
    if record is None or record.baselines is None:
        return None
    logged = record.baselines
    wanted = baseline_settings(n_boot, seed, transform_options, names)
    same = (logged["n_boot"], logged["seed"], logged["transform_options"]) == (
        wanted["n_boot"], wanted["seed"], wanted["transform_options"])
    if not same or not set(names) <= set(logged["baselines"]):
        return None
    return {name: logged["baselines"][name] for name in names}


def _why_no_mae(subset: str, cohort_url: str | None) -> str:
    if cohort_url:
        specs = load_cohort_arrays(cohort_url, parse_subset(subset)).specs
        if not split_subset(parse_subset(subset), specs)[0]:
            return "it has no tokenised modality, so there is nothing for the MAE to encode"
    return "no search of this subset in this experiment"


def _imputation_section(runs: ExperimentRuns, holdouts: dict[str, HoldoutRecord], storage: str, echo) -> list[dict]:
    """Imputation quality of each subset's refit MAE on its holdout patients (each MAE once)."""
    storage = storage_io.resolve(storage)
    rows, done = [], set()
    for subset, record in holdouts.items():
        pre = runs.pretrains
        match = pre[(pre["search"] == record.search) & (pre["fold"] == "refit")] if not pre.empty else pre
        for key in match["pretrain_key"].tolist() if not match.empty else []:
            if key in done:
                continue
            url = checkpoint_url(storage, key)
            try:
                state = checkpoint.load_pretrained_state(url)
            except FileNotFoundError:
                echo(f"  imputation quality of {subset}: no checkpoint at {url} (pass --storage)")
                continue
            job = PretrainJob.from_dict(state["job"])
            if len(job.modalities) < 2:
                continue
            done.add(key)
            for row in imputation_quality(job, storage, cohort_url=record.cohort or None):
                rows.append({"subset": "+".join(job.modalities), **row})
    return rows


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _imputation_table(rows: list[dict]) -> list[dict]:
    out = {}
    for r in rows:
        key = (r["subset"], r["modality"])
        entry = out.setdefault(key, {"model modalities": r["subset"], "hidden modality": r["modality"],
                                     "n": r["n_patients"]})
        r2 = f"{r['r2']:.3f}" if np.isfinite(r["r2"]) else "n/a"
        mse = f"{r['mse']:.4f}" if np.isfinite(r["mse"]) else "n/a"
        entry[f"{r['method']} R² / MSE"] = f"{r2} / {mse}"
    return list(out.values())


def render_markdown(experiment, runs, holdouts, tables, figures, subsets, n_boot, title=None) -> str:
    lines = [f"# {title or f'Report: {experiment}'}", "",
             f"MLflow experiment `{experiment}` at `{runs.uri}`. Each search chose its configuration on "
             "validation folds only, refitted it on every non-holdout patient and scored the holdout once. "
             f"Intervals are percentile bootstrap 95% CIs over holdout patients ({n_boot} resamples).", ""]
    lines += ["## Table 1: holdout performance by modality subset", "",
              "C-index (Antolini, time-dependent) and CS-score = (C-index + 1 - IBS) / 2 on holdout patients "
              "with the anchor (first) modality; CS-score* on holdout patients with every selected modality. "
              "`n` = patients (events) in the two conditions. Baselines: fitted on the same refit training "
              "patients with the subset's features after the same fold-fitted transforms (MRI: voxel mean and "
              "sd; WSI: per-channel mean), scored on the same holdout patients.", ""]
    for subset, reason in tables["no_mae"].items():
        lines += [f"No impuTMAE row for `{subset}`: {reason}; only the baselines are reported.", ""]
    lines += [markdown_table(tables["table1"], ["subset", "model", "n", *TABLE_HEADERS]), ""]
    if tables["nested"]:
        lines += ["## Nested cross-validation beside the single holdout", "",
                  "The whole protocol (pretraining, search, refit) inside each outer fold; the outer folds "
                  "partition every patient. Left: mean ± sd over outer folds of the outer-test metrics; right: "
                  "the pooled out-of-fold predictions of every patient with the anchor modality (first repeat), "
                  "with bootstrap 95% CIs drawn by the nested run itself (`resamples`; '?' for runs that predate "
                  "the column). `chosen`: how often each subset was selected. A nested CV of several "
                  "model families has a row per family (in each outer fold that family's best configuration on inner "
                  "validation, refitted and scored on the outer test split) and the row of the configuration "
                  "selected across families, the protocol's own estimate.", "",
                  markdown_table(tables["nested"], ["subset", "model", *NESTED_HEADERS]), ""]
    lines += ["## Validation: the best configuration of each model family", "",
              "Validation folds only (no holdout patient): per subset and model family, the complete trial with the "
              "highest mean validation CS-score at its fixed epoch (scikit-survival families: epoch 1), mean ± std "
              "over folds. The search selects across these rows; its choice is the holdout row of Table 1.", "",
              markdown_table(tables["families"]), ""]
    lines += ["## Table 3: the pretraining ablation", ""]
    if any("no pretraining" in r["model"] for r in tables["ablation"]):
        lines += ["The best complete trial of each variant: validation-fold mean ± std (over folds); holdout "
                  "columns where a search refitted that variant.", "",
                  markdown_table(tables["ablation"]), ""]
    else:
        lines += ["No search of this experiment fine-tuned without pretraining (`pretrained: false`); run one with "
                  "`--space search_spaces/ablation_pretraining.yaml` to fill this table.", ""]
        if tables["ablation"]:
            lines += [markdown_table(tables["ablation"]), ""]
    lines += ["## Imputation quality of the pretrained decoder", "",
              "Each refit MAE (pretrained on every non-holdout patient) on holdout patients who have the modality "
              "and at least one other of the model's modalities: the modality is hidden from the model "
              "(present = False) and reconstructed. References fitted on the MAE's pretraining patients: the "
              "training mean, and kNN imputation (scikit-learn KNNImputer, k = 5, on the model's tabular "
              "modalities; not computed for MRI/WSI). R² = 1 - SSE / total variance of the held-out values "
              "(variance-weighted over features); values in the model's input space after the fold-fitted "
              "transforms.", ""]
    imputation = _imputation_table(tables["imputation"])
    lines += [markdown_table(imputation) if imputation else
              "_(no refit MAE with two or more modalities was found; pass --storage)_", ""]
    lines += ["## Figures", ""]
    for path in figures:
        lines += [f"![{path.stem}]({path.name})", ""]
    if tables["calibration"]:
        lines += ["Calibration: holdout patients split into tertiles of predicted survival at t = the median "
                  "training time; each point is the group's mean predicted survival against its Kaplan-Meier "
                  "estimate at t.", ""]
    lines += ["## Searches", "", markdown_table(tables["searches"]), ""]
    return "\n".join(lines)
