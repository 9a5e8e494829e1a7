"""The honest cross-validated search, end to end.

1. Pretrain one MAE per (subset, fold) on that fold's training patients (Ray Train, DDP), cached.
2. Ray Tune + Optuna (TPE) over the YAML space; one trial = one configuration over all K folds;
   ASHA stops weak configurations after two folds. Validation folds only.
   Each configuration's epoch is fixed where the mean validation CS-score curve of its folds peaks.
3. The best configuration (highest mean validation CS-score at its fixed epoch, over complete
   trials) is refit on all non-holdout patients (pretraining included) for that many epochs, and
   the holdout split is scored once. Under nested CV (``SearchOptions.outer``) with several
   families, each other family's best complete trial is refitted and scored once too
   (:func:`score_other_families`), so the nested summary can report every family.
Everything is logged to MLflow from this (driver) process.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from impumae import families as model_families, storage as storage_io
from impumae.data.transforms import TransformOptions
from impumae.engine import audit, console, selection
from impumae.engine.selection import best_per_family, family_representatives  # noqa: F401 (re-exported)
from impumae.data.cohort_view import REFIT, load_cohort_arrays
from impumae.engine.ensemble import ensemble_config, ensemble_row
from impumae.engine.holdout import PREDICTIONS_FILE, family_file, score_holdout
from impumae.engine.pretrain_jobs import PretrainJob, check_job, run_pretraining
from impumae.engine.runtime import init_ray
from impumae.engine.space import SearchSpace
from impumae.engine.tracking import MLflowSearchLogger, Tracker
from impumae.engine.trial import (LAUNCHED_BY, MODEL_ERRORS, SearchContext, cv_trial, device_for_trial, failure_cause,
                                  fit_configuration)
from impumae.modalities import parse_subset

METRIC = "running_mean_val_cs_score"


@dataclass
class SearchOptions:
    cohort: str
    subsets: list[str]
    space: SearchSpace
    trials: int = 4
    folds: int | None = None
    pretrain_epochs: int | None = None
    epochs: int | None = None
    address: str | None = None
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    workers: int = 1
    storage: str = "runs"
    mlflow_uri: str | None = None
    experiment: str = "impumae"
    resume: bool = False
    seed: int = 0
    max_failures: int = 2
    n_boot: int = 1000
    grace_folds: int = 2
    extra_tags: dict = field(default_factory=dict)
    register: str | None = None      # the Model Registry name of the selected model; None = the experiment name
    name: str | None = None      # the search's directory under ``storage`` (None: <experiment>-<time>, or the latest on resume)
    outer: dict | None = None    # nested CV: the outer split (engine/nested.py); None = the stored holdout and folds
    ensemble_top_k: int = 0          # >= 2: also the top-k configurations averaged (impumae.engine.ensemble)
    selection: str = "family_ensemble"   # the rule that picks the model from the trials (impumae.engine.selection)


def slug(text: str) -> str:
    """``text`` as a file name (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "search"




def timestamped_name(storage: str, base: str, resume: bool, what: str = "search") -> str:
    """``<base>-<time>`` for a new run under ``storage``; on resume the latest such directory
    (``what`` names the run in the error when there is none)."""
    if resume:
        fs, root = storage_io.filesystem(storage)
        earlier = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{root.rstrip('/')}/{base}-*") if fs.isdir(p))
        if not earlier:
            raise ValueError(f"--resume: no earlier {what} {base!r} under {storage}")
        return earlier[-1]
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_search(opts: SearchOptions, echo=print, route_ray_log: bool = True) -> dict:
    """The whole protocol; ``route_ray_log=False`` when the caller (nested CV) already sends Ray's
    internals to a file and has started Ray."""
    subsets = [",".join(parse_subset(s)) for s in opts.subsets]
    selection.check_rule(opts.selection)
    storage = storage_io.resolve(opts.storage)
    search_name = opts.name or timestamped_name(storage, slug(opts.experiment), opts.resume)
    search_dir = storage_io.join(storage, search_name)
    timings = {}
    started = time.perf_counter()
    # the cohort, the context and every fold's pretraining job are checked before Ray starts: a
    # modality that pretraining cannot learn from (too few tokens to mask) fails at once
    all_modalities = tuple(dict.fromkeys(m for s in subsets for m in parse_subset(s)))
    ca = load_cohort_arrays(opts.cohort, all_modalities, opts.outer)
    timings["cohort_load_s"] = time.perf_counter() - started
    n_folds = opts.folds or ca.n_folds
    if not 2 <= n_folds <= ca.n_folds:
        raise ValueError(f"--folds {n_folds}: the cohort stores {ca.n_folds} folds; use 2..{ca.n_folds}")
    pretrain_cfg = {**opts.space.pretrain, **({"epochs": opts.pretrain_epochs} if opts.pretrain_epochs else {})}
    finetune_cfg = {**opts.space.finetune, **({"epochs": opts.epochs} if opts.epochs else {})}
    ctx = SearchContext(cohort_url=opts.cohort, n_folds=n_folds, storage=storage, search_dir=search_dir,
                        model=opts.space.model, pretrain=pretrain_cfg, finetune=finetune_cfg, seed=opts.seed,
                        transforms=opts.space.transforms, outer=opts.outer)
    # pretraining only for the families that need it (a space of scikit-survival families needs none)
    jobs = ({(s, f): pretrain_job(ctx, ca, parse_subset(s), f) for s in subsets for f in range(n_folds)}
            if any(model_families.get(f).needs_pretraining for f in opts.space.families()) else {})
    for job in jobs.values():
        check_job(job)
    started = time.perf_counter()
    if not route_ray_log:
        init_ray(opts.address)
        timings["ray_start_s"] = time.perf_counter() - started
        return _run_search(opts, subsets, search_name, search_dir, ca, ctx, jobs, timings, echo)
    with console.ray_to_file(console.log_path_for(search_dir)) as ray_log:
        init_ray(opts.address)
        ray_log.capture_workers()
        timings["ray_start_s"] = time.perf_counter() - started
        echo(f"Ray and Tune messages: {ray_log.path}")
        return _run_search(opts, subsets, search_name, search_dir, ca, ctx, jobs, timings, echo)


def _run_search(opts: SearchOptions, subsets, search_name, search_dir, ca, ctx: SearchContext, jobs: dict,
                timings: dict, echo) -> dict:
    n_folds = ctx.n_folds

    tracker = Tracker(opts.mlflow_uri, opts.experiment)
    # transforms: the report fits its baselines' features with the same options
    base_tags = {"search": search_name, "cohort": opts.cohort, "subsets": " ".join(subsets),
                 "transforms": json.dumps(TransformOptions.from_dict(ctx.transforms).to_dict(), sort_keys=True),
                 "pretraining": opts.space.pretraining(),
                 **opts.extra_tags}
    echo(f"search {search_name}: subsets {subsets}, {n_folds} folds, {opts.trials} trials; "
         f"MLflow {tracker.uri} experiment {opts.experiment!r}; storage {search_dir}")

    # 1. pretraining, one per (subset, fold), on that fold's training patients only
    started = time.perf_counter()
    metas = pretrain_and_log(list(jobs.items()), ctx, opts, tracker, base_tags, echo)
    timings["pretrain_s"] = time.perf_counter() - started
    rates = [m["samples_per_s"] for m in metas.values() if not m["cached"] and m["samples_per_s"]]
    timings["pretrain_samples_per_s"] = float(np.mean(rates)) if rates else None
    started = time.perf_counter()

    # 2. the search over validation folds
    fixed = {} if len(subsets) > 1 else {"subset": subsets[0]}
    searcher = make_searcher(opts.space, subsets, opts.seed)
    scheduler = ASHAScheduler(time_attr="folds_done", metric=METRIC, mode="max", max_t=n_folds,
                              grace_period=min(opts.grace_folds, n_folds), reduction_factor=2)
    trainable = register_trainable(search_name, ctx, trial_resources(opts))
    launched = {**fixed, LAUNCHED_BY: ctx.search_dir}   # every trial's config names its search (audit)
    logger = MLflowSearchLogger(tracker, search_name, base_tags, echo=echo)
    # Tune's automatic TBX/CSV/JSON loggers are off (console.ray_to_file); result.json is kept
    # one line per result; in nested CV one per trial (K outer folds x trials x folds lines would bury the rest)
    callbacks = [logger, JsonLoggerCallback(), console.trial_lines(echo, n_folds, per_fold=opts.outer is None)]
    run_config = tune.RunConfig(
        name=search_name, storage_path=ctx.storage, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0)
    if opts.resume and tune.Tuner.can_restore(search_dir):
        echo(f"resuming {search_dir}: finished trials are kept, unfinished and errored ones continue")
        tuner = tune.Tuner.restore(search_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=launched)
        # Tuner.restore unpickles the old run config; give it a logger bound to this process's
        # MLflow client (the logger finds the earlier parent runs by tag, so nothing is duplicated).
        # A private attribute because no public API exists: Tuner.restore (Ray 2.60) takes no
        # run_config or callbacks, and a Tuner has no setter for them.
        tuner._local_tuner._run_config.callbacks = callbacks
    else:
        tuner = tune.Tuner(trainable, param_space=launched,
                           tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                       num_samples=opts.trials, reuse_actors=True),
                           run_config=run_config)
    grid = tuner.fit()
    timings["search_s"] = time.perf_counter() - started

    # 3. selection on validation folds only
    table = _trial_table(grid, fixed)
    complete = [row for row in table if row["folds_done"] == n_folds and np.isfinite(row["mean_val_cs_score"])
                and not row.get("failed")]
    if not complete:
        raise RuntimeError(f"no trial finished all {n_folds} folds; see {search_dir} and MLflow experiment {opts.experiment!r}"
                           + "".join(f"\n  {r['trial_id']}: {r['failed']}" for r in table if r.get("failed")))
    if opts.ensemble_top_k >= 2:
        ensemble = validate_ensemble(ctx, complete, opts.ensemble_top_k, tracker, base_tags)
        if ensemble is not None:
            table.append(ensemble)
    candidates = selection.ranked_candidates(table, opts.selection, n_folds)
    best = candidates[0]
    echo(_format_table(table, n_folds))
    echo(selection.describe(best, opts.selection, n_folds))

    # 4. refit on all non-holdout patients and score the holdout once: the selected candidate, or
    # (when its model fails on the refit) the next one in the selection's order, said so
    started = time.perf_counter()
    # an outer fold of nested CV logs its refit as a model but does not register it: its model is one
    # of K estimates of the protocol's performance, not the model a user should apply
    register = None if opts.outer is not None else (opts.register or opts.experiment)
    refit_failures = []
    for candidate in candidates:
        try:
            holdout = refit_and_score(ctx, ca, opts, candidate, tracker, search_name, base_tags, echo, timings,
                                      register=register)
        except MODEL_ERRORS as exc:
            cause = failure_cause(candidate["config"], "the refit", exc)
            refit_failures.append({"trial_id": candidate["trial_id"], "failed": cause})
            echo(f"{cause}; the next candidate in the selection's order is refitted instead")
            continue
        best = candidate
        break
    else:
        raise RuntimeError("every candidate failed its refit: " + "; ".join(f["failed"] for f in refit_failures))
    timings["refit_and_holdout_s"] = time.perf_counter() - started
    timings["holdout_s"] = timings["refit_and_holdout_s"] - timings["refit_pretrain_s"]
    summary = {"search": search_name, "search_dir": search_dir, "experiment": opts.experiment,
               "mlflow_uri": tracker.uri, "n_folds": n_folds, "trials": table, "best": best, "holdout": holdout,
               "selection": opts.selection, "refit_failures": refit_failures, "timings": timings}
    if opts.outer is not None and len(opts.space.families()) > 1:
        # nested CV reports every family: each other family's best complete trial is refitted and
        # scored on the outer test split once too (not registered, not exported)
        started = time.perf_counter()
        summary["holdout_by_family"] = score_other_families(ctx, ca, opts, table, best, holdout, tracker,
                                                            search_name, base_tags, echo)
        timings["other_families_s"] = time.perf_counter() - started
    storage_io.write_bytes(storage_io.join(search_dir, "summary.json"),
                           json.dumps(summary, indent=1, default=str).encode())
    return summary


