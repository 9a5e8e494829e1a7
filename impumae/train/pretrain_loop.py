"""Single-process masked pretraining of :class:`impumae.model.MultimodalMAE` (no Ray here).

The distributed engine calls :func:`pretrain_epoch` inside each Ray Train worker with a DDP-wrapped
model and ``rank``/``world_size``; everything else (cohort tensors resident on the device, shuffled
index minibatches, AdamW + cosine schedule, bf16 autocast on CUDA, resumable checkpoints through
:mod:`impumae.train.checkpoint`) is plain PyTorch.

Randomness is derived from ``(seed, epoch, rank)`` at the start of each epoch: the shuffling order
from ``(seed, epoch)`` (the same on every rank, so the shards are disjoint), the masking noise and
image choice from ``(seed, epoch, rank)``. A run resumed from the checkpoint of epoch e therefore
draws exactly what an uninterrupted run draws from epoch e on. The global torch RNG states are
saved too (as tensors) and restored, for any module that draws from them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from impumae import storage
from impumae.data.cohort_view import StreamedBatchable, iter_batches
from impumae.model.mae import draw_hidden_modalities, eval_mode, visible_tokens
from impumae.train import checkpoint
from impumae.train.checkpoint import unwrap


@dataclass
class PretrainConfig:
    epochs: int = 800
    batch_size: int = 24
    lr: float = 1e-3
    weight_decay: float = 1e-2
    mask_ratio: float = 0.5
    hide_modality_prob: float = 0.25  # hide a whole present modality this often (0 = the paper)
    warmup_epochs: int = 0
    seed: int = 0
    bf16: bool | None = None      # None = auto: bf16 autocast on CUDA only
    checkpoint_every: int = 1     # epochs between checkpoints (the last epoch is always written)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Data resident on the device
# ---------------------------------------------------------------------------------------------

class ResidentData:
    """The training patients' tensors on one device, served as shuffled index minibatches.

    x: ``{name: [N, *shape]}`` (numpy or torch; images may stay uint8), present: ``{name: [N] bool}``.
    Only patients with at least one present modality among ``modalities`` (default: all of ``x``)
    are kept. Values of missing samples are set to 0 (the model ignores them anyway); present
    samples must be finite.
    """

    def __init__(self, x: dict, present: dict, device: str | torch.device = "cpu",
                 modalities: list[str] | None = None):
        self.device = torch.device(device)
        self.names = list(modalities or x)
        pres = {n: torch.as_tensor(np.asarray(present[n]) if not torch.is_tensor(present[n]) else present[n]).bool().reshape(-1)
                for n in self.names}
        any_present = torch.stack([pres[n] for n in self.names]).any(0)
        self.rows = torch.nonzero(any_present).reshape(-1)  # positions in the caller's arrays
        self.present = {n: pres[n][self.rows].to(self.device) for n in self.names}
        self.x = {}
        for n in self.names:
            values = torch.as_tensor(x[n])
            values = values.index_select(0, self.rows.to(values.device))
            self.x[n] = _checked(n, values, self.present[n].to(values.device)).to(self.device)

    def __len__(self) -> int:
        return int(self.rows.numel())

    def shard(self, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """This rank's patients for ``epoch`` (indices into this object), shuffled.

        Like ``DistributedSampler(shuffle=True, drop_last=False)``: one permutation per epoch shared
        by all ranks, padded by repeating its start to a multiple of ``world_size`` so that every
        rank gets the same number of patients, then rank r takes positions r, r + world_size, ...
        Without padding (N divisible by world_size) the shards partition the patients.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        g = torch.Generator().manual_seed(_mix(seed, epoch))
        order = torch.randperm(len(self), generator=g)
        total = math.ceil(len(self) / world_size) * world_size
        if total > len(self):
            order = torch.cat([order, order[: total - len(self)]])
        return order[rank::world_size]

    def num_batches(self, batch_size: int, world_size: int = 1) -> int:
        return math.ceil(math.ceil(len(self) / world_size) / batch_size)

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        order = self.shard(seed, epoch, rank, world_size).to(self.device)
        for start in range(0, order.numel(), batch_size):
            idx = order[start:start + batch_size]
            yield ({n: v.index_select(0, idx) for n, v in self.x.items()},
                   {n: v.index_select(0, idx) for n, v in self.present.items()})


