"""Imputation quality of a real (briefly) pretrained MAE on a small synthetic cohort, no Ray."""

import numpy as np
import pytest
import torch

from impumae.data.synthetic import build_synthetic
from impumae.data.cohort_view import REFIT, load_cohort_arrays
from impumae.engine.pretrain_jobs import PretrainJob, load_pretrained, run_pretraining
from impumae.evaluation.imputation_quality import METHODS, decoder_imputation, transformed_values, imputation_quality

MODALITIES = ("rna", "dna")
MODEL = {"width": 32, "heads": 2, "mlp_ratio": 2, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2,
         "decoder_mlp": 64}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("iq")
    url = str(root / "cohort.zarr")
    build_synthetic(url, n_patients=200, progress=False)
    ca = load_cohort_arrays(url, MODALITIES)
    job = PretrainJob(url, ca.fingerprint, MODALITIES, REFIT, MODEL, {"epochs": 3, "batch_size": 32, "lr": 1e-3}, 0)
    storage = str(root / "store")
    run_pretraining([job], storage, workers=0, echo=lambda *_: None)
    return job, storage, ca


def test_rows_cover_every_modality_and_method_on_the_right_patients(pretrained):
    job, storage, ca = pretrained
    rows = imputation_quality(job, storage)
    assert {(r["modality"], r["method"]) for r in rows} == {(m, k) for m in MODALITIES for k in METHODS}
    hold = ca.holdout_indices()
    for m in MODALITIES:
        other = [o for o in MODALITIES if o != m][0]
        expected = int((ca.present[m][hold] & ca.present[other][hold]).sum())
        assert expected > 0
        for r in rows:
            if r["modality"] == m:
                assert r["n_patients"] == expected
                assert np.isfinite(r["mse"]) and np.isfinite(r["r2"])


def test_mean_reference_is_the_training_mean(pretrained):
    job, storage, ca = pretrained
    transforms = load_pretrained(job, storage, "cpu").transforms
    train = ca.train_indices(REFIT)
    hold = ca.holdout_indices()
    values = transformed_values(ca, MODALITIES, transforms, np.concatenate([train, hold]))
    rna_train = values["rna"][: len(train)][ca.present["rna"][train]]
    chosen = hold[ca.present["rna"][hold] & ca.present["dna"][hold]]
    truth = values["rna"][len(train):][np.isin(hold, chosen)]
    expected = float(np.mean((truth - rna_train.mean(0)) ** 2))
    row = next(r for r in imputation_quality(job, storage) if r["modality"] == "rna" and r["method"] == "mean")
    assert row["mse"] == pytest.approx(expected, rel=1e-5)
    # the held-out set's own mean scores R^2 = 0 by definition; the training mean can only be worse or equal
    assert row["r2"] <= 1e-9


def test_knn_uses_the_other_modality(pretrained):
    """kNN imputes RNA from the DNAm neighbours (not the mean) and, with a shared latent factor,
    lands near or below the mean's error on this small cohort."""
    job, storage, _ = pretrained
    rows = {(r["modality"], r["method"]): r for r in imputation_quality(job, storage)}
    knn, mean = rows[("rna", "knn")], rows[("rna", "mean")]
    assert knn["mse"] != mean["mse"]
    assert knn["mse"] < 1.1 * mean["mse"] and knn["r2"] > -0.1


def test_hidden_modality_is_really_hidden_and_imputation_deterministic(pretrained):
    job, storage, ca = pretrained
    loaded = load_pretrained(job, storage, "cpu")
    mae, transforms = loaded.model, loaded.transforms
    hold = ca.holdout_indices()
    values = transformed_values(ca, MODALITIES, transforms, hold)
    present = {m: ca.present[m][hold] for m in MODALITIES}
    chosen = np.flatnonzero(present["rna"] & present["dna"])
    first = decoder_imputation(mae, values, present, "rna", chosen, "cpu", 16)
    again = decoder_imputation(mae, values, present, "rna", chosen, "cpu", 7)
    np.testing.assert_allclose(first, again, rtol=1e-5, atol=1e-6)
    scrambled = {**values, "rna": np.random.default_rng(0).normal(size=values["rna"].shape).astype(np.float32)}
    np.testing.assert_allclose(decoder_imputation(mae, scrambled, present, "rna", chosen, "cpu", 16), first,
                               rtol=1e-5, atol=1e-6)
    # ...while the other modality does drive it
    shifted = {**values, "dna": values["dna"] + 1.0}
    assert not np.allclose(decoder_imputation(mae, shifted, present, "rna", chosen, "cpu", 16), first)
    assert torch.is_grad_enabled()


def test_scoring_pretraining_patients_is_refused(pretrained):
    job, storage, ca = pretrained
    with pytest.raises(ValueError, match="pretraining patients"):
        imputation_quality(job, storage, eval_idx=ca.train_indices(REFIT)[:20])


def test_image_modality_is_scored_on_the_decoders_scale_without_converting_every_slide(tmp_path):
    """Slides stay uint8 until scored (the open TCGA cohort's slides are 8.7 GB as float), and truth,
    mean and decoder are compared on the same [0, 1] scale."""
    url = str(tmp_path / "cohort.zarr")
    build_synthetic(url, n_patients=120, progress=False)
    ca = load_cohort_arrays(url, ("rna", "wsi"))
    job = PretrainJob(url, ca.fingerprint, ("rna", "wsi"), REFIT, MODEL, {"epochs": 1, "batch_size": 32, "lr": 1e-3}, 0)
    storage = str(tmp_path / "store")
    run_pretraining([job], storage, workers=0, echo=lambda *_: None)
    transforms = load_pretrained(job, storage, "cpu").transforms
    assert transformed_values(ca, ["rna", "wsi"], transforms, ca.holdout_indices())["wsi"].dtype == np.uint8
    rows = {(r["modality"], r["method"]): r for r in imputation_quality(job, storage)}
    for method in ("decoder", "mean"):
        row = rows[("wsi", method)]
        assert row["n_patients"] > 0 and 0 <= row["mse"] < 1.0, row  # pixels in [0, 1]: an error below 1
    for method in ("knn", "ridge", "iterative"):
        assert rows[("wsi", method)]["note"].startswith(f"{method} is not computed")
