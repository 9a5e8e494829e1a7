"""Nested cross-validation: the whole search protocol inside each outer fold.

One holdout is too small to rank models on real cohorts (116 GBM/LGG holdout patients with 39
deaths give C-index intervals about +-0.09 wide). Here every patient is scored once per repeat by a
model that never saw them:

- an outer split (repeat r, outer fold k of K, seed) partitions ALL patients of the cohort, the
  stored holdout included, stratified by event and by presence of the anchor modality
  (:func:`impumae.data.cohort_view.outer_split`); the outer test split plays the holdout's part,
  the other patients keep their stored inner fold (the stored holdout is spread over the folds);
- for each outer fold :func:`impumae.engine.search.run_search` runs unchanged on that view
  (per-fold pretraining, the Tune search over the inner folds, selection, refit, one scoring of the
  outer test patients) in ``<nested dir>/r{r}-outer{k}``; every load of the cohort in the search
  (trials, refit, pretraining jobs, holdout) applies the split, and pretraining cache keys carry it;
- the outer test predictions (the anchor condition's ``holdout_predictions.npz``) are the
  out-of-fold (OOF) predictions. OOF population = the patients with the anchor modality (the first
  modality of the subsets, which must share it): each of them has exactly one per repeat (checked).

Reported: per outer fold (C-index, IBS, CS-score with bootstrap CIs, the configuration chosen),
mean +- SD over outer folds, and per repeat the pooled OOF metrics with bootstrap CIs. Each outer
fold's model has its own time grid: before pooling every curve is interpolated linearly (as the
metrics do) to one common grid, the sorted union of the outer folds' grids (a curve stays flat past
its own last time). The IPCW censoring weights (and the IBS grid's cap) of the pooled metrics come
from the reverse Kaplan-Meier of the pooled OOF patients' own labels: no single training set exists
for predictions of K models, and labels are not model inputs.

A search of several model families also scores, in each outer fold, every other family's best
configuration on the outer test split (``holdout_predictions-<family>.npz``; the selected one is
its own family's): the same numbers are reported per family under ``by_family``, a family pooled
in a repeat only when every outer fold of the repeat scored it.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from impumae import storage as storage_io
from impumae.engine import audit, console
from impumae.data.cohort_view import load_cohort_arrays
from impumae.families import family_name
from impumae.engine.holdout import PREDICTIONS_FILE, family_file, saved_survival
from impumae.engine.nested_stats import (METRICS, RULE_LABELS, _ci_cell, _model_metrics, aggregate_rows,  # noqa: F401
                                         check_coverage, family_order, format_nested, outer_name, over_outer_folds,
                                         per_outer_rows, pooled_metrics, pooled_predictions, rule_choice,
                                         rule_comparison, selection_stability, summarise_model)
from impumae.engine.runtime import init_ray
from impumae.engine.search import SearchOptions, run_search, slug, timestamped_name
from impumae.engine.tracking import Tracker
from impumae import plots
from impumae.modalities import parse_subset
from impumae.survival.metrics import survival_risk

NESTED_SUMMARY = "nested_summary.json"
OUTER_SUMMARY = "summary.json"          # what run_search writes last: an outer fold with it is finished
OOF_FILE = "oof_predictions.npz"       # the first repeat's pooled OOF predictions (per family: oof_predictions-<family>.npz)


def nested_name(opts: SearchOptions, storage: str) -> str:
    """``nested-<experiment>-<time>``; on resume the latest such directory under ``storage``."""
    return timestamped_name(storage, f"nested-{slug(opts.experiment)}", opts.resume, "nested run")


def outer_splits(outer_folds: int, repeats: int, seed: int, anchor: str) -> list[dict]:
    """The split descriptions (what ``load_cohort_arrays(..., split)`` applies), repeat-major."""
    return [{"outer_folds": outer_folds, "outer_fold": k, "repeat": r, "seed": seed, "stratify": anchor}
            for r in range(repeats) for k in range(outer_folds)]


def shared_anchor(subsets: list[str]) -> str:
    anchors = sorted({parse_subset(s)[0] for s in subsets})
    if len(anchors) != 1:
        raise ValueError(f"nested CV pools out-of-fold predictions over the patients with the anchor modality; "
                         f"the subsets {subsets} have different anchors {anchors}")
    return anchors[0]


def run_nested(opts: SearchOptions, outer_folds: int, repeats: int = 1, concurrent_outer: int | None = None,
               echo=print) -> dict:
    """Nested CV of the search ``opts`` (its storage, experiment, trials, folds, resume, ...).

    ``concurrent_outer``: outer folds run at once, each driving its own Tuner from a thread of this
    process (None: as many as the cluster has CPUs for one trial each, at most the outer folds).
    With ``opts.resume`` the latest nested run of the experiment continues: an outer fold whose
    summary exists is not redone, an unfinished one resumes its search.
    """
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    subsets = [",".join(parse_subset(s)) for s in opts.subsets]
    anchor = shared_anchor(subsets)
    storage = storage_io.resolve(opts.storage)
    name = nested_name(opts, storage)
    nested_dir = storage_io.join(storage, name)
    splits = outer_splits(outer_folds, repeats, opts.seed, anchor)
    load_cohort_arrays(opts.cohort, (anchor,), splits[0])  # a bad --outer-folds fails before Ray starts
    tracker = Tracker(opts.mlflow_uri, opts.experiment)
    tags = {"nested": name, "cohort": opts.cohort, "subsets": " ".join(subsets), **opts.extra_tags}
    echo(f"nested CV {name}: {repeats} x {outer_folds} outer folds of {subsets}; storage {nested_dir}")
    started = time.perf_counter()
    # the console of concurrent outer folds: every line an outer fold's thread prints carries its label
    # (console.label_thread), and Ray workers' output goes to the log file (a worker's line cannot say
    # which outer fold it belongs to; pretraining prints one line per model from the driver instead)
    with console.ray_to_file(console.log_path_for(nested_dir), workers_stdout_to_file=True) as ray_log, \
            console.labelled_console():
        init_ray(opts.address)
        ray_log.capture_workers()
        workers = concurrent_outer or default_concurrency(opts, len(splits))
        echo(f"outer folds at once: {workers}; Ray and Tune messages: {ray_log.path}")

        def one(split: dict) -> dict:
            with console.label_thread(f"[{outer_name(split['repeat'], split['outer_fold'])}]"):
                return run_outer_fold(opts, split, nested_dir, tracker, tags, echo)

        if workers == 1:  # in the main thread: Ctrl-C stops Tune as in a single search
            outers = [one(split) for split in splits]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outers = list(pool.map(one, splits))
    summary, oof, family_oofs = summarise_nested(outers, splits, opts, anchor)
    summary.update(nested=name, nested_dir=nested_dir, experiment=opts.experiment, mlflow_uri=tracker.uri,
                   subsets=subsets, anchor=anchor, concurrent_outer=workers, wall_s=time.perf_counter() - started)
    write_nested_outputs(summary, oof, nested_dir, tracker, tags, echo, family_oofs)
    return summary


def default_concurrency(opts: SearchOptions, n_outer: int) -> int:
    import ray  # noqa: PLC0415

    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, min(n_outer, int(cpus // max(opts.cpus_per_trial, 1e-9))))


def run_outer_fold(opts: SearchOptions, split: dict, nested_dir: str, tracker: Tracker, tags: dict, echo) -> dict:
    """The inner protocol of one outer fold (or its earlier result), audited; returns what the
    nested summary needs of it."""
    outer = outer_name(split["repeat"], split["outer_fold"])
    search_dir = storage_io.join(nested_dir, outer)
    summary_url = storage_io.join(search_dir, OUTER_SUMMARY)
    outer_tags = {**tags, "kind": "nested-outer", "outer_fold": outer}
    parent = tracker.find_run(nested=tags["nested"], outer_fold=outer, kind="nested-outer")
    if storage_io.exists(summary_url):
        echo(f"[{outer}] finished earlier: not redone")
        summary = json.loads(storage_io.read_bytes(summary_url))
        done_before = True
    else:
        if parent is None:
            parent = tracker.start_run(outer, outer_tags, params={"split": split})
        # every run of the inner search (pretraining, trials, holdout) becomes a child of the outer fold's run
        inner = dataclasses.replace(opts, storage=nested_dir, name=outer, outer=split,
                                    extra_tags={**opts.extra_tags, "nested": tags["nested"], "outer_fold": outer,
                                                "mlflow.parentRunId": parent})

        def prefixed(*parts, **_):
            echo("\n".join(f"[{outer}] {line}" for line in " ".join(str(p) for p in parts).splitlines()))
        summary = run_search(inner, echo=prefixed, route_ray_log=False)
        done_before = False
    ca = load_cohort_arrays(opts.cohort, (shared_anchor(opts.subsets),), split)
    test_ids = ca.ids[ca.holdout_indices()]
    check_outer_isolation(search_dir, test_ids, outer)
    predictions = read_predictions(search_dir, outer)
    result = {"outer": outer, "split": split, "search_dir": search_dir, "config": summary["best"]["config"],
              "fixed_epoch": summary["best"]["fixed_epoch"], "n_test": len(test_ids),
              "holdout": summary["holdout"]["conditions"], "predictions": predictions, "done_before": done_before,
              "timings": summary.get("timings", {}), "by_family": {}}
    # every family's best configuration scored on the outer test split (a search of several families);
    # a family without anchor predictions (too few patients or no event) is left out: incomplete
    result["family_failures"] = {}
    for family, scored in summary.get("holdout_by_family", {}).items():
        if scored.get("failed"):       # its refit's model failed: the other families go on
            result["family_failures"][family] = scored["failed"]
            continue
        if storage_io.exists(storage_io.join(search_dir, scored["predictions"])):
            result["by_family"][family] = {
                "outer": outer, "split": split, "config": scored["config"], "fixed_epoch": scored["fixed_epoch"],
                "holdout": scored["conditions"], "stopped_early": bool(scored.get("stopped_early", False)),
                "mean_val_cs_score": scored.get("mean_val_cs_score"), "std_val_cs_score": scored.get("std_val_cs_score"),
                "predictions": read_predictions(search_dir, outer, scored["predictions"])}
    # trials whose model failed, and selected candidates whose refit failed: (family, cause)
    result["family_failures"].update({f"trial {t['trial_id']}": t["failed"] for t in summary.get("trials", [])
                                      if t.get("failed")})
    result["family_failures"].update({f"refit {f['trial_id']}": f["failed"] for f in summary.get("refit_failures", [])})
    if not done_before:
        anchor = summary["holdout"]["conditions"].get("anchor", {})
        tracker.log_metrics(parent, {f"outer_{k}": v["estimate"] for k, v in anchor.items() if isinstance(v, dict)}
                            | {"fixed_epoch": summary["best"]["fixed_epoch"], "n_test": len(test_ids)})
        tracker.set_tags(parent, {"chosen_config": json.dumps(summary["best"]["config"], sort_keys=True, default=str)})
        tracker.end_run(parent)
    return result


def check_outer_isolation(search_dir: str, test_ids, outer: str) -> None:
    """The outer test patients reach no stage of their outer fold but the final scoring, and the
    final scoring sees no one else; raises naming the stages otherwise."""
    strays = audit.check_launches(search_dir)
    if strays:
        raise RuntimeError(f"outer fold {outer}: trials it launched ran with another outer fold's context: {strays}")
    leaks = audit.check_holdout_isolation(search_dir, test_ids)
    if leaks:
        raise RuntimeError(f"outer fold {outer}: outer test patients reached the stages {leaks}")
    stages = audit.load(search_dir)
    test = set(map(str, test_ids))
    strays = [f"{stage}:{role}" for stage, roles in stages.items() if stage.startswith("holdout")
              for role, ids in roles.items() if not test.issuperset(ids)]
    if "holdout" not in stages:
        raise RuntimeError(f"outer fold {outer}: no final scoring stage in {search_dir}/audit")
    if strays:
        raise RuntimeError(f"outer fold {outer}: the final scoring saw patients outside the outer test split: {strays}")


def read_predictions(search_dir: str, outer: str, name: str = PREDICTIONS_FILE) -> dict:
    """The outer test predictions (``name``: the selected model's, or a family's
    ``holdout_predictions-<family>.npz``): ids, labels, survival at the model's grid, training labels."""
    url = storage_io.join(search_dir, name)
    if not storage_io.exists(url):
        raise RuntimeError(f"outer fold {outer}: no {name} in {search_dir} (the outer test split "
                           f"had too few patients with the anchor modality or no event); use fewer outer folds")
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / PREDICTIONS_FILE
        local.write_bytes(storage_io.read_bytes(url))
        with np.load(local, allow_pickle=False) as data:
            found = {k: data[k] for k in data.files}
    grid = found["grid"] if "grid" in found else found["cuts"]
    surv = saved_survival(found)
    return {"patient_id": found["patient_id"].astype(str), "time": found["time"], "event": found["event"],
            "grid": np.asarray(grid, float), "survival": np.asarray(surv, float)}