def refit_and_score(ctx: SearchContext, ca, opts: SearchOptions, row: dict, tracker: Tracker, search_name: str,
                    base_tags: dict, echo, timings: dict | None = None, register: str | None = None,
                    per_family: bool = False) -> dict:
    """Refit ``row``'s configuration on every non-holdout patient (its refit pretraining first, when
    a member is impuTMAE) and score the holdout once (:func:`score_holdout`), the audit checked
    before and after. Raises what the model raises (:data:`MODEL_ERRORS` for a failing model)."""
    started = time.perf_counter()
    if model_families.family_of(row["config"]).pretrains(row["config"]):
        refit = pretrain_job(ctx, ca, parse_subset(row["config"]["subset"]), REFIT)
        pretrain_and_log([((row["config"]["subset"], REFIT), refit)], ctx, opts, tracker, base_tags, echo)
    if timings is not None:
        timings["refit_pretrain_s"] = timings.get("refit_pretrain_s", 0.0) + time.perf_counter() - started
    _check_holdout_isolation(ctx.search_dir, ca)            # before the holdout is touched...
    scored = score_holdout(ctx, row, tracker, search_name, base_tags, opts.n_boot, echo, register=register,
                           per_family=per_family, resources=trial_resources(opts))
    _check_holdout_isolation(ctx.search_dir, ca)            # ...and after (the refit fine-tuning)
    return scored