def _checked(name: str, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``values`` with missing samples set to 0; refuses non-finite values in present samples."""
    if values.is_floating_point():
        finite = torch.isfinite(values).flatten(1).all(1)
        if not bool((finite | ~present).all()):
            raise ValueError(f"modality {name!r}: present samples hold non-finite values; "
                             "apply the fold-fitted transforms first")
        keep = present.reshape(-1, *([1] * (values.dim() - 1)))
        values = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return values


class StreamedData(ResidentData):
    """The training patients of a :class:`StreamedBatchable`: the same patients, order and batches as
    :class:`ResidentData` over the same rows (equal tensors, tested), but a streamed modality's
    values are read from the store per batch, a background thread preparing the next ones
    (:func:`impumae.data.cohort_view.iter_batches`). Only presence is held for every patient."""

    def __init__(self, source: StreamedBatchable, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.source = source
        self.names = list(source.order)
        pres = {n: source.present[n].cpu().bool().reshape(-1) for n in self.names}
        self.rows = torch.nonzero(torch.stack([pres[n] for n in self.names]).any(0)).reshape(-1)
        self.present = {n: pres[n][self.rows].to(self.device) for n in self.names}

    @property
    def x(self) -> dict[str, torch.Tensor]:
        """Every patient's tensors at once (materialised: only for small checks)."""
        return self._take(np.arange(len(self)))[0]

    def _take(self, positions: np.ndarray):
        part = self.source.take(self.rows.numpy()[positions])
        return self._clean(part)

    def _clean(self, part):
        present = {n: part.present[n].to(self.device) for n in self.names}
        x = {n: _checked(n, part.x[n].to(self.device), present[n]) for n in self.names}
        return x, present

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1):
        order = self.shard(seed, epoch, rank, world_size).numpy()
        rows = self.rows.numpy()
        groups = [rows[order[start:start + batch_size]] for start in range(0, len(order), batch_size)]
        for _, part in iter_batches(self.source, groups):
            yield self._clean(part)

    def chunks(self, size: int = 256):
        """Every patient once, in order, ``size`` at a time: ``(x, present)``."""
        rows = self.rows.numpy()
        groups = [rows[start:start + size] for start in range(0, len(rows), size)]
        for _, part in iter_batches(self.source, groups):
            yield self._clean(part)


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from a few integers."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_generator(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The masking / image-choice generator of one epoch on one rank."""
    return torch.Generator(device=device).manual_seed(_mix(seed, epoch, rank, 1))


# ---------------------------------------------------------------------------------------------
# Optimiser, schedule, one epoch
# ---------------------------------------------------------------------------------------------

