"""One trial = one configuration evaluated over all K validation folds.

After each fold the trial reports the running mean of the validation CS-score, so ASHA can stop a
weak configuration after two folds, and saves the finished folds in a Tune checkpoint, so a trial
that crashed and is retried (or a resumed search) does not redo them. The holdout split is never
touched here: fine-tuning and validation only index ``train_indices``/``validation_indices``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune

from impumae.engine import audit
from impumae.engine.cohort_view import fit_transforms, load_cohort_arrays, make_batchable, population, split_subset
from impumae.train.finetune_loop import FinetuneConfig, finetune
from impumae.engine.pretrain_jobs import PretrainJob, load_pretrained_mae
from impumae.modalities import parse_subset

FOLD_KEYS = ("val_c_index", "val_c_index_harrell", "val_ibs", "val_cs_score")


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
    fail_once_dir: str | None = None  # fault injection for tests: each trial raises once, at its second fold


def device_for_trial() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pretrain_job(ctx: SearchContext, ca, subset: tuple[str, ...], fold: int) -> PretrainJob:
    """The pretraining a (subset, fold) needs: its tokenised modalities, that fold's training patients."""
    tokenised, _ = split_subset(subset, ca.specs)
    return PretrainJob(ctx.cohort_url, ca.fingerprint, tuple(tokenised), fold, ctx.model, ctx.pretrain, ctx.seed)


def model_and_transforms(ctx: SearchContext, ca, subset, fold: int, pretrained: bool, device):
    """The fold's pretrained MAE and transforms; the clinical part (not pretrained, cheap) is fitted
    here on the same training patients."""
    _, clinical = split_subset(subset, ca.specs)
    mae, transforms = load_pretrained_mae(pretrain_job(ctx, ca, subset, fold), ctx.storage, device, pretrained=pretrained)
    if clinical:
        transforms.transforms.update(fit_transforms(ca, clinical, ca.train_indices(fold)).transforms)
    return mae, transforms


def run_fold(ctx: SearchContext, config: dict, fold: int, device, progress=None) -> dict:
    subset = parse_subset(config["subset"])
    ca = load_cohort_arrays(ctx.cohort_url, subset)
    train_idx, val_idx = ca.train_indices(fold), ca.validation_indices(fold)
    mae, transforms = model_and_transforms(ctx, ca, subset, fold, pretrained=bool(config.get("pretrained", True)), device=device)
    ft_train = population(ca, subset, train_idx, "finetune")
    ft_val = population(ca, subset, val_idx, "validate")
    cfg = finetune_config(ctx, config, seed=ctx.seed + fold)
    result = finetune(mae, make_batchable(ca, subset, transforms, ft_train, device),
                      make_batchable(ca, subset, transforms, ft_val, device), cfg, device, progress)
    audit.record(ctx.search_dir, f"finetune-{config.get('_trial_id', 'x')}-fold{fold}",
                 train=ca.ids[ft_train], validate=ca.ids[ft_val])
    return {"fold": fold, "best_epoch": result.best_epoch, "n_train": int(len(ft_train)), "n_val": int(len(ft_val)),
            "fold_history": result.history, **{k: result.best_metrics.get(k, float("nan")) for k in FOLD_KEYS}}


def finetune_config(ctx: SearchContext, config: dict, **overrides) -> FinetuneConfig:
    """The space's fine-tuning defaults, then the trial's sampled values, then ``overrides``.

    Without pretraining (the ablation) frozen encoders would be frozen random weights, so the
    freezing policy becomes ``none``.
    """
    merged = {**ctx.finetune, **config, **overrides}
    if not bool(config.get("pretrained", True)):
        merged["freeze"] = "none"
    return FinetuneConfig.from_dict(merged)


def _maybe_inject_failure(ctx: SearchContext, fold: int):
    """Fault injection (``SearchContext.fail_once_dir``): each trial raises once, at its second fold."""
    if not ctx.fail_once_dir or fold != 1:
        return
    marker = Path(ctx.fail_once_dir) / f"{tune.get_context().get_trial_id()}.failed"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("injected")
        raise RuntimeError(f"injected failure at fold {fold} (fail_once_dir)")


def summarise(folds: list[dict], n_folds: int) -> dict:
    out = {"folds_done": len(folds), "n_folds": n_folds, "fold": folds[-1]["fold"]}
    for key in FOLD_KEYS:
        values = np.array([f[key] for f in folds], dtype=float)
        out[f"mean_{key}"] = float(np.nanmean(values))
        out[f"std_{key}"] = float(np.nanstd(values))
    out["running_mean_val_cs_score"] = out["mean_val_cs_score"]
    out["mean_best_epoch"] = float(np.mean([f["best_epoch"] for f in folds]))
    return out


def cv_trial(config: dict, ctx: SearchContext):
    """The Ray Tune function trainable."""
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
        _maybe_inject_failure(ctx, fold)
        folds.append(run_fold(ctx, config, fold, device))
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "folds.json").write_text(json.dumps(folds))
            last = {k: v for k, v in folds[-1].items()}
            tune.report({**last, **summarise(folds, ctx.n_folds), **placement}, checkpoint=tune.Checkpoint.from_directory(d))