def trainable_name(search_name: str) -> str:
    """The name a search's trainable is registered under: unique to the search (and the same when
    it is resumed, as ``Tuner.restore`` requires)."""
    return f"cv_trial-{slug(search_name)}"


_REGISTRY_LOCK = threading.Lock()


def register_trainable(search_name: str, ctx: SearchContext, resources: dict) -> str:
    """Register this search's trainable (:func:`cv_trial` bound to ``ctx``, with a trial's
    ``resources``) in Tune's registry under :func:`trainable_name`; returns the name, which the
    Tuner is given instead of the function.

    Tune keeps one registry of trainables by name for all the Tuners of a driver. Given the
    function, every search registered it as ``cv_trial``: with two searches at once (nested CV's
    concurrent outer folds) the later registration won and a trial launched by one search could
    run the other's context: its cohort view, inner folds and outer test split. A name per search
    and a Tuner that looks its trainable up by name make that impossible; the lock serialises the
    registrations, since Tune's registry is not thread-safe (two at once fail with "dictionary
    changed size during iteration")."""
    name = trainable_name(search_name)
    trainable = tune.with_resources(tune.with_parameters(cv_trial, ctx=ctx), resources)
    with _REGISTRY_LOCK:
        tune.register_trainable(name, trainable)
    return name


