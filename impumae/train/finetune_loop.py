"""Survival fine-tuning of one fold: a plain PyTorch loop (cheaper than a TorchTrainer per fold).

The loop trains ``cfg.epochs`` epochs on one cosine learning-rate schedule and records the
validation metrics after every epoch (the history: the fold's validation curve). It never picks an
epoch itself: the epoch of a configuration is chosen from the mean curve over its folds
(:mod:`impumae.engine.curves`), and the refit trains that many epochs with ``cfg.stop_after`` on
the same schedule, so it reproduces the model whose curve was measured at that epoch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from impumae.data.cohort_view import Batchable, StreamedBatchable, iter_batches
from impumae.model import MultimodalMAE, SurvivalConfig, SurvivalModel
from impumae.survival.bins import TimeBins
from impumae.survival.losses import nll_logistic_hazard
from impumae.survival.metrics import evaluate


@dataclass
class FinetuneConfig:
    epochs: int = 20                 # length of the cosine learning-rate schedule
    stop_after: int | None = None    # stop after this many epochs of that schedule (None: all of it)
    batch_size: int = 24
    lr: float = 1e-4
    weight_decay: float = 1e-2
    dropout: float = 0.1
    freeze: str = "paper"
    imputation: str = "decoder"
    n_bins: int = 20
    seed: int = 0
    km_init: bool = False          # start the hazard head's bias at the training Kaplan-Meier hazard
    linear_path: bool = False      # SurvivalConfig.linear_path: a zero-initialised linear risk over the features
    linear_l2: float = 0.0         # SurvivalConfig.linear_l2: its L2, added to the loss
    # the linear path's learning rate = lr * linear_lr_mult. Adam moves a weight by about lr per
    # step, so at lr 3e-4 and ~70 steps a zero-started linear weight cannot travel past ~0.02:
    # early stopping, not its L2, would decide how far the linear model gets (docs/results-gbmlgg.md)
    linear_lr_mult: float = 1.0
    # before the first epoch, fit the linear path to convergence (full-batch L-BFGS of the fine-tuning
    # loss over the linear weights alone, the rest of the model held at its starting output): the
    # fine-tuning then starts from a penalised linear logistic-hazard model and the transformer
    # learns what it adds (warm_start_linear_path)
    linear_warm_start: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class FinetuneResult:
    model: SurvivalModel
    bins: TimeBins
    history: list[dict] = field(default_factory=list)  # one row per epoch trained: train_loss, val_* metrics


def build_survival_model(mae: MultimodalMAE, cfg: FinetuneConfig, n_clinical: int) -> SurvivalModel:
    return SurvivalModel(mae, SurvivalConfig(n_bins=cfg.n_bins, dropout=cfg.dropout, freeze=cfg.freeze,
                                             imputation=cfg.imputation, n_clinical=n_clinical,
                                             linear_path=cfg.linear_path, linear_l2=cfg.linear_l2))


@torch.no_grad()
def predict_logits(model: SurvivalModel, data: Batchable | StreamedBatchable, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    groups = [np.arange(start, min(start + batch_size, len(data))) for start in range(0, len(data), batch_size)]
    for _, part in iter_batches(data, groups):
        out.append(model(part.x, part.present, part.clinical).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.n_bins), np.float32)


def finetune(mae: MultimodalMAE, train: Batchable | StreamedBatchable, val: Batchable | StreamedBatchable | None, cfg: FinetuneConfig,
             device: str | torch.device = "cpu", progress=None) -> FinetuneResult:
    """Fine-tune a copy of ``mae`` for survival on ``train``, scoring ``val`` (if any) after every epoch.

    Trains ``cfg.stop_after`` epochs (default ``cfg.epochs``) of a cosine schedule over
    ``cfg.epochs`` epochs and returns the model as it is after the last epoch trained.

    Seeded by ``cfg.seed`` (new heads, dropout, batch order) inside a fork of the torch RNG, so the
    caller's random state is the same afterwards."""
    if len(train) == 0:
        raise ValueError("fine-tuning got no training patients (none has the anchor modality?)")
    if cfg.stop_after is not None and not 1 <= cfg.stop_after <= cfg.epochs:
        raise ValueError(f"stop_after={cfg.stop_after}: must be between 1 and epochs={cfg.epochs}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        return _seeded_finetune(mae, train, val, cfg, device, progress)


def _seeded_finetune(mae: MultimodalMAE, train: Batchable, val: Batchable | None, cfg: FinetuneConfig,
                     device: torch.device, progress) -> FinetuneResult:
    generator = torch.Generator().manual_seed(cfg.seed)
    n_clinical = 0 if train.clinical is None else train.clinical.shape[1]
    model = build_survival_model(copy.deepcopy(mae), cfg, n_clinical).to(device)
    bins = TimeBins(cfg.n_bins).fit(train.time)
    if cfg.km_init:
        model.init_hazard_bias(bins.baseline_hazard_logits(train.time, train.event))
    idx, event = bins.transform(train.time, train.event)
    idx_t = torch.as_tensor(idx, device=device)
    event_t = torch.as_tensor(event, device=device, dtype=torch.float32)
    if cfg.linear_warm_start and cfg.linear_path:
        warm_start_linear_path(model, train, idx_t, event_t)
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.weight_decay, linear_lr=cfg.lr * cfg.linear_lr_mult),
                                  lr=cfg.lr)
    steps_per_epoch = max(1, int(np.ceil(len(train) / cfg.batch_size)))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs * steps_per_epoch))

    result = FinetuneResult(model=model, bins=bins)
    last_epoch = cfg.epochs if cfg.stop_after is None else cfg.stop_after
    for epoch in range(1, last_epoch + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator).numpy()
        losses = []
        groups = [order[start:start + cfg.batch_size] for start in range(0, len(order), cfg.batch_size)]
        for rows, part in iter_batches(train, groups):
            logits = model(part.x, part.present, part.clinical)
            loss = nll_logistic_hazard(logits.float(), idx_t[rows], event_t[rows]) + model.penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        if val is not None and len(val):
            metrics = evaluate(predict_logits(model, val), bins.cuts, val.time, val.event, train.time, train.event,
                               from_logits=True)
            row.update({f"val_{k}": v for k, v in metrics.items()})
        result.history.append(row)
        if progress is not None:
            progress(row)
    return result


