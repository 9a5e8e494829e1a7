"""The kind registry: lookups, what each built-in kind declares, and that it matches today's behaviour."""
import subprocess
import sys
import types

import numpy as np
import pytest

from impumae import kinds
from impumae.data import store
from impumae.data.transforms import FoldTransforms, ModalityTransform
from impumae.kinds import value_types
from impumae.modalities import PAPER, ModalitySpec

BUILT_IN = ("tabular", "volume", "image", "clinical")


def test_built_in_kinds_are_registered_and_an_unknown_kind_names_them():
    assert kinds.names()[:4] == BUILT_IN
    assert all(kinds.get(k).name == k for k in BUILT_IN)
    with pytest.raises(ValueError, match=r"modality 'ct': unknown kind 'cat'; registered kinds: tabular, volume, image, clinical"):
        ModalitySpec("ct", "cat", (4,))
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(type(kinds.get("tabular"))())


def test_importing_the_kinds_does_not_import_torch():
    code = "import sys, impumae.kinds, impumae.modalities; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name, tokens, patch_dim", [("rna", 32, 512), ("dna", 26, 1024), ("mri", 64, 4096),
                                                     ("wsi", 256, 768), ("clinical", 0, 0), ("mutations", 5, 4)])
def test_paper_tokens_per_kind(name, tokens, patch_dim):
    spec = PAPER[name]
    assert (spec.n_tokens, spec.patch_dim, spec.tokenised) == (tokens, patch_dim, name != "clinical")


@pytest.mark.parametrize("kind, shape, patch", [("volume", (16, 16), 8), ("volume", (16, 16, 12), 8),
                                                ("image", (3, 32, 32), 8), ("image", (3, 32, 32, 4), 8),
                                                ("image", (3, 32, 28, 3), 8), ("tabular", (4, 4), 2),
                                                ("clinical", (3, 1), 1)])
def test_a_shape_the_kind_cannot_cut_is_refused(kind, shape, patch):
    with pytest.raises(ValueError, match=f"modality 'm': {kind} shape"):
        ModalitySpec("m", kind, shape, patch=patch)


def test_store_facts_keep_their_values():
    """The store asks the kinds for these facts; they keep the values the store had before the kinds owned them."""
    for name in BUILT_IN:
        kind = kinds.get(name)
        assert kind.nan_marks_missing_value == (name in ("tabular", "clinical"))
        assert kind.has_feature_names == (name in ("tabular", "clinical"))
        assert kind.default_compressor == {"tabular": "lz4", "clinical": "lz4", "volume": "lz4", "image": "none"}[name]
        assert kind.default_value_type == {"tabular": "raw", "volume": "raw", "image": "rgb", "clinical": "clinical"}[name]
        assert kind.storage_dtype == PAPER[{"tabular": "rna", "volume": "mri", "image": "wsi"}.get(name, name)].dtype
    assert value_types.NAMES == store.VALUE_TYPES
    wsi = PAPER["wsi"]
    assert kinds.get("image").chunk_shape(wsi) == (1, 1, 256, 256, 3)
    assert kinds.get("volume").chunk_shape(PAPER["mri"]) == (1, 64, 64, 64)


def test_value_types_declare_their_steps():
    steps = {n: (vt.sd_filter, vt.log_median, vt.clip) for n, vt in value_types.VALUE_TYPES.items()}
    assert steps["fpkm_uq"] == (True, True, None) and steps["zscore"] == (True, False, None)
    assert steps["beta"] == steps["binary"] == (False, False, (0.0, 1.0))
    assert steps["raw"] == (False, False, None)
    with pytest.raises(ValueError, match="unknown value type 'counts'"):
        value_types.get("counts")


def test_stacked_kind_items_and_paper_freeze_flags():
    image, tabular = kinds.get("image"), kinds.get("tabular")
    assert image.stacked and image.items_per_sample(PAPER["wsi"]) == 10 and image.item_shape(PAPER["wsi"]) == (256, 256, 3)
    assert not tabular.stacked and tabular.item_shape(PAPER["rna"]) == (16_304,)
    assert [k for k in BUILT_IN if kinds.get(k).fine_tunes_last_blocks] == ["tabular"]


def test_baseline_features_summarise_each_kind_by_known_answers():
    """What the classical baselines see (``data.baseline_features`` asks ``Kind.baseline_summary``):
    tabular and clinical features as transformed, a volume's voxel mean and SD, a slide's channel means / 255;
    NaN rows for patients without the modality."""
    from impumae.data.baseline_features import baseline_features
    rng = np.random.default_rng(0)
    n = 12
    specs = {"rna": ModalitySpec("rna", "tabular", (5,), patch=1), "clinical": ModalitySpec("clinical", "clinical", (2,)),
             "mri": ModalitySpec("mri", "volume", (4, 4, 4), patch=2),
             "wsi": ModalitySpec("wsi", "image", (2, 4, 4, 3), dtype="uint8", patch=2)}
    arrays = {"rna": rng.normal(size=(n, 5)), "clinical": np.c_[rng.normal(60, 9, n), rng.integers(0, 2, n)],
              "mri": rng.normal(size=(n, 4, 4, 4)).astype(np.float32),
              "wsi": rng.integers(0, 256, (n, 2, 4, 4, 3)).astype(np.uint8)}
    present = {m: np.arange(n) % 4 != i for i, m in enumerate(arrays)}
    transforms = FoldTransforms.fit(arrays, present, np.arange(8), specs, {"rna": "zscore"})
    ca = types.SimpleNamespace(specs=specs, present=present, arrays=arrays, ids=np.arange(n))
    features = baseline_features(ca, list(specs), transforms)
    for m in specs:
        assert features[m].dtype == np.float64 and np.isnan(features[m][~present[m]]).all()
    rows = np.flatnonzero(present["rna"])
    np.testing.assert_allclose(features["rna"][rows],
                               transforms.transforms["rna"].apply(arrays["rna"][rows], np.ones(len(rows), bool)), rtol=1e-6)
    rows = np.flatnonzero(present["mri"])
    voxels = arrays["mri"][rows].reshape(len(rows), -1).astype(np.float64)
    np.testing.assert_allclose(features["mri"][rows], np.c_[voxels.mean(1), voxels.std(1)], rtol=1e-6)
    rows = np.flatnonzero(present["wsi"])
    np.testing.assert_allclose(features["wsi"][rows], arrays["wsi"][rows].reshape(len(rows), -1, 3).mean(1) / 255.0)
    for m, spec in specs.items():   # no patient has it: the right width, no row
        model_space = transforms.transforms[m].apply(arrays[m][:0], np.ones(0, bool))
        assert spec.kind_object.baseline_summary(model_space).shape == (0, features[m].shape[1])


def test_transform_dicts_round_trip_and_pre_split_dicts_load():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(5, 2, 2, 2)).astype(np.float32)
    vol[0, 0, 0, 0] = np.nan
    t = kinds.get("volume").fit_transform("mri", "zscored", vol, 0.1)
    assert t.to_dict() == {"name": "mri", "kind": "volume", "value_type": "zscored"}
    old = {"name": "mri", "kind": "volume", "value_type": "zscored", "keep": None, "fill": None, "center": None,
           "scale": None, "raw_mean": None, "median_scale": None}  # what every transform wrote before
    loaded = ModalityTransform.from_dict(old)
    assert type(loaded) is type(t)
    np.testing.assert_array_equal(loaded.apply(vol, np.ones(5, bool)), np.nan_to_num(vol))
    with pytest.raises(ValueError, match="has no field 'keep'"):
        ModalityTransform.from_dict({**old, "keep": [0]})
