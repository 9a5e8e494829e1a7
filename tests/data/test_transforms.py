"""Fold-fitted preprocessing: what it learns comes from training patients only."""
import numpy as np
import pytest

from impumae.data.transforms import FoldTransforms
from impumae.data.cohort_view import fit_transforms, load_cohort_arrays, make_batchable, population
from impumae.train.finetune_loop import FinetuneConfig, finetune
from impumae.modalities import ModalitySpec
from impumae.model import MAEConfig, MultimodalMAE

SPECS = {"rna": ModalitySpec("rna", "tabular", (6,), patch=2, depth=1),
         "clinical": ModalitySpec("clinical", "clinical", (3,))}


def toy(seed=0, n=40):
    rng = np.random.default_rng(seed)
    rna = rng.lognormal(2, 1, size=(n, 6))
    rna[:, 5] = 3.0                      # constant gene: sd 0 -> filtered out
    rna[3, 1] = np.nan                   # a missing value inside a present row
    clinical = np.c_[rng.normal(60, 10, n), rng.integers(0, 2, n), rng.integers(0, 2, n)].astype(float)
    clinical[4, 0] = np.nan
    present = {"rna": np.arange(n) % 5 != 0, "clinical": np.ones(n, bool)}
    rna[~present["rna"]] = np.nan
    return {"rna": rna, "clinical": clinical}, present


def fit(arrays, present, train):
    return FoldTransforms.fit(arrays, present, train, SPECS, {"rna": "fpkm_uq", "clinical": "clinical"})


def test_fitted_state_ignores_non_training_rows():
    arrays, present = toy()
    train = np.arange(0, 30)
    base = fit(arrays, present, train).to_dict()
    changed = {k: v.copy() for k, v in arrays.items()}
    changed["rna"][30:] *= 1000.0          # validation / holdout rows change wildly
    changed["clinical"][30:, 0] += 500.0
    assert fit(changed, present, train).to_dict() == base


def test_fpkm_pipeline_filter_log_median_and_fill():
    arrays, present = toy()
    train = np.arange(30)
    t = fit(arrays, present, train)
    rna = t.transforms["rna"]
    assert 5 not in rna.keep and len(rna.keep) == 5          # the constant gene is dropped
    out = t.apply(arrays, present)
    assert out["rna"].shape == (40, 5) and np.isfinite(out["rna"]).all()
    row = 1
    expected = np.log1p(arrays["rna"][row, rna.keep])
    expected = expected / np.median(expected)
    np.testing.assert_allclose(out["rna"][row], (expected - rna.center) / rna.scale, rtol=1e-5)
    train_rows = train[present["rna"][train]]                # standardised on training patients
    np.testing.assert_allclose(out["rna"][train_rows].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out["rna"][train_rows].std(0), 1, atol=0.05)
    assert (out["rna"][~present["rna"]] == 0).all()          # missing rows become zeros
    gene1 = list(rna.keep).index(1)                          # row 3's NaN gene -> the training mean, 0
    assert out["rna"][3, gene1] == 0


def test_clinical_zscores_age_on_training_patients_and_keeps_binaries():
    arrays, present = toy()
    train = np.arange(30)
    out = fit(arrays, present, train).apply(arrays, present)["clinical"]
    age = arrays["clinical"][train, 0]
    np.testing.assert_allclose(out[0, 0], (arrays["clinical"][0, 0] - np.nanmean(age)) / np.nanstd(age), rtol=1e-5)
    np.testing.assert_array_equal(out[:, 1:], arrays["clinical"][:, 1:])
    assert out[4, 0] == pytest.approx(0.0, abs=1e-6)          # NaN age -> training mean -> 0


def test_transforms_round_trip_through_a_dict():
    arrays, present = toy()
    t = fit(arrays, present, np.arange(30))
    again = FoldTransforms.from_dict(t.to_dict())
    for name in arrays:
        np.testing.assert_array_equal(t.apply(arrays, present)[name], again.apply(arrays, present)[name])


def test_a_modality_no_training_patient_has_is_an_error():
    arrays, present = toy()
    present = {**present, "rna": np.zeros(40, bool)}
    with pytest.raises(ValueError, match="rna.*no training patient"):
        fit(arrays, present, np.arange(30))


def test_finetune_bins_are_fitted_on_training_times(tmp_path):
    from impumae.data.synthetic import build_synthetic
    cohort = build_synthetic(str(tmp_path / "c.zarr"), n_patients=120, seed=1, progress=False)
    ca = load_cohort_arrays(cohort.url, ("rna",))
    train_idx, val_idx = ca.train_indices(0), ca.validation_indices(0)
    transforms = fit_transforms(ca, ("rna",), train_idx)
    train = make_batchable(ca, ("rna",), transforms, population(ca, ("rna",), train_idx, "finetune"))
    val = make_batchable(ca, ("rna",), transforms, population(ca, ("rna",), val_idx, "validate"))
    specs = transforms.output_specs(ca.specs)
    mae = MultimodalMAE(specs, MAEConfig(width=16, heads=2, decoder_width=16, decoder_depth=1, decoder_heads=2, decoder_mlp=32))
    result = finetune(mae, train, val, FinetuneConfig(epochs=2, batch_size=16, freeze="none"))
    assert result.bins.cuts[-1] == pytest.approx(train.time.max())
    assert len(result.history) == 2 and {"val_c_index", "val_ibs", "val_cs_score"} <= set(result.history[0])
    assert [row["epoch"] for row in result.history] == [1, 2]