def summarise_nested(outers: list[dict], splits: list[dict], opts: SearchOptions,
                     anchor: str) -> tuple[dict, dict, dict[str, dict]]:
    """(the nested summary, the first repeat's pooled OOF predictions, and per family its first
    pooled repeat's: only families that every outer fold of some repeat scored)."""
    ca = load_cohort_arrays(opts.cohort, (anchor,))
    anchor_ids = ca.ids[ca.present[anchor]]
    overall, oof = summarise_model(outers, splits, anchor_ids, opts)
    if not overall["complete"]:  # every outer fold of run_nested has the selected model's predictions
        raise RuntimeError(f"outer folds without predictions: {overall['missing_outer_folds']}")
    by_family, family_oofs = {}, {}
    for family in family_order({f for o in outers for f in o.get("by_family", {})}):
        entries = [o["by_family"][family] for o in outers if family in o.get("by_family", {})]
        by_family[family], family_oof = summarise_model(entries, splits, anchor_ids, opts)
        by_family[family]["selected_in"] = sum(family_name(o["config"]) == family for o in outers)
        # outer folds where every trial of the family was stopped early (ASHA): its best stopped trial stood in
        by_family[family]["stopped_early_in"] = [e["outer"] for e in entries if e.get("stopped_early")]
        if family_oof is not None:
            family_oofs[family] = family_oof
    failures = {o["outer"]: o["family_failures"] for o in outers if o.get("family_failures")}
    return {"outer_folds": splits[0]["outer_folds"], "repeats": len(overall["pooled"]), "seed": opts.seed,
            "n_boot": opts.n_boot, "selection_rule": getattr(opts, "selection", "best"), "failures": failures,
            "rules": rule_comparison(outers, splits, anchor_ids, opts),
            "oof_population": f"patients with the anchor modality {anchor!r}",
            "per_outer": overall["per_outer"], "over_outer_folds": overall["over_outer_folds"],
            "pooled": overall["pooled"], "by_family": by_family,
            "selection": selection_stability(outers),
            "pooling": "each outer fold's curves linearly interpolated to the union of the outer folds' grids; "
                       "IPCW censoring weights from the reverse Kaplan-Meier of the pooled OOF patients' labels",
            "resumed_outer_folds": [o["outer"] for o in outers if o["done_before"]]}, oof, family_oofs