def trial_resources(opts: SearchOptions) -> dict:
    """What one trial holds on the cluster, and what a refit's Ray task holds."""
    return {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}


def score_other_families(ctx: SearchContext, ca, opts: SearchOptions, table: list[dict], best: dict,
                         holdout: dict, tracker: Tracker, search_name: str, base_tags: dict, echo) -> dict:
    """Beside the selected configuration ``best`` (scored: ``holdout``), every other family's
    representative (:func:`family_representatives` of the trial ``table``: its best complete trial,
    else its best trial stopped early) refitted and scored on the holdout once
    (:func:`score_holdout` with ``per_family``: files ``holdout_predictions-<family>.npz``, stages
    ``holdout-<family>``). Returns ``{family: {trial_id, config, fixed_epoch, folds_done,
    stopped_early, predictions (the file), conditions}}``; the selected family's entry is the
    selected scoring itself (``holdout_predictions.npz``). An ensemble is not a family here: when
    it is selected, every searched family is scored."""
    out = {}
    for family, row in family_representatives(table, ctx.n_folds).items():
        entry = {"trial_id": row["trial_id"], "config": row["config"], "fixed_epoch": row["fixed_epoch"],
                 "mean_val_cs_score": row["mean_val_cs_score"], "std_val_cs_score": row["std_val_cs_score"],
                 "folds_done": row["folds_done"], "stopped_early": row["folds_done"] < ctx.n_folds}
        if row is best:
            out[family] = {**entry, "predictions": PREDICTIONS_FILE,
                           "conditions": holdout["conditions"]}
            continue
        try:
            scored = refit_and_score(ctx, ca, opts, row, tracker, search_name, base_tags, echo, per_family=True)
        except MODEL_ERRORS as exc:    # one family's failure costs only its own row
            out[family] = {**entry, "failed": failure_cause(row["config"], "the refit", exc)}
            echo(f"{out[family]['failed']}; the other families go on")
            continue
        out[family] = {**entry, "predictions": family_file(PREDICTIONS_FILE, family),
                       "conditions": scored["conditions"]}
    return out