def make_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on the Linear weights only (not biases, norms, CLS / mask tokens, embeddings)."""
    params = [p for p in model.parameters() if p.requires_grad]
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay = [p for p in params if id(p) in linear_weights]
    no_decay = [p for p in params if id(p) not in linear_weights]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=fused or None)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: PretrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup over ``warmup_epochs``, then cosine decay to 0 at the end."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = max(1, cfg.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def use_bf16(cfg: PretrainConfig, device: torch.device) -> bool:
    return device.type == "cuda" if cfg.bf16 is None else bool(cfg.bf16)


def pretrain_step(model: nn.Module, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                  optimizer: torch.optim.Optimizer, scheduler, cfg: PretrainConfig,
                  generator: torch.Generator | None, bf16: bool) -> torch.Tensor:
    """One optimiser step on one minibatch. Returns [1 + M] detached losses (total, then per modality)."""
    device_type = next(iter(x.values())).device.type
    hidden = draw_hidden_modalities(present, cfg.hide_modality_prob, generator)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, present, mask_ratio=cfg.mask_ratio, generator=generator, hidden=hidden, predict_missing=False)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return torch.stack([out.loss.detach(), *(v.detach() for v in out.losses.values())]).float()


def pretrain_epoch(model: nn.Module, data: ResidentData, optimizer: torch.optim.Optimizer,
                   scheduler, cfg: PretrainConfig, generator: torch.Generator | None,
                   epoch: int = 0, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """One pass over this rank's shard. Returns the mean over steps of ``loss`` and ``loss_<name>``
    (``<name>`` in the model's modality order)."""
    model.train()
    bf16 = use_bf16(cfg, data.device)
    totals, steps = None, 0
    for x, present in data.batches(cfg.batch_size, cfg.seed, epoch, rank, world_size):
        step_losses = pretrain_step(model, x, present, optimizer, scheduler, cfg, generator, bf16)
        totals = step_losses if totals is None else totals + step_losses
        steps += 1
    if steps == 0:
        return {}
    means = (totals / steps).tolist()  # one device sync per epoch
    names = unwrap(model).names
    return {"loss": means[0], **{f"loss_{n}": v for n, v in zip(names, means[1:])}}


# ---------------------------------------------------------------------------------------------
# What pretraining needs of a modality
# ---------------------------------------------------------------------------------------------

MIN_TOKENS = 4  # fewer tokens leave too little to mask and to see: the encoder learns nothing


def check_maskable(specs: dict, modalities, mask_ratio: float) -> None:
    """Refuse a tokenised modality that masked pretraining cannot learn from: fewer than
    ``MIN_TOKENS`` tokens, or a mask ratio that masks none of its tokens (``round(N * mask_ratio) == 0``).
    A one-token modality would otherwise train at loss 0.0000 every epoch, silently."""
    for name in modalities:
        spec = specs[name]
        if not spec.tokenised:
            continue
        n_tokens = spec.n_tokens
        size = f"{spec.shape[0]} features" if len(spec.shape) == 1 else f"shape {'x'.join(map(str, spec.shape))}"
        what = f"modality {name!r} ({size}, patch {spec.patch}) has {n_tokens} token(s)"
        if n_tokens < MIN_TOKENS:
            raise ValueError(f"{what}; masked pretraining needs at least {MIN_TOKENS}: build the cohort with a "
                             f"smaller patch (--patch {name}=P when building)")
        if visible_tokens(n_tokens, mask_ratio) == n_tokens:
            raise ValueError(f"{what}; mask ratio {mask_ratio} masks none of them: raise pretrain.mask_ratio "
                             f"to at least {0.5 / n_tokens:.3g} or build with a smaller patch (--patch {name}=P)")


# ---------------------------------------------------------------------------------------------
# Reconstruction against the training mean
# ---------------------------------------------------------------------------------------------

def model_space_patches(model: nn.Module, name: str, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The present samples' model-space patches of one modality, ``[n_present * items, N, patch_dim]``
    (every item of a stacked kind)."""
    mae = unwrap(model)
    spec, kind = mae.specs[name], mae.kinds[name]
    present = present.reshape(-1).bool()
    values = x[present.to(x.device)]
    if kind.stacked:
        values = values.reshape(-1, *kind.item_shape(spec))
    values = mae.prepare_input(name, values, torch.ones(values.shape[0], dtype=torch.bool, device=values.device),
                               shape=kind.item_shape(spec))
    return kind.patchify(spec, values).float()


def training_patch_means(model: nn.Module, x: dict[str, torch.Tensor],
                         present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per modality, the per-position mean ``[N, patch_dim]`` of the training patients' model-space
    patches: the reconstruction that knows nothing of the patient (~0 for standardised tabular data,
    not for volumes or images)."""
    with torch.no_grad():
        means = {}
        for name in unwrap(model).names:
            patches = model_space_patches(model, name, x[name], present[name])
            if patches.shape[0] == 0:
                raise ValueError(f"modality {name!r}: no training patient has it; no training mean")
            means[name] = patches.mean(0)
    return means


STREAMED_EVAL_BATCH = 32  # patients per chunk when streamed data are evaluated: a float copy of 256 slides is GBs


def streamed_patch_means(model: nn.Module, data: StreamedData, chunk: int = STREAMED_EVAL_BATCH) -> dict[str, torch.Tensor]:
    """:func:`training_patch_means` of a :class:`StreamedData`, summed over chunks of patients."""
    with torch.no_grad():
        sums, counts = {}, {}
        for x, present in data.chunks(chunk):
            for name in unwrap(model).names:
                patches = model_space_patches(model, name, x[name], present[name])
                sums[name] = patches.sum(0) + sums.get(name, 0)
                counts[name] = counts.get(name, 0) + patches.shape[0]
        for name in unwrap(model).names:
            if not counts.get(name):
                raise ValueError(f"modality {name!r}: no training patient has it; no training mean")
        return {name: sums[name] / counts[name] for name in unwrap(model).names}


def data_patch_means(model: nn.Module, data: ResidentData) -> dict[str, torch.Tensor]:
    """The training patients' mean patches of resident or streamed data."""
    if isinstance(data, StreamedData):
        return streamed_patch_means(model, data)
    return training_patch_means(model, data.x, data.present)


def recon_vs_mean(model: nn.Module, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                  train_means: dict[str, torch.Tensor], mask_ratio: float, seed: int = 0,
                  batch_size: int = 256) -> dict[str, float]:
    """Per modality: MSE of the model's reconstruction / MSE of predicting ``train_means``, both on the
    same masked tokens of the present samples of ``x`` (tabular padding excluded).

    Eval mode, no modality hidden, a fixed mask drawn from ``seed`` at ``mask_ratio`` (the same tokens
    at every call, so values at different epochs compare). 1.0 = no better than the training mean,
    0 = perfect. NaN for a modality with no present sample or nothing masked.
    """
    mae = unwrap(model)
    device = x.device if isinstance(x, StreamedBatchable) else next(iter(x.values())).device
    generator = torch.Generator(device=device).manual_seed(_mix(seed, 2))
    model_err = {n: torch.zeros((), device=device) for n in mae.names}
    mean_err = {n: torch.zeros((), device=device) for n in mae.names}
    streamed = isinstance(x, StreamedBatchable)   # read per batch from the store (present: None)
    if streamed:
        batch_size = min(batch_size, STREAMED_EVAL_BATCH)  # (the masks drawn then differ from a resident run's)
    n_samples = len(x) if streamed else next(iter(x.values())).shape[0]
    groups = [np.arange(start, min(start + batch_size, n_samples)) for start in range(0, n_samples, batch_size)]
    with eval_mode(mae):
        for rows, part in (iter_batches(x, groups) if streamed else ((g, None) for g in groups)):
            if streamed:
                xb, pb = {n: part.x[n] for n in mae.names}, {n: part.present[n] for n in mae.names}
            else:
                xb = {n: x[n][rows[0]:rows[-1] + 1] for n in mae.names}
                pb = {n: present[n][rows[0]:rows[-1] + 1] for n in mae.names}
            out = mae(xb, pb, mask_ratio=mask_ratio, generator=generator, predict_missing=False)
            for name in mae.names:
                mean = train_means[name].to(device)
                weight = out.counted[name].float()[:, :, None]
                value_mask = mae.value_mask(name)
                if value_mask is not None:
                    weight = weight * value_mask
                target = out.target[name].float()
                model_err[name] += (((out.pred[name].float() - target) ** 2) * weight).sum()
                mean_err[name] += (((mean - target) ** 2) * weight).sum()
    return {n: float(model_err[n] / mean_err[n]) if float(mean_err[n]) > 0 else float("nan") for n in mae.names}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def fit_cross_linear(model: nn.Module, data: ResidentData) -> dict[str, float]:
    """With ``MAEConfig.cross_linear == "ridge"``: set each cross-modal map to the ridge regression of its
    modality on the map's inputs (``MultimodalMAE.cross_linear_inputs``), fitted on the pretraining
    patients who have the modality and a source (``impumae.train.imputers.fit_linear_map``: standardised
    inputs, one penalty by 5-fold CV). Returns ``{modality: penalty}``; ``{}`` for the other modes."""
    from impumae.train.imputers import fit_linear_map

    if getattr(model, "cfg", None) is None or model.cfg.cross_linear != "ridge":
        return {}
    penalties = {}
    for name, sources in model.cross_sources.items():
        present = data.present
        rows = present[name] & torch.stack([present[o] for o in sources]).any(0)
        inputs = {o: data.x[o][rows].float() for o in sources}
        features = model.cross_linear_inputs(name, inputs, {o: present[o][rows] for o in sources})
        target = data.x[name][rows].float().reshape(int(rows.sum()), -1)
        weight, bias, penalties[name] = fit_linear_map(features.cpu().numpy(), target.cpu().numpy())
        linear = model.cross_linear[name]
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
            linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
    return penalties


def pretrain(model: nn.Module, data: ResidentData, cfg: PretrainConfig, checkpoint_path: str | None = None,
             resume: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None,
             rank: int = 0, world_size: int = 1, evaluate: Callable[[int], dict] | None = None,
             evaluate_every: int = 1) -> list[dict]:
    """Pretrain for ``cfg.epochs`` epochs; returns the history (one dict of mean losses per epoch).

    With ``checkpoint_path`` and ``resume``, an existing checkpoint there is loaded and training
    continues after its epoch. ``evaluate(epoch) -> metrics`` (e.g. :func:`recon_vs_mean`), when
    given, runs every ``evaluate_every`` epochs and after the last; its metrics join that epoch's
    history row. ``on_epoch_end(epoch, row)`` is called after each epoch with the row (without ``epoch``).
    """
    device = data.device
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, data.num_batches(cfg.batch_size, world_size))
    history: list[dict] = []
    start = 0
    if checkpoint_path and resume and storage.exists(checkpoint_path):
        state = checkpoint.load_resume(checkpoint_path, map_location=device)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"]:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        history, start = list(state["history"]), int(state["epoch"]) + 1
    if start == 0:
        fit_cross_linear(unwrap(model), data)
    for epoch in range(start, cfg.epochs):
        generator = epoch_generator(cfg.seed, epoch, rank, device)
        losses = pretrain_epoch(model, data, optimizer, scheduler, cfg, generator, epoch, rank, world_size)
        last = epoch == cfg.epochs - 1
        if evaluate is not None and (last or (epoch + 1) % evaluate_every == 0):
            losses = {**losses, **evaluate(epoch)}
        history.append({"epoch": epoch, **losses})
        if checkpoint_path and rank == 0 and (last or (epoch + 1) % cfg.checkpoint_every == 0):
            checkpoint.save_resume(checkpoint_path, model, optimizer, scheduler, epoch, cfg.to_dict(), history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, losses)
    return history
