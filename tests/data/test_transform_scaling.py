"""Per-feature scaling of tabular transforms (standard, clip, rank_gauss): fitted on training rows only,
invertible, stored as plain lists, chosen by the search space and part of the pretraining job's key."""
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from impumae.data.transforms import FoldTransforms, TransformOptions
from impumae.engine.pretrain_jobs import PretrainJob
from impumae.engine.space import SearchSpace
from impumae.modalities import ModalitySpec

SPECS = {"rna": ModalitySpec("rna", "tabular", (5,), patch=2, depth=1),
         "mutations": ModalitySpec("mutations", "tabular", (4,), patch=2, depth=1),
         "clinical": ModalitySpec("clinical", "clinical", (2,))}
VALUE_TYPES = {"rna": "zscore", "mutations": "binary", "clinical": "clinical"}
N, N_TRAIN = 80, 51


def cohort(seed=0):
    rng = np.random.default_rng(seed)
    rna = rng.standard_t(2, size=(N, 5)) * 3.0      # heavy tails, like cohort z-scores
    rna[0, 0] = 19.0                                 # one outlying training value
    rna[7, 2] = np.nan                               # a missing value inside a present row
    mutations = (rng.random((N, 4)) < 0.3).astype(float)
    clinical = np.c_[rng.normal(60, 10, N), rng.integers(0, 2, N)].astype(float)
    present = {m: np.ones(N, bool) for m in SPECS}
    return {"rna": rna, "mutations": mutations, "clinical": clinical}, present


def fit(arrays, present, **options):
    return FoldTransforms.fit(arrays, present, np.arange(N_TRAIN), SPECS, VALUE_TYPES, **options)


def test_default_options_are_standard_scaling():
    arrays, present = cohort()
    assert fit(arrays, present).to_dict() == fit(arrays, present, tabular_scaling="standard").to_dict()
    assert fit(arrays, present).transforms["rna"].scaling == "standard"


def test_clip_bounds_model_values_and_inverse_is_exact_inside_the_clip():
    arrays, present = cohort()
    t = fit(arrays, present, tabular_scaling="clip", clip=2.5)
    out = t.apply(arrays, present)["rna"]
    assert np.abs(out).max() == pytest.approx(2.5)
    standard = fit(arrays, present).apply(arrays, present)["rna"]
    inside = np.abs(standard) < 2.5
    np.testing.assert_allclose(out[inside], standard[inside], rtol=1e-6)
    back = t.inverse({"rna": out})["rna"]
    seen = inside & ~np.isnan(arrays["rna"])
    np.testing.assert_allclose(back[seen], arrays["rna"][seen], rtol=1e-5, atol=1e-5)
    # beyond the clip the value is lost: it comes back at the clip
    beyond = np.abs(standard) > 2.6
    assert beyond.any()
    assert (np.abs(back[beyond] - arrays["rna"][beyond]) > 1e-3).all()
    np.testing.assert_allclose(t.transforms["rna"].scale_features(back)[beyond], out[beyond], atol=1e-5)


def test_rank_gauss_is_fitted_on_training_rows_only():
    arrays, present = cohort()
    base = fit(arrays, present, tabular_scaling="rank_gauss").to_dict()
    changed = {k: v.copy() for k, v in arrays.items()}
    changed["rna"][N_TRAIN:] = changed["rna"][N_TRAIN:] * 100 + 7   # validation rows change wildly
    assert fit(changed, present, tabular_scaling="rank_gauss").to_dict() == base


def test_rank_gauss_maps_heavy_tails_to_a_normal_shape_nan_to_zero_binary_stays_standard():
    arrays, present = cohort()
    t = fit(arrays, present, tabular_scaling="rank_gauss")
    out = t.apply(arrays, present)
    train = out["rna"][:N_TRAIN]
    assert np.abs(train).max() < 3.0                      # Phi^-1(1 - 0.5/51) = 2.3; the outlier no longer dominates
    np.testing.assert_allclose(np.median(train, axis=0), 0, atol=0.1)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=0.15)
    assert out["rna"][7, 2] == 0                          # NaN -> 0, the training median
    assert t.transforms["mutations"].scaling == "standard" and t.transforms["mutations"].rank_gauss is None
    np.testing.assert_array_equal(out["mutations"], fit(arrays, present).apply(arrays, present)["mutations"])
    np.testing.assert_array_equal(out["clinical"], fit(arrays, present).apply(arrays, present)["clinical"])


