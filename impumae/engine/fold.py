"""Fitting one fold: the one path from a (modality subset, fold) to a fine-tuned, scored survival model.

Trials (each validation fold), the final refit (``fold=REFIT``: every non-holdout patient, no
validation) and ``experiments/finetune.py`` all call :func:`fit_fold`:

1. the fold's pretrained MAE and the transforms it was pretrained with (cached by
   :mod:`impumae.engine.pretrain_jobs`); the clinical modalities, which are not pretrained, get
   transforms fitted here on the same training patients;
2. the populations: fine-tuning on the fold's training patients with the anchor modality,
   validation on the fold's validation patients with it (none for the refit); the holdout is
   never among them;
3. the tensors, the fine-tuning (:func:`impumae.train.finetune_loop.finetune`: ``cfg.epochs``
   epochs, or the first ``cfg.stop_after`` of them for the refit), and a :class:`FoldFit` with the
   per-epoch validation curve (the trial chooses one epoch from the mean curve over its folds,
   :mod:`impumae.engine.curves`) that predicts any other rows (the holdout, for the refit's single
   evaluation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from impumae.data.transforms import FoldTransforms
from impumae.data.cohort_view import (REFIT, CohortArrays, Population, fit_transforms, make_batchable, population,
                                        split_subset)
from impumae.engine.curves import validation_curve
from impumae.engine.pretrain_jobs import PretrainJob, load_pretrained
from impumae.model import MultimodalMAE, SurvivalModel
from impumae.survival.bins import TimeBins
from impumae.survival.metrics import survival_curve
from impumae.train.finetune_loop import FinetuneConfig, finetune, predict_logits


class FittedFold:
    """What every fitted fold of any model family answers (:class:`FoldFit` for impuTMAE,
    :class:`impumae.engine.families.SksurvFoldFit` for the scikit-survival families): the cohort
    ``rows`` it was fitted and validated on, its ``history`` (one row per epoch; val_* metrics),
    its ``grid`` and ``survival(rows)``. Subclasses set ``cohort``, ``subset``, ``fold``,
    ``transforms``, ``train_rows``, ``val_rows``, ``history`` and ``family``."""
    cohort: CohortArrays
    train_rows: np.ndarray
    val_rows: np.ndarray
    history: list[dict]

    @property
    def curve(self) -> dict[str, np.ndarray]:
        """The validation curve: ``{metric: value per epoch}`` for FOLD_METRICS (NaN for the refit)."""
        return validation_curve(self.history)

    @property
    def train_ids(self) -> np.ndarray:
        return self.cohort.ids[self.train_rows]

    @property
    def val_ids(self) -> np.ndarray:
        return self.cohort.ids[self.val_rows]

    @property
    def train_time(self) -> np.ndarray:
        return self.cohort.time[self.train_rows]

    @property
    def train_event(self) -> np.ndarray:
        return self.cohort.event[self.train_rows]


@dataclass
class FoldFit(FittedFold):
    """A fine-tuned survival model of one (subset, fold) and what it was fitted and scored on."""
    cohort: CohortArrays
    subset: tuple[str, ...]
    fold: int                      # REFIT for the refit on every non-holdout patient
    transforms: FoldTransforms
    model: SurvivalModel
    bins: TimeBins
    train_rows: np.ndarray         # cohort rows fine-tuned on
    val_rows: np.ndarray           # cohort rows scored after every epoch (empty for the refit)
    history: list[dict]            # one row per epoch trained: train_loss (and val_* metrics)
    device: torch.device
    family = "impumae"             # the model family (impumae.engine.families); not a field

    @property
    def grid(self) -> np.ndarray:
        """The times the survival curves of :meth:`survival` are given at (the bins' cuts)."""
        return self.bins.cuts

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Hazard logits [len(rows), n_bins] of the fitted model for cohort ``rows``."""
        return predict_logits(self.model, make_batchable(self.cohort, self.subset, self.transforms, rows, self.device))

    def survival(self, rows: np.ndarray) -> np.ndarray:
        """Survival probabilities [len(rows), len(grid)] at :attr:`grid` for cohort ``rows``: what
        every model family predicts, and what the metrics, the holdout and exported models use."""
        return survival_curve(self.predict(rows))


def finetune_config(defaults: dict, config: dict, **overrides) -> FinetuneConfig:
    """The space's fine-tuning ``defaults``, then a trial's (or a command's) ``config``, then ``overrides``.

    Without pretraining (``config["pretrained"]`` false: the ablation) frozen encoders would be
    frozen random weights, so the freezing policy becomes ``none``.
    """
    merged = {**defaults, **config, **overrides}
    if not bool(config.get("pretrained", True)):
        merged["freeze"] = "none"
    return FinetuneConfig.from_dict(merged)


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


def fold_populations(ca: CohortArrays, subset, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(fine-tuning rows, validation rows) of a fold: its training / validation patients with the
    anchor modality; no validation rows for the refit, whose training rows are every non-holdout
    patient with the anchor modality."""
    train_rows = population(ca, subset, ca.train_indices(fold), Population.FINETUNE)
    val_rows = (np.zeros(0, np.int64) if fold == REFIT
                else population(ca, subset, ca.validation_indices(fold), Population.VALIDATE))
    return train_rows, val_rows


def fit_fold(ca: CohortArrays, subset, fold: int, cfg: FinetuneConfig, *, storage_url: str, model: dict,
             pretrain: dict, seed: int, pretrained: bool = True, device="cpu", progress=None,
             transform_options: dict | None = None) -> FoldFit:
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
    train_rows, val_rows = fold_populations(ca, subset, fold)
    train = make_batchable(ca, subset, transforms, train_rows, device)
    val = None if fold == REFIT else make_batchable(ca, subset, transforms, val_rows, device)
    result = finetune(mae, train, val, cfg, device, progress)
    return FoldFit(cohort=ca, subset=subset, fold=fold, transforms=transforms, model=result.model, bins=result.bins,
                   train_rows=train_rows, val_rows=val_rows, history=result.history, device=device)
