"""A new kind of modality, defined and registered in this file only, runs through the whole method.

``plane``: one 2-D single-channel image per patient, shape ``(H, W)`` float32, cut into square
``patch x patch`` tokens with 2-D sin-cos positions. It is written against the ``impumae.kinds.Kind``
base class alone (no built-in kind reused) and registered; no package file changes. With a tabular
modality beside it, it is written to a cohort store, loaded by the engine, fold-transformed,
pretrained (the engine's pretraining jobs), imputed and fine-tuned for survival (the engine's one
fold-fitting path).
"""
from __future__ import annotations

import copy
import math
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from impumae import kinds
import pandas as pd

from impumae.data.store import CohortPlan, write_cohort
from impumae.data.cohort_view import CohortArrays, fit_transforms, load_cohort_arrays, make_batchable, population
from impumae.engine.fold import fit_fold
from impumae.engine.pretrain_jobs import PretrainJob, load_pretrained, run_pretraining
from impumae.train.finetune_loop import FinetuneConfig
from impumae.kinds.fitted import ModalityTransform
from impumae.kinds.positions import sincos_2d
from impumae.modalities import ModalitySpec
from impumae.model import MAEConfig, MultimodalMAE, SurvivalConfig, SurvivalModel
from impumae.kinds.adapters import InputAdapter, OutputAdapter

TINY = dict(width=32, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64)


@dataclass
class PlaneTransform(ModalityTransform):
    """Fitted per fold: one training mean and standard deviation for every pixel of the plane."""
    center: float | None = None
    scale: float | None = None

    def fit(self, train_values, sd_threshold):
        self.center, self.scale = float(np.nanmean(train_values)), float(np.nanstd(train_values)) or 1.0
        return self

    def transform_values(self, values):
        return np.nan_to_num((np.asarray(values, dtype=np.float64) - self.center) / self.scale).astype(np.float32)

    def inverse(self, values):
        return (np.asarray(values, dtype=np.float64) * self.scale + self.center).astype(np.float32)


class Plane(kinds.Kind):
    name = "plane"
    transform = PlaneTransform

    def validate(self, spec):
        if len(spec.shape) != 2 or spec.shape[0] % spec.patch or spec.shape[1] % spec.patch:
            raise ValueError(f"modality {spec.name!r}: plane shape {spec.shape} must be (H, W) divisible by {spec.patch}")

    def grid(self, spec):
        return spec.shape[0] // spec.patch, spec.shape[1] // spec.patch

    def n_tokens(self, spec):
        return math.prod(self.grid(spec))

    def patch_dim(self, spec):
        return spec.patch ** 2

    def patchify(self, spec, x):  # token (i, j) holds its square flattened as (y, x)
        (gh, gw), p = self.grid(spec), spec.patch
        return x.reshape(len(x), gh, p, gw, p).permute(0, 1, 3, 2, 4).reshape(len(x), gh * gw, p * p)

    def unpatchify(self, spec, patches):
        (gh, gw), p = self.grid(spec), spec.patch
        return patches.reshape(len(patches), gh, gw, p, p).permute(0, 1, 3, 2, 4).reshape(len(patches), *spec.shape)

    def positions(self, spec, width):
        return sincos_2d(width, *self.grid(spec))

    def input_adapter(self, spec, width, config):
        return InputAdapter(nn.Linear(self.patch_dim(spec), width), self.positions(spec, width))

    def output_adapter(self, spec, width, config):
        return OutputAdapter(nn.Linear(width, self.patch_dim(spec)))

    def baseline_summary(self, values):
        flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        return np.stack([flat.mean(1), flat.std(1)], axis=1)


PLANE = kinds.register(Plane())
SUBSET = ("rna", "plane")  # rna first: the anchor modality of fine-tuning
SPECS = {"rna": ModalitySpec("rna", "tabular", (12,), patch=3, depth=1),
         "plane": ModalitySpec("plane", "plane", (8, 8), patch=4, depth=1)}


