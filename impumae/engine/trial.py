"""One trial = one configuration evaluated over all K validation folds.

Each fold records its validation curve (metrics after every fine-tuning epoch). After each fold
the trial averages the curves of the folds done so far, fixes the configuration's epoch where the
mean CS-score curve is highest (:mod:`impumae.engine.curves`) and reports the mean and SD over
folds of each metric at that epoch; ``running_mean_val_cs_score`` (ASHA's metric, so ASHA can
stop a weak configuration after two folds) is the mean CS-score there. The finished folds, whole
curves included, are saved in a Tune checkpoint, so a trial that crashed and is retried (or a
resumed search) does not redo them and recomputes the same epoch. The holdout split is never
touched here: fine-tuning and validation only index ``train_indices``/``validation_indices``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray
import torch
from ray import tune

from impumae.engine import audit
from impumae.data.cohort_view import REFIT, load_cohort_arrays
from impumae.engine.curves import summarise_folds, validation_curve
from impumae.engine.mae_fold import model_and_transforms
from impumae.engine.pretrain_jobs import PretrainJob
from impumae.families import FittedFold, family_name, family_of

# A configuration whose fit or predictions fail with one of these (non-finite curves, a singular
# matrix, an overflow) fails itself, not the search: its trial ends "failed" with the cause.
# Anything else (a lost node, a bug) is left to Tune's retries.
MODEL_ERRORS = (ValueError, ArithmeticError)
FAILED_SCORE = 0.0   # what a failed configuration reports to the scheduler and TPE (the worst CS-score)

LAUNCHED_BY = "_launched_by"   # a trial's config: the directory of the search whose Tuner started it

# Called with the fold number before each fold of a trial; None in production. Tests set it in the
# Ray workers (a worker_process_setup_hook) to make trials fail and check the retry path.
before_fold: Callable[[int], None] | None = None


@dataclass
class SearchContext:
    """Everything a trial needs that is not a searched hyperparameter (same for every trial)."""
    cohort_url: str
    n_folds: int
    storage: str
    search_dir: str
    model: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    seed: int = 0
    transforms: dict = field(default_factory=dict)   # the space's transforms: (TransformOptions fields)
    outer: dict | None = None   # nested CV: the outer split every load of the cohort applies (load_cohort_arrays)

    def pretrained_model(self, ca, subset, fold: int, pretrained: bool, device):
        """The search's pretrained MAE of (subset, fold) (fresh weights if not ``pretrained``) and the
        transforms of every modality of ``subset``: what a family that needs pretraining fine-tunes
        (:class:`impumae.families.FitContext`). The job must have run (the search pretrains first)."""
        job = PretrainJob.for_subset(ca, subset, fold, self.model, self.pretrain, self.seed, self.transforms)
        return model_and_transforms(ca, subset, job, self.storage, pretrained, device)


def device_for_trial() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit_configuration(ctx: SearchContext, config: dict, fold: int, device, **overrides) -> FittedFold:
    """A configuration of any model family fitted with the search's fixed settings, by its family
    (:meth:`impumae.families.Family.fit`): a trial's fold, or the refit. ``overrides``: the
    seed (default ``ctx.seed + fold``) and an epoch-wise family's fine-tuning fields (``stop_after``)."""
    return family_of(config).fit(ctx, config, fold, device, **overrides)


def fit_refit(ctx: SearchContext, config: dict, epochs: int, resources: dict | None = None) -> FittedFold:
    """The refit of ``config`` on every non-holdout patient, impuTMAE for ``epochs`` epochs (what
    the holdout scores).

    With Ray up and ``resources`` given (a trial's: ``{"cpu": .., "gpu": ..}``) the fit runs in a
    Ray task with those resources: concurrent refits (nested CV drives its outer folds from threads
    of one driver) then train in parallel processes instead of taking turns in the driver's
    interpreter, and on a cluster they run on a worker's CPU or GPU rather than the head's. The fit
    comes back on the CPU without its cohort arrays, which are joined again here from the same
    URL, subset and outer split (:func:`load_cohort_arrays`, read once per process). Without Ray,
    or without ``resources``, it is fitted in this process; both give the same fit."""
    if resources is None or not ray.is_initialized():
        return fit_configuration(ctx, config, REFIT, device_for_trial(), stop_after=epochs, seed=ctx.seed)
    task = ray.remote(num_cpus=resources.get("cpu", 1.0), num_gpus=resources.get("gpu", 0.0), max_retries=1)(_refit_task)
    fit = ray.get(task.remote(ctx, config, epochs, max(1, int(resources.get("cpu", 1.0)))))
    return fit.with_cohort(load_cohort_arrays(ctx.cohort_url, fit.subset, ctx.outer))


