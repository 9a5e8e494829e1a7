"""MLflow tracking, written from the driver only.

Trials report their fold results to Ray Tune; ``MLflowSearchLogger`` (a Tune callback, so it runs
in the driver) turns them into runs, the same for every model family (param and tag ``family``):
a parent run per trial (configuration; after each fold the
running mean CS-score and the fixed epoch, step = folds done; at the end ``fixed_epoch``, the
mean/std over folds of the validation metrics at it, ``mean_val_*_peek`` beside them and the mean
validation curve as ``fold_mean_<metric>``, step = epoch) with a child run per fold (its whole
validation curve and training loss, step = epoch, and the patient counts it saw). Pretraining and the holdout evaluation get
their own runs. One writer means a local SQLite file never sees concurrent writers, and a resumed
search finds its earlier runs by tag instead of duplicating them.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np

from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from impumae.engine.curves import FOLD_METRICS
from impumae.families import PARAM as FAMILY_PARAM, family_name

DEFAULT_URI = "sqlite:///mlflow.db"
# what a trial's parent run keeps at the end: the fixed epoch, the metrics at it (mean and SD over
# folds; the names the report reads) and the optimistic per-fold-best numbers beside them
TRIAL_SUMMARY_METRICS = ("fixed_epoch", *(f"mean_{m}" for m in FOLD_METRICS), *(f"std_{m}" for m in FOLD_METRICS),
                         *(f"mean_{m}_shared_epoch" for m in FOLD_METRICS), *(f"mean_{m}_peek" for m in FOLD_METRICS))


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class Tracker:
    """A thin, explicit wrapper over ``MlflowClient`` for one experiment. The URI is this client's
    own: the process-wide MLflow tracking URI is left alone."""

    def __init__(self, uri: str | None, experiment: str):
        self.uri = resolve_uri(uri)
        with _sqlite_lock(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                artifact_location = None
                if self.uri.startswith("sqlite:///"):
                    db = Path(self.uri[len("sqlite:///"):]).resolve()
                    artifact_location = (db.parent / "mlartifacts" / experiment).as_uri()
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
            else:
                self.experiment_id = found.experiment_id
        self.experiment = experiment

    def find_run(self, **tags) -> str | None:
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def start_run(self, name: str, tags: dict, params: dict | None = None, parent: str | None = None) -> str:
        all_tags = {k: str(v) for k, v in tags.items()}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict):
        flat = [Param(k, _short(v)) for k, v in _flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0):
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and np.isfinite(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_history(self, run_id: str, history: list[dict]):
        """Per-epoch curves: each key of each epoch's dict becomes a metric with step = epoch."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(row["epoch"])) for row in history for k, v in row.items()
                 if k != "epoch" and v is not None and np.isfinite(float(v))]
        for i in range(0, len(batch), 900):
            self.client.log_batch(run_id, metrics=batch[i:i + 900])

    def set_tags(self, run_id: str, tags: dict):
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None):
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED"):
        self.client.set_terminated(run_id, status)


def curve_rows(curve: dict[str, list[float]], prefix: str = "") -> list[dict]:
    """``{metric: [value per epoch]}`` as history rows ``{"epoch": e, prefix + metric: value}``."""
    n_epochs = max((len(values) for values in curve.values()), default=0)
    return [{"epoch": e, **{prefix + m: values[e - 1] for m, values in curve.items()}} for e in range(1, n_epochs + 1)]


def _sqlite_lock(uri: str):
    """For a ``sqlite:///`` URI, an exclusive lock on ``<db>.lock`` next to the database file.

    The first client of a fresh SQLite store creates the tables and runs MLflow's alembic
    migrations; two searches that start at once both migrate and one fails (alembic
    ``CommandError``, ``duplicate column name: step``). Creating the store and the experiment
    under the lock serialises them; later clients find both and wait only for the lock.
    """
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock", timeout=600)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _short(v) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