def cohort(url: str, n=60, seed=0) -> CohortArrays:
    """A cohort store of both modalities, driven by one latent per patient (so each predicts the
    other), ~25% missing; survival times shorter for a larger latent. Holdout: the last 12
    patients; 3 folds. Loaded back as the engine loads any cohort."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    rna = z @ rng.normal(size=(2, 12)) + 0.1 * rng.normal(size=(n, 12))
    yy, xx = np.mgrid[0:8, 0:8] / 7.0
    plane = 5.0 + z[:, :1, None] * yy + z[:, 1:, None] * xx + 0.05 * rng.normal(size=(n, 8, 8))
    present = {"rna": rng.random(n) > 0.25, "plane": rng.random(n) > 0.25}
    present["rna"][:3] = True                       # every fold has anchor patients
    holdout = np.arange(n) >= n - 12
    labels = pd.DataFrame({"time": rng.exponential(np.exp(-z[:, 0])), "event": (rng.random(n) < 0.7).astype(int),
                           "group": np.where(holdout, "test", "train"),
                           "fold": np.where(holdout, np.nan, np.arange(n) % 3)},
                          index=[f"P{i:03d}" for i in range(n)])
    plan = CohortPlan(labels=labels, specs=list(SPECS.values()), provenance={"source": "test_new_kind"})
    patients = ({"rna": rna[i].astype(np.float32) if present["rna"][i] else None,
                 "plane": plane[i].astype(np.float32) if present["plane"][i] else None} for i in range(n))
    stored = write_cohort(url, plan, patients, n_folds=3, progress=False)
    assert stored.specs["plane"].kind_object is PLANE and stored.value_types["plane"] == "raw"
    return load_cohort_arrays(stored.url, SUBSET)


def test_the_spec_asks_the_registered_kind():
    spec = SPECS["plane"]
    assert spec.kind_object is PLANE and "plane" in kinds.names()
    assert (spec.n_tokens, spec.patch_dim, spec.tokenised) == (4, 16, True)
    with pytest.raises(ValueError, match=r"plane shape \(8, 6\) must be \(H, W\)"):
        ModalitySpec("bad", "plane", (8, 6), patch=4)
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(Plane())
    # a spec and a model built on it copy and pickle with the one registered kind object
    assert pickle.loads(pickle.dumps(spec)).kind_object is PLANE
    assert copy.deepcopy(MultimodalMAE(SPECS, MAEConfig(**TINY))).kinds["plane"] is PLANE


def test_patches_keep_each_square_together_and_round_trip():
    spec = SPECS["plane"]
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 8, 8)
    patches = PLANE.patchify(spec, x)
    assert patches.shape == (2, 4, 16)
    assert torch.equal(patches[0, 1], x[0, :4, 4:].reshape(-1))  # token (0, 1): rows 0-3, columns 4-7
    assert torch.equal(PLANE.unpatchify(spec, patches), x)


def test_store_pretrain_impute_and_finetune_with_the_new_kind(tmp_path):
    ca = cohort(str(tmp_path / "plane.zarr"))
    assert ca.arrays["plane"].shape == (60, 8, 8) and int(ca.holdout.sum()) == 12 and ca.n_folds == 3
    train_idx = ca.train_indices(0)
    transforms = fit_transforms(ca, SUBSET, train_idx)
    assert isinstance(transforms.transforms["plane"], PlaneTransform)
    train_plane = ca.arrays["plane"][train_idx[ca.present["plane"][train_idx]]]
    assert transforms.transforms["plane"].center == pytest.approx(float(train_plane.mean()), rel=1e-5)

    # pretraining: the engine's job for fold 0 (its training patients with either modality), in-process
    storage = str(tmp_path / "runs")
    pretrain_cfg = dict(epochs=8, batch_size=8, lr=3e-3, hide_modality_prob=0.25)
    job = PretrainJob.for_subset(ca, SUBSET, 0, TINY, pretrain_cfg, seed=0)
    meta = run_pretraining([job], storage, workers=0, echo=lambda line: None)[job.key]
    assert set(meta["train_ids"]) <= set(ca.ids[train_idx])
    losses = [h["loss"] for h in meta["history"]]
    assert set(meta["history"][0]) >= {"epoch", "loss", "loss_rna", "loss_plane"}
    assert all(np.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], [round(v, 3) for v in losses]
    mae = load_pretrained(job, storage).model
    assert mae.input_adapters["plane"].pos.shape == (4, 32)

    # imputation: the plane comes back in its own shape, present planes untouched
    rows = population(ca, SUBSET, train_idx, "pretrain")
    batch = make_batchable(ca, SUBSET, transforms, rows)
    present = {m: batch.present[m].clone() for m in SUBSET}
    present["plane"][:4] = False
    filled = mae.impute(batch.x, present)
    assert filled["plane"].shape == (len(rows), 8, 8) and torch.isfinite(filled["plane"]).all()
    assert torch.equal(filled["plane"][present["plane"]], batch.x["plane"][present["plane"]])
    assert not torch.equal(filled["plane"][:4], torch.zeros(4, 8, 8))
    back = transforms.inverse({"plane": filled["plane"].numpy()})["plane"]
    assert back.shape == (len(rows), 8, 8) and back.dtype == np.float32

    # fine-tuning and validation: the engine's one fold-fitting path, decoder imputation of missing planes
    fit = fit_fold(ca, SUBSET, 0, FinetuneConfig(epochs=2, batch_size=8, lr=1e-3, n_bins=4, seed=0),
                   storage_url=storage, model=TINY, pretrain=pretrain_cfg, seed=0)
    assert not ca.present["plane"][fit.train_rows].all()  # some training patients lack the plane
    assert all(np.isfinite(h["train_loss"]) for h in fit.history)
    logits = fit.predict(fit.val_rows)
    assert logits.shape == (len(fit.val_rows), 4) and np.isfinite(logits).all()

    # the other ways to treat a missing plane use the kind's positions and encoder states too
    val = make_batchable(ca, SUBSET, fit.transforms, fit.val_rows)
    for imputation in ("mask_token", "drop"):
        model = SurvivalModel(copy.deepcopy(mae), SurvivalConfig(n_bins=4, imputation=imputation))
        model.eval()
        with torch.no_grad():
            out = model(val.x, val.present)
        assert out.shape == (len(val), 4) and torch.isfinite(out).all()
    assert PLANE.baseline_summary(batch.x["plane"].numpy()).shape == (len(rows), 2)
