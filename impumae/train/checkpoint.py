"""Checkpoints: one way to write and read them, one way to rebuild the MAE they hold.

Two payloads go through the same :func:`save` / :func:`load` (atomic, any local path or fsspec URL,
through :mod:`impumae.storage`; read back with ``weights_only=True``, so a checkpoint can never run
code):

- the **pretrained MAE** (``PRETRAINED_FORMAT``), what the engine caches per pretraining job:
  the weights, the specs and config that rebuild the model, the fold-fitted transforms it was
  trained with, the job that produced it, the ids of its training patients and the loss history;
- the **resume** checkpoint of the pretraining loop (``RESUME_FORMAT``): the same model fields plus
  the optimiser, the schedule, the RNG states and the epoch, written every few epochs.

:func:`build_mae` is the one place a :class:`MultimodalMAE` is rebuilt from a checkpoint.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch
from torch import nn

from impumae import storage
from impumae.data.transforms import FoldTransforms
from impumae.modalities import ModalitySpec
from impumae.model.mae import MAEConfig, MultimodalMAE

PRETRAINED_FORMAT = "impumae-pretrained-mae"
RESUME_FORMAT = "impumae-pretrain-checkpoint"


def save(url: str, payload: dict) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists and dicts only) atomically to ``url``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(url, buffer.getvalue())


def load(url: str, map_location="cpu") -> dict:
    """A checkpoint's payload, read with ``weights_only=True``."""
    if not storage.exists(url):
        raise FileNotFoundError(f"no checkpoint at {url}")
    return torch.load(io.BytesIO(storage.read_bytes(url)), map_location=map_location, weights_only=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and/or torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_fields(model: nn.Module) -> dict:
    """What rebuilds a model: its weights (on the CPU) and, for the MAE, its specs and config."""
    plain = unwrap(model)
    fields = {"model": {k: v.detach().cpu() for k, v in plain.state_dict().items()}}
    if isinstance(plain, MultimodalMAE):
        fields["mae_config"] = plain.cfg.to_dict()
        fields["specs"] = {n: s.to_dict() for n, s in plain.specs.items()}
    return fields


def build_mae(state: dict, load_weights: bool = True, seed: int | None = None) -> MultimodalMAE:
    """The MAE of a checkpoint payload (either format), on the CPU.

    ``load_weights=False`` gives the same architecture with fresh weights (the no-pretraining
    ablation); ``seed`` then fixes them, without touching the global torch RNG of the caller.
    """
    specs = {n: ModalitySpec.from_dict(d) for n, d in state["specs"].items()}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = MultimodalMAE(specs, MAEConfig.from_dict(state["mae_config"]))
    if load_weights:
        model.load_state_dict(state["model"])
    return model


@dataclass
class PretrainedMAE:
    """A pretrained MAE with everything its checkpoint says about it."""
    model: MultimodalMAE
    transforms: FoldTransforms
    job: dict = field(default_factory=dict)
    train_ids: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def save_pretrained(url: str, model: nn.Module, transforms: FoldTransforms, job: dict, train_ids: list[str],
                    history: list[dict], samples_per_s: float = 0.0, steady_samples_per_s: float = 0.0) -> None:
    """``samples_per_s``: the whole run's rate; ``steady_samples_per_s``: after the first epoch."""
    save(url, {"format": PRETRAINED_FORMAT, "job": job, **model_fields(model), "transforms": transforms.to_dict(),
               "train_ids": list(train_ids), "history": history, "samples_per_s": samples_per_s,
               "steady_samples_per_s": steady_samples_per_s})


def load_pretrained_state(url: str) -> dict:
    """The payload of a pretrained-MAE checkpoint; a clear error for any other file."""
    state = load(url)
    if state.get("format") != PRETRAINED_FORMAT:
        raise ValueError(f"{url} is not a pretrained impumae MAE checkpoint (format {state.get('format')!r})")
    return state


def load_pretrained(url: str, device: str | torch.device = "cpu", load_weights: bool = True,
                    seed: int | None = None) -> PretrainedMAE:
    """Rebuild the pretrained MAE at ``url`` (see :func:`build_mae`) with its fold-fitted transforms."""
    state = load_pretrained_state(url)
    return PretrainedMAE(model=build_mae(state, load_weights, seed).to(device),
                         transforms=FoldTransforms.from_dict(state["transforms"]), job=dict(state.get("job", {})),
                         train_ids=[str(i) for i in state["train_ids"]], history=list(state["history"]))


def save_resume(url: str, model: nn.Module, optimizer, scheduler, epoch: int, config: dict,
                history: list[dict]) -> None:
    """The pretraining loop's resume checkpoint: model fields, optimiser, schedule, RNG states, epoch."""
    save(url, {
        "format": RESUME_FORMAT, "format_version": 1, "epoch": int(epoch), **model_fields(model),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "rng": {"torch": torch.get_rng_state(),
                "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []},
        "config": config, "history": [dict(h) for h in history],
    })


def load_resume(url: str, map_location="cpu") -> dict:
    state = load(url, map_location)
    if state.get("format") != RESUME_FORMAT:
        raise ValueError(f"{url} is not an impumae pretraining checkpoint")
    return state