def _refit_task(ctx: SearchContext, config: dict, epochs: int, threads: int) -> FittedFold:
    torch.set_num_threads(threads)
    fit = fit_configuration(ctx, config, REFIT, device_for_trial(), stop_after=epochs, seed=ctx.seed)
    return fit.without_cohort()   # its model on the CPU, no cohort arrays: sent back to the driver


def run_fold(ctx: SearchContext, config: dict, fold: int, device) -> dict:
    """One validation fold of a trial: what it reports to Tune. Its audit record goes to the
    directory of the search that launched the trial (``config[LAUNCHED_BY]``), with the context it
    ran with, so a trial that ran another search's data is caught wherever it ran
    (:func:`impumae.engine.audit.check_launches`)."""
    fit = fit_configuration(ctx, config, fold, device)
    launched_by = config.get(LAUNCHED_BY, ctx.search_dir)
    audit.record(launched_by, f"finetune-{config.get('_trial_id', 'x')}-fold{fold}",
                 meta={"launched_by": launched_by, "context": ctx.search_dir},
                 train=fit.train_ids, validate=fit.val_ids)
    return {"fold": fold, "n_train": int(len(fit.train_rows)), "n_val": int(len(fit.val_rows)),
            "fold_history": fit.history}


def summarise(folds: list[dict], n_folds: int) -> dict:
    """What a trial reports after its latest fold: progress, and :func:`summarise_folds` of the
    validation curves of every fold done so far (``fixed_epoch``, ``mean_*``/``std_*`` at it,
    ``mean_*_peek``, ``fold_mean_curve``); ``running_mean_val_cs_score`` = ``mean_val_cs_score``."""
    summary = summarise_folds([validation_curve(f["fold_history"]) for f in folds])
    return {"folds_done": len(folds), "n_folds": n_folds, "fold": folds[-1]["fold"], **summary,
            "running_mean_val_cs_score": summary["mean_val_cs_score"]}


def check_launcher(config: dict, ctx: SearchContext) -> None:
    """A trial runs only with the context of the search that launched it: its data, folds and outer
    split. Raises (before any patient is touched) when the trainable Tune started belongs to
    another search of the same driver."""
    launched_by = config.get(LAUNCHED_BY)
    if launched_by is not None and launched_by != ctx.search_dir:
        raise RuntimeError(f"trial of the search {launched_by} was started with the context of the search "
                           f"{ctx.search_dir}: concurrent searches must register differently named trainables "
                           f"(impumae.engine.search.trainable_name)")


def failure_cause(config: dict, fold: int | str, exc: BaseException) -> str:
    """One line: where a configuration failed (``fold``: a fold number, or e.g. "refit"), its family, why."""
    fold_name = f"fold {fold}" if isinstance(fold, int) and fold >= 0 else str(fold)
    exc = getattr(exc, "cause", None) or exc      # a Ray task's error: the model's own exception
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"{family_name(config)} failed in {fold_name}: {type(exc).__name__}: {message[:300]}"


def cv_trial(config: dict, ctx: SearchContext):
    """The Ray Tune function trainable."""
    check_launcher(config, ctx)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    config = {**config, "_trial_id": tune.get_context().get_trial_id()}
    folds: list[dict] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            folds = json.loads((Path(d) / "folds.json").read_text())
    device = device_for_trial()
    # where the trial ran: Tune's share of the node (e.g. {'CPU': 0.5, 'GPU': 0.25}) and the GPU(s) it was given
    placement = {"device": str(device), "resources": ray.get_runtime_context().get_assigned_resources(),
                 "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    for fold in range(len(folds), ctx.n_folds):
        if before_fold is not None:
            before_fold(fold)
        try:
            folds.append(run_fold(ctx, config, fold, device))
        except MODEL_ERRORS as exc:
            # reported as a result (no Ray traceback); the search goes on with the other configurations
            tune.report({"failed": failure_cause(config, fold, exc), "fold": fold, "folds_done": len(folds),
                         "n_folds": ctx.n_folds, "fixed_epoch": 0, "running_mean_val_cs_score": FAILED_SCORE,
                         **placement})
            return
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "folds.json").write_text(json.dumps(folds))
            last = {k: v for k, v in folds[-1].items()}
            tune.report({**last, **summarise(folds, ctx.n_folds), **placement}, checkpoint=tune.Checkpoint.from_directory(d))
