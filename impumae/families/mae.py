"""The ``impumae`` family: the multimodal MAE, pretrained per (subset, fold), fine-tuned on the fold.

Fitting one fold (:func:`finetune_fold`): the fold's pretrained MAE and the transforms it was
pretrained with (the engine's cache, through :meth:`FitContext.pretrained_model`; the clinical
modalities, which are not pretrained, get transforms fitted on the same training patients); the
populations of :func:`impumae.families.fold_populations`; the tensors; the fine-tuning
(:func:`impumae.train.finetune_loop.finetune`: ``cfg.epochs`` epochs, or the first
``cfg.stop_after`` of them for the refit); and a :class:`MaeFoldFit` with the per-epoch validation
curve (the trial chooses one epoch from the mean curve over its folds) that predicts any other
rows (the holdout, for the refit's single evaluation). Its configuration keys are
:class:`FinetuneConfig` fields and ``pretrained``; the selected model keeps the fine-tuned
:class:`SurvivalModel` (:class:`MaePredictor`), whose decoder imputes missing modalities.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from impumae import families
from impumae.data.cohort_view import CohortArrays, load_cohort_arrays, make_batchable
from impumae.data.transforms import FoldTransforms
from impumae.model import MultimodalMAE, SurvivalModel
from impumae.model.survival import SurvivalConfig
from impumae.modalities import parse_subset
from impumae.survival.bins import TimeBins
from impumae.survival.metrics import survival_curve
from impumae.train import checkpoint
from impumae.train.finetune_loop import FinetuneConfig, finetune, predict_logits

NAME = families.DEFAULT   # "impumae": the family of a configuration that names none


@dataclass
class MaeFoldFit(families.FittedFold):
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
    family = NAME                  # not a field

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

    def without_cohort(self) -> MaeFoldFit:
        return replace(self, model=self.model.cpu(), device=torch.device("cpu"), cohort=None)


def finetune_config(defaults: dict, config: dict, **overrides) -> FinetuneConfig:
    """The space's fine-tuning ``defaults``, then a trial's (or a command's) ``config``, then ``overrides``.

    Without pretraining (``config["pretrained"]`` false: the ablation) frozen encoders would be
    frozen random weights, so the freezing policy becomes ``none``.
    """
    merged = {**defaults, **config, **overrides}
    if not bool(config.get("pretrained", True)):
        merged["freeze"] = "none"
    return FinetuneConfig.from_dict(merged)


def finetune_fold(ca: CohortArrays, subset, fold: int, cfg: FinetuneConfig, mae: MultimodalMAE,
                 transforms: FoldTransforms, device="cpu", progress=None) -> MaeFoldFit:
    """Fine-tune ``mae`` (the fold's pretrained MAE, with the ``transforms`` of every modality of
    ``subset``) on one (subset, fold), scoring its validation patients after every epoch, or the
    refit (``fold=REFIT``); ``progress(row)`` is called after each epoch."""
    subset = tuple(subset)
    device = torch.device(device)
    train_rows, val_rows = families.fold_populations(ca, subset, fold)
    train = make_batchable(ca, subset, transforms, train_rows, device)
    val = None if fold == families.REFIT else make_batchable(ca, subset, transforms, val_rows, device)
    result = finetune(mae, train, val, cfg, device, progress)
    return MaeFoldFit(cohort=ca, subset=subset, fold=fold, transforms=transforms, model=result.model,
                      bins=result.bins, train_rows=train_rows, val_rows=val_rows, history=result.history,
                      device=device)


@dataclass
class MaePredictor:
    """impuTMAE in the selected model: the fine-tuned survival model (its MAE's decoder imputes
    missing modalities), saved as weights with the specs and configs that rebuild it."""
    model: SurvivalModel
    family: str = NAME

    def survival(self, selected, view: CohortArrays, rows: np.ndarray) -> np.ndarray:
        batch = make_batchable(view, selected.subset, selected.transforms, rows)
        return survival_curve(predict_logits(self.model, batch))

    @property
    def fills_missing_tokenised(self) -> bool:
        """Whether a missing pretrained modality is filled in (decoder imputation), not left out."""
        return self.model.cfg.imputation == "decoder"

    def decoder(self) -> MultimodalMAE:
        return self.model.mae

    def state(self) -> dict:
        fields = checkpoint.model_fields(self.model.mae)
        return {"specs": fields["specs"], "mae_config": fields["mae_config"],
                "survival_config": self.model.cfg.to_dict(),
                "weights": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def save_extra(self, directory: Path) -> None:
        """Nothing beside the state: the weights are in it."""


class MaeFamily(families.Family):
    name = NAME
    label = "impuTMAE"
    needs_pretraining = True

    def fit(self, ctx: families.FitContext, config: dict, fold: int, device, **overrides) -> MaeFoldFit:
        """The fold's pretrained MAE fine-tuned with the space's fine-tuning defaults, then ``config``,
        then ``overrides`` (seed ``ctx.seed + fold`` unless they say otherwise)."""
        subset = parse_subset(config["subset"])
        ca = load_cohort_arrays(ctx.cohort_url, subset, ctx.outer)
        cfg = finetune_config(ctx.finetune, config, **{"seed": ctx.seed + fold, **overrides})
        mae, transforms = ctx.pretrained_model(ca, subset, fold, bool(config.get("pretrained", True)), device)
        return finetune_fold(ca, subset, fold, cfg, mae, transforms, device)

    def predictor(self, fitted: MaeFoldFit) -> MaePredictor:
        """A CPU copy of the fitted model (the fitted fold keeps its own, on its device)."""
        return MaePredictor(copy.deepcopy(checkpoint.unwrap(fitted.model)).cpu().eval())

    def load_predictor(self, state: dict, directory: Path) -> MaePredictor:
        with torch.random.fork_rng(devices=[]):  # the fresh weights are overwritten; the caller's RNG is untouched
            mae = checkpoint.build_mae(state, load_weights=False)
            model = SurvivalModel(mae, SurvivalConfig(**state["survival_config"]))
        model.load_state_dict(state["weights"])
        return MaePredictor(model.eval())


FAMILY = families.register(MaeFamily())
