"""The synthetic cohort: determinism, shapes, missingness, survival and signal."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import cross_val_score
from sksurv.metrics import concordance_index_censored

from impumae.data import synthetic
from impumae.data.synthetic import PRESENT_RATE, SCALES, build_synthetic, default_cohort, simulate


@pytest.fixture(scope="module")
def tiny_cohort():
    return simulate(600, "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_patients(tiny_cohort):
    return list(tiny_cohort.patients())


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        if a[name] is None:
            assert b[name] is None, name
        else:
            assert a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # NaN == NaN here


def test_same_seed_gives_identical_stores_and_another_seed_differs(tmp_path):
    first = build_synthetic(tmp_path / "a.zarr", n_patients=40, seed=3, progress=False)
    second = build_synthetic(tmp_path / "b.zarr", n_patients=40, seed=3, progress=False)
    other = build_synthetic(tmp_path / "c.zarr", n_patients=40, seed=4, progress=False)
    assert first.labels.equals(second.labels)
    assert first.present.equals(second.present)
    for name in first.modalities:
        np.testing.assert_array_equal(first.load(name), second.load(name), err_msg=name)
    assert not np.array_equal(first.labels["time"], other.labels["time"])
    assert not np.allclose(np.nan_to_num(first.load("rna")), np.nan_to_num(other.load("rna")))


def test_patient_arrays_do_not_depend_on_generation_order(tiny_cohort, tiny_patients):
    _assert_same(tiny_cohort.patient(17), tiny_patients[17])


@pytest.mark.parametrize("scale,n_patients", [("tiny", 30), ("paper", 4)])
def test_shapes_and_dtypes_per_scale(scale, n_patients):
    cohort = simulate(n_patients, scale, seed=1)
    specs = SCALES[scale]
    seen = set()
    for arrays in cohort.patients():
        for name, array in arrays.items():
            if array is None:
                continue
            seen.add(name)
            assert array.shape == specs[name].shape, name
            assert array.dtype == (np.uint8 if specs[name].dtype == "uint8" else np.float32), name
    assert {"rna", "dna", "wsi", "clinical"} <= seen


def test_value_ranges_follow_value_types(tiny_cohort, tiny_patients):
    rna = np.stack([p["rna"] for p in tiny_patients if p["rna"] is not None])
    dna = np.stack([p["dna"] for p in tiny_patients if p["dna"] is not None])
    mri = np.stack([p["mri"] for p in tiny_patients if p["mri"] is not None])
    assert (rna >= 0).all() and np.isfinite(rna).all()
    assert 0 < np.isnan(dna).mean() < 0.02
    observed = dna[~np.isnan(dna)]
    assert observed.min() > 0 and observed.max() < 1
    for volume in mri:
        brain = volume != 0
        assert 0.2 < brain.mean() < 0.9
        assert not brain[0, 0, 0] and brain[8, 8, 8]  # zero background, brain in the middle
        assert abs(volume[brain].mean()) < 1e-4 and abs(volume[brain].std() - 1) < 1e-3
    clinical = tiny_cohort.clinical
    assert 18 <= clinical[:, 0].min() and clinical[:, 0].max() <= 89
    assert set(np.unique(clinical[:, 1:])) <= {0.0, 1.0}


def test_present_rates_and_missingness(tiny_cohort):
    present = tiny_cohort.present
    for name, target in PRESENT_RATE.items():
        assert abs(present[name].mean() - target) < 0.04, name
    assert present["clinical"].all()
    tokenised = present[list(PRESENT_RATE)]
    assert tokenised.any(axis=1).all()
    assert (tokenised.sum(axis=1) <= 2).mean() > 0.2  # many patients miss several modalities
    # missingness is correlated: RNA is more often present with DNAm than without it
    assert present.loc[present["dna"], "rna"].mean() > present.loc[~present["dna"], "rna"].mean()


def test_survival_labels_and_oracle_concordance(tiny_cohort):
    labels = tiny_cohort.labels
    assert 0.40 <= labels["event"].mean() <= 0.60
    assert (labels["time"] > 0).all() and labels["time"].max() <= synthetic.MAX_FOLLOW_UP_YEARS
    assert 0.5 < labels["time"].median() < 2.5
    c_index = concordance_index_censored(labels["event"].astype(bool).to_numpy(), labels["time"].to_numpy(),
                                         labels["true_risk"].to_numpy())[0]
    assert c_index > 0.7
    gbm = labels["project"] == "GBM"
    assert 0.3 < gbm.mean() < 0.7
    assert labels.loc[gbm, "true_risk"].mean() > labels.loc[~gbm, "true_risk"].mean() + 0.5


@pytest.mark.parametrize("name,features", [
    ("rna", lambda x: np.log1p(x)),
    ("dna", lambda x: np.nan_to_num(x, nan=0.5)),
])
def test_tabular_modalities_carry_the_shared_signal(tiny_cohort, tiny_patients, name, features):
    mask = tiny_cohort.present[name].to_numpy()
    x = np.stack([features(p[name]) for p in tiny_patients if p[name] is not None])
    y = tiny_cohort.labels["true_risk"].to_numpy()[mask]
    r2 = cross_val_score(Ridge(alpha=30.0), x, y, cv=5, scoring="r2").mean()
    assert r2 > 0.5, f"{name}: cross-validated R^2 {r2:.2f}"


def test_image_modalities_carry_the_shared_signal(tiny_cohort, tiny_patients):
    # WSI: how purple (nuclei) a patient's patches are follows the risk.
    mask = tiny_cohort.present["wsi"].to_numpy()
    risk = tiny_cohort.labels["true_risk"].to_numpy()[mask]
    darkness = np.array([255 - p["wsi"].astype(float).mean() for p in tiny_patients if p["wsi"] is not None])
    assert np.corrcoef(darkness, risk)[0, 1] > 0.5
    # MRI: the size of the bright tumour (voxels more than 2 SD above the brain's mean) follows the risk.
    mask = tiny_cohort.present["mri"].to_numpy()
    risk = tiny_cohort.labels["true_risk"].to_numpy()[mask]
    tumour_voxels = np.array([(p["mri"] > 2).sum() for p in tiny_patients if p["mri"] is not None])
    assert np.corrcoef(tumour_voxels, risk)[0, 1] > 0.4


def test_default_cohort_is_built_once_and_reused(tmp_path, monkeypatch):
    first = default_cohort(cache_dir=tmp_path)
    assert len(first) == 600 and first.provenance["generator_version"] == synthetic.GENERATOR_VERSION
    stores = [p for p in tmp_path.iterdir() if p.suffix == ".zarr"]
    assert len(stores) == 1 and f"v{synthetic.GENERATOR_VERSION}" in stores[0].name

    def no_rebuild(*args, **kwargs):
        raise AssertionError("default_cohort rebuilt a cached store")

    monkeypatch.setattr(synthetic, "build_synthetic", no_rebuild)
    second = default_cohort(cache_dir=tmp_path)
    assert second.labels.equals(first.labels)
    monkeypatch.setenv("IMPUMAE_CACHE", str(tmp_path))
    assert default_cohort().labels.equals(first.labels)


def test_cli_options_build_a_cohort(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    synthetic.add_arguments(parser)
    args = parser.parse_args(["--patients", "25", "--seed", "2"])
    args.shard_patients, args.split_seed, args.test_frac, args.folds = 8, 0, 0.2, 3
    cohort = synthetic.build(args, str(tmp_path / "cli.zarr"), overwrite=False)
    assert len(cohort) == 25 and cohort.splits["fold"].max() == 2
    assert cohort.provenance["seed"] == 2 and cohort.provenance["scale"] == "tiny"