class MLflowSearchLogger(tune.Callback):
    """Parent run per trial, child run per fold, from the results trials report."""

    def __init__(self, tracker: Tracker, search_name: str, base_tags: dict, echo=print):
        self.tracker = tracker
        self.search_name = search_name
        self.base_tags = base_tags
        self.echo = echo
        self.parents: dict[str, str] = {}
        self.logged_folds: dict[str, set[int]] = {}

    def __getstate__(self):
        # Tune pickles its callbacks with the run config (experiment state): the echo is this
        # process's console (print, or a closure over it), which need not pickle; a restored
        # logger gets its echo back with the new callbacks (search.py)
        return {k: v for k, v in self.__dict__.items() if k != "echo"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.echo = print

    def _parent(self, trial) -> str:
        if trial.trial_id not in self.parents:
            run_id = self.tracker.find_run(search=self.search_name, trial_id=trial.trial_id, kind="trial")
            if run_id is None:
                config = {k: v for k, v in trial.config.items() if not k.startswith("_")}
                tags = {**self.base_tags, "search": self.search_name, "trial_id": trial.trial_id, "kind": "trial",
                        "subset": config.get("subset", ""), FAMILY_PARAM: family_name(config)}
                run_id = self.tracker.start_run(f"trial-{trial.trial_id}", tags,
                                                params={FAMILY_PARAM: family_name(config), **config})
            self.parents[trial.trial_id] = run_id
            self.logged_folds[trial.trial_id] = self._folds_already_logged(run_id)
        return self.parents[trial.trial_id]

    def _folds_already_logged(self, parent: str) -> set[int]:
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        return {int(r.data.tags["fold"]) for r in runs if "fold" in r.data.tags}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        parent = self._parent(trial)
        if result.get("failed"):   # a configuration whose model failed (impumae.engine.trial.cv_trial)
            self.echo(f"trial {trial.trial_id}: {result['failed']}; the search goes on without it")
            self.tracker.set_tags(parent, {"status": "failed", "failure": result["failed"][:500]})
            return
        fold = int(result["fold"])
        if fold not in self.logged_folds[trial.trial_id]:
            tags = {**self.base_tags, "search": self.search_name, "trial_id": trial.trial_id, "kind": "fold",
                    "fold": fold, "subset": trial.config.get("subset", ""), FAMILY_PARAM: family_name(trial.config)}
            child = self.tracker.start_run(f"trial-{trial.trial_id}-fold{fold}", tags,
                                           params={"fold": fold, **{k: v for k, v in trial.config.items() if not k.startswith("_")}},
                                           parent=parent)
            self.tracker.log_history(child, result.get("fold_history", []))
            self.tracker.log_metrics(child, {"n_train": result.get("n_train"), "n_val": result.get("n_val")})
            self.tracker.end_run(child)
            self.logged_folds[trial.trial_id].add(fold)
        self.tracker.log_metrics(parent, {"running_mean_val_cs_score": result["running_mean_val_cs_score"],
                                          "fixed_epoch": result["fixed_epoch"], "folds_done": result["folds_done"]},
                                 step=int(result["folds_done"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        parent = self._parent(trial)
        result = trial.last_result or {}
        if result.get("failed"):
            self.tracker.end_run(parent, "FAILED")
            return
        self.tracker.log_metrics(parent, {k: result.get(k) for k in TRIAL_SUMMARY_METRICS}
                                 | {"folds_done": result.get("folds_done", 0)}, step=int(result.get("folds_done", 0)))
        self.tracker.log_history(parent, curve_rows(result.get("fold_mean_curve", {}), prefix="fold_mean_"))
        stopped_early = result.get("folds_done", 0) < result.get("n_folds", 0)
        self.tracker.set_tags(parent, {"status": "stopped_early" if stopped_early else "complete"})
        self.tracker.end_run(parent)

    def on_trial_error(self, iteration, trials, trial, **info):
        parent = self._parent(trial)
        self.tracker.set_tags(parent, {"status": "error"})
        self.tracker.end_run(parent, "FAILED")