def test_rank_gauss_inverse_round_trips_training_values_and_is_monotone_elsewhere():
    arrays, present = cohort()
    # 101 knots over 51 training values: every order statistic is a knot
    t = fit(arrays, present, tabular_scaling="rank_gauss")
    out = t.apply(arrays, present)
    back = t.inverse({"rna": out["rna"]})["rna"]
    seen = ~np.isnan(arrays["rna"][:N_TRAIN])
    np.testing.assert_allclose(back[:N_TRAIN][seen], arrays["rna"][:N_TRAIN][seen], rtol=1e-5, atol=1e-5)
    # few knots: not exact, but the inverse is monotone
    coarse = fit(arrays, present, tabular_scaling="rank_gauss", rank_gauss_knots=5).transforms["rna"]
    z = np.linspace(-3, 3, 61)[:, None].repeat(5, axis=1)
    values = coarse.inverse(z)
    assert (np.diff(values, axis=0) >= 0).all()


@pytest.mark.parametrize("scaling", ["standard", "clip", "rank_gauss"])
def test_fitted_transforms_travel_as_plain_lists_in_a_weights_only_checkpoint(scaling):
    arrays, present = cohort()
    t = fit(arrays, present, tabular_scaling=scaling)
    buffer = io.BytesIO()
    torch.save({"transforms": t.to_dict()}, buffer)
    buffer.seek(0)
    again = FoldTransforms.from_dict(torch.load(buffer, weights_only=True)["transforms"])
    assert again.transforms["rna"].scaling == scaling
    for name in arrays:
        np.testing.assert_allclose(again.apply(arrays, present)[name], t.apply(arrays, present)[name], atol=1e-5)  # float32 knots
    model_values = t.apply(arrays, present)["rna"]
    np.testing.assert_allclose(again.inverse({"rna": model_values})["rna"], t.inverse({"rna": model_values})["rna"],
                               rtol=1e-5, atol=1e-5)


def test_unknown_options_are_errors():
    arrays, present = cohort()
    with pytest.raises(ValueError, match="tabular_scaling"):
        fit(arrays, present, tabular_scaling="quantile")
    with pytest.raises(ValueError, match="unknown option"):
        fit(arrays, present, scaling="rank_gauss")


def job(transforms):
    ca = SimpleNamespace(url="file:///c.zarr", fingerprint="abc", specs=SPECS, split={})  # the stored split
    return PretrainJob.for_subset(ca, ("rna", "clinical"), 0, {"width": 16}, {"epochs": 1}, 0, transforms)


def test_the_options_are_part_of_the_pretraining_job_key():
    standard, rank_gauss = job(None), job({"tabular_scaling": "rank_gauss"})
    assert standard.key != rank_gauss.key
    assert job({"tabular_scaling": "clip", "clip": 2.0}).key != job({"tabular_scaling": "clip", "clip": 3.0}).key
    # naming the defaults is the default (and the key of jobs from before the option existed)
    assert job({"tabular_scaling": "standard"}).key == standard.key
    old = {k: v for k, v in standard.to_dict().items() if k != "transforms"}
    assert PretrainJob.from_dict(old).key == standard.key
    assert PretrainJob.from_dict(rank_gauss.to_dict()) == rank_gauss


def test_search_space_transforms_section(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {width: 16}\nfinetune: {epochs: 2}\n")
    assert SearchSpace.load(base).transforms == {}
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\ntransforms: {tabular_scaling: rank_gauss}\n")
    assert SearchSpace.load(child).transforms == {"tabular_scaling": "rank_gauss"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("transforms: {tabular_scaling: log}\n")
    with pytest.raises(ValueError, match="bad.yaml.*transforms"):
        SearchSpace.load(bad)
    assert TransformOptions.from_dict(SearchSpace.load("search_spaces/default.yaml").transforms).tabular_scaling == "rank_gauss"
    assert SearchSpace.load("search_spaces/paper.yaml").transforms == {}