def validate_ensemble(ctx: SearchContext, complete: list[dict], k: int, tracker: Tracker, base_tags: dict) -> dict | None:
    """The top-``k`` ensemble of the complete trials scored on every validation fold (a row of the
    trial table), logged to MLflow as a run of kind ``ensemble``; None when fewer than two qualify."""
    config = ensemble_config(complete, k)
    if config is None:
        return None
    fits = []
    for fold in range(ctx.n_folds):
        fit = fit_configuration(ctx, config, fold, device_for_trial())
        audit.record(ctx.search_dir, f"ensemble-fold{fold}", train=fit.train_ids, validate=fit.val_ids)
        fits.append(fit)
    row = ensemble_row(config, fits)
    run = tracker.start_run("ensemble", {**base_tags, "kind": "ensemble", "subset": config["subset"],
                                         "family": row["family"]},
                            params={"members": [m["trial_id"] for m in config["members"]], "k": k})
    tracker.log_metrics(run, {key: row[key] for key in ("fixed_epoch", "mean_val_cs_score", "std_val_cs_score",
                                                         "mean_val_c_index", "mean_val_ibs")})
    tracker.end_run(run)
    return row


def make_searcher(space: SearchSpace, subsets: list[str], seed: int) -> OptunaSearch | None:
    """Optuna (TPE) over the space, conditional on the family when it searches families (None when
    nothing is searched). A space of several families tries each family once first (its other
    parameters sampled), so a short search cannot miss one by chance; TPE takes over from there."""
    searched = space.searcher_space(subsets)
    if not searched:
        return None
    searched_families = space.families()
    first = [{model_families.PARAM: f} for f in searched_families] if len(searched_families) > 1 else None
    return OptunaSearch(space=searched, metric=METRIC, mode="max", seed=seed, points_to_evaluate=first)


def _check_holdout_isolation(search_dir: str, ca) -> None:
    strays = audit.check_launches(search_dir)
    if strays:
        raise RuntimeError(f"trials of this search ran with another search's context: {strays}")
    leaks = audit.check_holdout_isolation(search_dir, ca.ids[ca.holdout_indices()])
    if leaks:
        raise RuntimeError(f"holdout patients reached other stages: {leaks}")


def pretrain_job(ctx: SearchContext, ca, subset: tuple[str, ...], fold: int) -> PretrainJob:
    """The pretraining a (subset, fold) of this search needs (the job :func:`fit_mae_fold` will load)."""
    return PretrainJob.for_subset(ca, subset, fold, ctx.model, ctx.pretrain, ctx.seed, ctx.transforms)