def write_nested_outputs(summary: dict, first: dict, nested_dir: str, tracker: Tracker, tags: dict, echo,
                         family_oofs: dict[str, dict] | None = None) -> None:
    """``nested_summary.json``, ``nested_results.md``, the first repeat's pooled OOF predictions
    (``first``: ``oof_predictions.npz``; each family's of ``family_oofs``:
    ``oof_predictions-<family>.npz``) and their Kaplan-Meier plot by risk tertile, in the nested
    directory and in an MLflow run of kind ``nested`` (per family metrics ``<family>_oof_*``, ...)."""
    text = format_nested(summary)
    echo(text)
    run = tracker.start_run(f"nested-{summary['nested']}", {**tags, "kind": "nested"},
                            params={"outer_folds": summary["outer_folds"], "repeats": summary["repeats"],
                                    "seed": summary["seed"]})
    tracker.log_metrics(run, _model_metrics(summary))
    for family, model in summary.get("by_family", {}).items():
        tracker.log_metrics(run, _model_metrics(model, f"{family}_"))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / NESTED_SUMMARY).write_text(json.dumps(summary, indent=1, default=str))
        (d / "nested_results.md").write_text(text + "\n")
        plots.km_by_risk_group(first["time"], first["event"], survival_risk(first["survival"], first["grid"]),
                               d / "km_oof_by_risk_tertile.png",
                               title="Out-of-fold (repeat 0): Kaplan-Meier by predicted risk tertile")
        np.savez(d / OOF_FILE, **first)
        for family, oof in (family_oofs or {}).items():
            np.savez(d / family_file(OOF_FILE, family), **oof)
        for path in sorted(d.iterdir()):
            tracker.log_artifact(run, path)
            storage_io.write_bytes(storage_io.join(nested_dir, path.name), path.read_bytes())
    tracker.end_run(run)