def warm_start_linear_path(model: SurvivalModel, train: Batchable, idx: torch.Tensor, event: torch.Tensor,
                           max_iter: int = 100) -> None:
    """Set the linear path's weights ``w`` to the minimiser of the fine-tuning loss over ``w`` alone
    on every training patient: mean logistic-hazard NLL of ``rest + F w`` plus ``linear_l2 ||w||^2``
    (convex), where ``rest`` is the model's output without the path (eval mode: no dropout) and ``F``
    its features (:meth:`SurvivalModel.linear_features`). Full-batch L-BFGS. Leaves the rest of
    the model and the random-number streams as they were."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        weight = model.linear.weight
        saved = weight.detach().clone()
        weight.zero_()
        rest = model(train.x, train.present, train.clinical).float()
        features = model.linear_features(train.x, train.present, train.clinical).float()
        weight.copy_(saved)
    w = saved.float().reshape(-1).clone().requires_grad_(True)
    l2 = float(model.cfg.linear_l2)
    solver = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                               line_search_fn="strong_wolfe")

    def closure():
        solver.zero_grad()
        loss = nll_logistic_hazard(rest + (features @ w)[:, None], idx, event) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    solver.step(closure)
    with torch.no_grad():
        model.linear.weight.copy_(w.detach().reshape_as(model.linear.weight).to(model.linear.weight.dtype))
    model.train(was_training)