def pretrain_and_log(items, ctx: SearchContext, opts: SearchOptions, tracker: Tracker, base_tags: dict, echo):
    results = run_pretraining([job for _, job in items], ctx.storage, workers=opts.workers,
                              use_gpu=opts.gpus_per_trial > 0, echo=echo)
    results = {job.key: results[job.key] for _, job in items}
    for (subset, fold), job in items:
        meta = results[job.key]
        fold_name = "refit" if fold == REFIT else f"fold{fold}"
        audit.record(ctx.search_dir, f"pretrain-{slug(subset)}-{fold_name}", train=meta["train_ids"])
        if meta.get("cached"):
            echo(f"pretraining {slug(subset)} {fold_name}: cached checkpoint reused ({job.key})")
        if tracker.find_run(search=base_tags["search"], kind="pretrain", pretrain_key=job.key):
            continue
        run = tracker.start_run(f"pretrain-{slug(subset)}-{fold_name}",
                                {**base_tags, "kind": "pretrain", "subset": subset, "fold": fold_name,
                                 "pretrain_key": job.key, "cached": meta.get("cached", False)},
                                params={"model": job.model, "pretrain": job.pretrain, "modalities": list(job.modalities),
                                        "n_patients": len(meta["train_ids"]), "workers": opts.workers})
        tracker.log_history(run, meta["history"])
        if meta.get("samples_per_s"):
            tracker.log_metrics(run, {"samples_per_s": meta["samples_per_s"]})
        tracker.end_run(run)
    return results


def _trial_table(grid, fixed: dict) -> list[dict]:
    rows = []
    for result in grid:
        m = result.metrics or {}
        config = {k: v for k, v in (result.config or {}).items() if not k.startswith("_")}
        config = {**fixed, **config}
        rows.append({"trial_id": m.get("trial_id", ""), "family": model_families.family_name(config), "config": config,
                     "folds_done": int(m.get("folds_done", 0)),
                     "mean_val_cs_score": float(m.get("mean_val_cs_score", np.nan)),
                     "std_val_cs_score": float(m.get("std_val_cs_score", np.nan)),
                     "mean_val_c_index": float(m.get("mean_val_c_index", np.nan)),
                     "mean_val_ibs": float(m.get("mean_val_ibs", np.nan)),
                     "fixed_epoch": int(m.get("fixed_epoch", 0)),
                     "mean_val_c_index_peek": float(m.get("mean_val_c_index_peek", np.nan)),
                     "mean_val_c_index_shared_epoch": float(m.get("mean_val_c_index_shared_epoch", np.nan)),
                     "constant_folds": float(m.get("mean_val_constant_predictions", 0.0)),
                     "failed": m.get("failed"),
                     "error": m.get("failed") or (None if result.error is None else str(result.error).splitlines()[0][:200])})
        if rows[-1]["failed"]:    # a failed configuration is never scored, whatever it reported before
            rows[-1].update(mean_val_cs_score=np.nan, mean_val_c_index=np.nan)
    return rows


def _format_table(rows: list[dict], n_folds: int) -> str:
    lines = [f"{'trial':<12} {'family':<8} {'folds':>5} {'epoch':>5} {'CS mean':>8} {'CS std':>7} {'C-index':>8} "
             f"{'C peek':>7} {'IBS':>6}  configuration"]
    for r in sorted(rows, key=lambda r: -np.nan_to_num(r["mean_val_cs_score"], nan=-1)):
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in r["config"].items() if k != "family")
        if "members" in r["config"]:  # an ensemble: its members' trial ids
            cfg = "members " + " ".join(m["trial_id"] for m in r["config"]["members"])
        lines.append(f"{r['trial_id']:<12} {r['family']:<8} {r['folds_done']:>2}/{n_folds:<2} {r['fixed_epoch']:>5} "
                     f"{r['mean_val_cs_score']:>8.3f} {r['std_val_cs_score']:>7.3f} {r['mean_val_c_index']:>8.3f} "
                     f"{r['mean_val_c_index_peek']:>7.3f} {r['mean_val_ibs']:>6.3f}  {cfg}"
                     + (f"  CONSTANT predictions in {r['constant_folds']:.0%} of folds"
                        if r.get("constant_folds", 0) > 0 else "")
                     + (f"  ERROR {r['error']}" if r["error"] else ""))
    return "\n".join(lines)


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)
