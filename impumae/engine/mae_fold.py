"""impuTMAE's fold from the engine's side: the pretrained MAE of a (subset, fold) from the cache.

The ``impumae`` family (:mod:`impumae.families.mae`) fine-tunes a fold's pretrained MAE; where that
MAE lives is the engine's business (:mod:`impumae.engine.pretrain_jobs`), so the family asks its
context (:meth:`impumae.engine.trial.SearchContext.pretrained_model`), which calls
:func:`model_and_transforms` here. :func:`fit_mae_fold` is the same fit for a command's or a test's
explicit settings (``experiments/finetune.py``): the fold's pretrained MAE and the transforms it was
pretrained with (the clinical modalities, which are not pretrained, get transforms fitted on the
same training patients), fine-tuned by :func:`impumae.families.mae.finetune_fold`.
"""
from __future__ import annotations

import torch

from impumae.data.cohort_view import CohortArrays, fit_transforms, split_subset
from impumae.data.transforms import FoldTransforms
from impumae.engine.pretrain_jobs import PretrainJob, load_pretrained
from impumae.families.mae import MaeFoldFit, finetune_config, finetune_fold  # noqa: F401 (finetune_config: for the commands)
from impumae.model import MultimodalMAE
from impumae.train.finetune_loop import FinetuneConfig


def model_and_transforms(ca: CohortArrays, subset, job: PretrainJob, storage_url: str, pretrained: bool = True,
                         device="cpu") -> tuple[MultimodalMAE, FoldTransforms]:
    """The job's MAE (fresh weights if not ``pretrained``) and the transforms of every modality of
    ``subset``: the pretrained ones, plus the clinical ones fitted on the job's training patients."""
    loaded = load_pretrained(job, storage_url, device, load_weights=pretrained)
    _, clinical = split_subset(subset, ca.specs)
    if not clinical:
        return loaded.model, loaded.transforms
    fitted = fit_transforms(ca, clinical, ca.train_indices(job.fold))
    return loaded.model, FoldTransforms({**loaded.transforms.transforms, **fitted.transforms},
                                        loaded.transforms.train_ids)


def fit_mae_fold(ca: CohortArrays, subset, fold: int, cfg: FinetuneConfig, *, storage_url: str, model: dict,
             pretrain: dict, seed: int, pretrained: bool = True, device="cpu", progress=None,
             transform_options: dict | None = None) -> MaeFoldFit:
    """Fine-tune one (subset, fold), scoring its validation patients after every epoch, or the
    refit (``fold=REFIT``).

    ``model``, ``pretrain``, ``seed`` and ``transform_options`` (the space's ``transforms:``) name
    the pretrained MAE (a :class:`PretrainJob` of the fold), which must exist under
    ``storage_url``; ``cfg`` is the fine-tuning; ``progress(row)`` is called after each epoch.
    """
    subset = tuple(subset)
    device = torch.device(device)
    job = PretrainJob.for_subset(ca, subset, fold, model, pretrain, seed, transform_options)
    mae, transforms = model_and_transforms(ca, subset, job, storage_url, pretrained, device)
    return finetune_fold(ca, subset, fold, cfg, mae, transforms, device, progress)
