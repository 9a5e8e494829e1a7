"""experiments/pretrain.py, finetune.py and impute.py as subprocesses on a tiny synthetic cohort
(no Ray: in-process pretraining), and the inverse of the fold-fitted transforms."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from impumae.data.store import Cohort
from impumae.data.synthetic import build_synthetic
from impumae.data.transforms import FoldTransforms, ModalityTransform
from impumae.modalities import ModalitySpec

ROOT = Path(__file__).resolve().parents[2]
SPACE = """\
model: {width: 32, heads: 2, mlp_ratio: 2.0, decoder_width: 32, decoder_depth: 1, decoder_heads: 2,
        decoder_mlp: 64, depth: {rna: 1, dna: 1}}
pretrain: {epochs: 2, batch_size: 32, lr: 1.0e-3}
finetune: {batch_size: 32, n_bins: 20, freeze: paper}
search: {}
"""


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], capture_output=True,
                          text=True, cwd=str(ROOT), env=env, timeout=600)


def tree_state(path: Path) -> dict:
    """{relative file: (sha256, mtime_ns)} of every file under ``path``."""
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cohort = root / "cohort.zarr"
    build_synthetic(str(cohort), n_patients=200, progress=False)
    space = root / "tiny.yaml"
    space.write_text(SPACE)
    common = ["--cohort", str(cohort), "--subset", "rna,dna", "--fold", "0", "--space", str(space),
              "--storage", str(root / "runs")]
    return {"root": root, "cohort": cohort, "common": common}


@pytest.fixture(scope="module")
def pretrained(setup):
    result = run_cli("pretrain.py", *setup["common"])
    assert result.returncode == 0, result.stderr
    checkpoint = next(line.split("checkpoint: ", 1)[1].strip() for line in result.stdout.splitlines()
                      if line.startswith("checkpoint: "))
    return result.stdout, Path(checkpoint)


def test_pretrain_cli_prints_progress_losses_patients_and_checkpoint(setup, pretrained):
    out, checkpoint = pretrained
    assert "epoch    1/2" in out and "epoch    2/2" in out
    assert "first epoch loss: loss " in out and "last epoch loss:  loss " in out
    assert "patients used: " in out
    assert checkpoint.exists() and checkpoint.name == "mae.pt"
    # the fold's training patients with rna or dna, never a validation or holdout patient
    from impumae.data.cohort_view import load_cohort_arrays
    ca = load_cohort_arrays(str(setup["cohort"]), ("rna", "dna"))
    train = ca.train_indices(0)
    expected = int((ca.present["rna"][train] | ca.present["dna"][train]).sum())
    assert f"patients used: {expected} " in out
    # a second run reuses the checkpoint
    again = run_cli("pretrain.py", *setup["common"])
    assert again.returncode == 0 and "checkpoint exists, not retraining" in again.stdout


def test_pretrain_cli_rejects_a_bad_fold(setup):
    result = run_cli("pretrain.py", *setup["common"][:-6], "--fold", "9", *setup["common"][-4:])
    assert result.returncode == 2 and "--fold 9" in result.stderr


def test_finetune_cli_prints_table_oracle_baselines_and_imputation_quality(setup, pretrained):
    result = run_cli("finetune.py", *setup["common"], "--epochs", "2", "--lr", "1e-3", "--baselines")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "checkpoint exists, not retraining" in out  # the pretrained MAE of the same (subset, fold)
    assert "train_loss" in out and "val_C_td" in out and "val_IBS" in out and "val_CS" in out
    table = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in ("1", "2")]
    assert len(table) >= 2 and all(len(row) == 6 for row in table[:2])
    assert "at epoch 2 (the last trained, fixed in advance)" in out  # honest: no epoch picked on the fold
    assert "(this fold's best, a peek)" in out and "optimism of the peek" in out
    assert "oracle C-index (Harrell's C of true_risk" in out and "ratio fine-tuned / oracle" in out
    for name in ("coxph", "coxnet", "rsf", "late_fusion_coxph"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert "imputation quality" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["rna"], ["dna"])}
    for m in ("rna", "dna"):
        assert np.isfinite(float(rows[m][2])) and np.isfinite(float(rows[m][3]))  # R2 decoder, R2 mean


def test_impute_cli_writes_a_new_store_and_leaves_the_source_alone(setup, pretrained):
    _, checkpoint = pretrained
    cohort, out = setup["cohort"], setup["root"] / "imputed.zarr"
    before = tree_state(cohort)
    result = run_cli("impute.py", "--cohort", str(cohort), "--checkpoint", str(checkpoint), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert tree_state(cohort) == before  # hashes and mtimes of every source file
    assert not [p for p in setup["root"].iterdir() if ".tmp" in p.name]

    src, new = Cohort.open(str(cohort)), Cohort.open(str(out))
    imputed = zarr.open_group(str(out), mode="r")["imputed"][:]
    assert imputed.dtype == bool and imputed.shape == (len(src), len(src.modalities))
    assert new.modalities == src.modalities
    np.testing.assert_array_equal(new.present.to_numpy(), src.present.to_numpy())
    for j, m in enumerate(src.modalities):
        present = src.present[m].to_numpy()
        a, b = src.load(m), new.load(m)
        np.testing.assert_array_equal(a[present], b[present])  # measured values identical (NaN included)
        if m in ("rna", "dna"):
            np.testing.assert_array_equal(imputed[:, j], ~present)
            assert np.isfinite(b[~present].astype(np.float64)).all()
        else:
            assert not imputed[:, j].any()
            np.testing.assert_array_equal(a[~present], b[~present])
    assert (new.labels[["time", "event", "true_risk"]] == src.labels[["time", "event", "true_risk"]]).all().all()
    assert new.splits.equals(src.splits)
    assert new.provenance["source"] == "impute" and new.provenance["parent_url"] == src.url

    # deterministic: a second run gives the same values; without --overwrite it refuses
    refused = run_cli("impute.py", "--cohort", str(cohort), "--checkpoint", str(checkpoint), "--out", str(out))
    assert refused.returncode == 2 and "already exists" in refused.stderr
    again = run_cli("impute.py", "--cohort", str(cohort), "--checkpoint", str(checkpoint), "--out", str(out),
                    "--overwrite")
    assert again.returncode == 0, again.stderr
    np.testing.assert_allclose(Cohort.open(str(out)).load("rna"), new.load("rna"), rtol=1e-5, equal_nan=True)
    assert tree_state(cohort) == before


def test_impute_cli_chooses_on_validation_folds_and_records_the_provenance(setup, pretrained):
    """auto: the fold checkpoints beside the checkpoint (here fold 0) choose per modality among decoder,
    ridge, kNN and mean; the store says which and with what validation R^2; a forced method is applied
    (a reference imputer fitted on the checkpoint's training patients) and recorded as forced."""
    from impumae.train.imputers import CHOOSABLE, imputation_provenance

    _, checkpoint = pretrained
    cohort = setup["cohort"]
    auto_out, ridge_out = setup["root"] / "auto.zarr", setup["root"] / "ridge.zarr"
    result = run_cli("impute.py", "--cohort", str(cohort), "--checkpoint", str(checkpoint), "--out", str(auto_out))
    assert result.returncode == 0, result.stderr
    recorded = imputation_provenance(Cohort.open(str(auto_out)))
    assert set(recorded) == {"rna", "dna"}
    for m, c in recorded.items():
        assert c["method"] in CHOOSABLE and not c["forced"]
        assert c["folds"] == [0]                                        # a validation fold, never the refit
        assert c["validation_r2"] == max(c["validation_r2_by_method"].values())
        assert set(c["validation_r2_by_method"]) == set(CHOOSABLE)
        assert len(c["validation_r2_per_feature"]) == Cohort.open(str(cohort)).specs[m].shape[0]
        assert f"{m}: {c['method']}, validation R2" in result.stdout

    result = run_cli("impute.py", "--cohort", str(cohort), "--checkpoint", str(checkpoint), "--out", str(ridge_out),
                     "--imputer", "ridge")
    assert result.returncode == 0, result.stderr
    new, src = Cohort.open(str(ridge_out)), Cohort.open(str(cohort))
    c = imputation_provenance(new)["rna"]
    assert c["method"] == "ridge" and c["forced"] and c["validation_r2"] == recorded["rna"]["validation_r2_by_method"]["ridge"]
    assert c["fitted_on_patients"] > 0 and "alpha" in c["reference_info"]
    missing = ~src.present["rna"].to_numpy()
    rna = new.load("rna")[missing]
    assert np.isfinite(rna).all() and rna.std(0).mean() > 0    # a regression on DNAm, not one mean row

    # without fold checkpoints the decoder fills everything, marked as not validated
    bare = setup["root"] / "bare-runs" / "pretrain" / "k"
    bare.mkdir(parents=True)
    (bare / "mae.pt").write_bytes(checkpoint.read_bytes())
    out = setup["root"] / "bare.zarr"
    result = run_cli("impute.py", "--cohort", str(cohort), "--checkpoint", str(bare / "mae.pt"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert all(c["method"] == "decoder" and c["validation_r2"] is None
               for c in imputation_provenance(Cohort.open(str(out))).values())
    refused = run_cli("impute.py", "--cohort", str(cohort), "--checkpoint", str(checkpoint), "--out",
                      str(setup["root"] / "x.zarr"), "--imputer", "lasso")
    assert refused.returncode == 2 and "invalid choice" in refused.stderr


# -- the inverse of the fold-fitted transforms ---------------------------------------------------
def _fit(value_type: str, kind: str, x: np.ndarray, shape, dtype="float32") -> ModalityTransform:
    spec = ModalitySpec("m", kind, shape, dtype)
    present = {"m": np.ones(len(x), bool)}
    return FoldTransforms.fit({"m": x}, present, np.arange(len(x)), {"m": spec}, {"m": value_type}).transforms["m"]


@pytest.mark.parametrize("value_type", ["zscore", "beta", "binary", "raw"])
def test_inverse_is_the_identity_on_kept_features_and_the_raw_mean_on_dropped_ones(value_type):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 0.95, size=(40, 6))
    if value_type == "binary":
        x = (x > 0.5).astype(float)
    if value_type == "zscore":
        x = rng.normal(size=(40, 6))
        x[:, 2] = 0.5 + 0.001 * rng.normal(size=40)  # sd < 0.1: dropped by the filter
    t = _fit(value_type, "tabular", x, (6,))
    back = t.inverse(t.apply(x, np.ones(len(x), bool)))
    assert back.shape == x.shape
    np.testing.assert_allclose(back[:, t.keep], x[:, t.keep], atol=1e-5)
    dropped = np.setdiff1d(np.arange(6), t.keep)
    if value_type == "zscore":
        assert list(dropped) == [2]
    np.testing.assert_allclose(back[:, dropped], np.broadcast_to(x[:, dropped].mean(0), back[:, dropped].shape), atol=1e-5)


def test_inverse_fpkm_uses_the_training_median_of_medians():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 20.0, size=(50, 8))
    x[:, 5] = 3.0  # constant: dropped
    t = _fit("fpkm_uq", "tabular", x, (8,))
    assert 5 not in t.keep and t.median_scale > 0
    y = t.apply(x, np.ones(len(x), bool))
    own_median = np.median(np.log1p(x[:, t.keep]), axis=1, keepdims=True)
    # with each sample's own median in place of the training median of medians the inverse is exact
    normalised = y * t.scale + t.center                       # undo the standardisation step
    back = t.inverse((normalised * own_median / t.median_scale - t.center) / t.scale)
    np.testing.assert_allclose(back[:, t.keep], x[:, t.keep], rtol=1e-4)
    np.testing.assert_allclose(back[:, 5], 3.0, rtol=1e-6)
    assert t.median_scale == pytest.approx(float(np.median(own_median)))


def test_inverse_of_clinical_volume_and_image():
    rng = np.random.default_rng(2)
    clin = np.column_stack([rng.normal(60, 10, 30), rng.integers(0, 2, 30), rng.integers(0, 2, 30)]).astype(float)
    t = _fit("clinical", "clinical", clin, (3,))
    np.testing.assert_allclose(t.inverse(t.apply(clin, np.ones(30, bool))), clin, atol=1e-4)
    vol = rng.normal(size=(4, 4, 4, 4)).astype(np.float32)
    t = _fit("zscored", "volume", vol, (4, 4, 4))
    np.testing.assert_array_equal(t.inverse(t.apply(vol, np.ones(4, bool))), vol)
    img = rng.integers(0, 256, size=(3, 2, 4, 4, 3)).astype(np.uint8)
    t = _fit("rgb", "image", img, (2, 4, 4, 3), dtype="uint8")
    back = t.inverse(t.apply(img, np.ones(3, bool)))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, img)
    assert t.inverse(np.array([[-0.2, 1.7]])).tolist() == [[0, 255]]  # clipped to the uint8 range


def test_inverse_statistics_travel_with_to_dict_and_old_dicts_load():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 20.0, size=(20, 5))
    t = _fit("fpkm_uq", "tabular", x, (5,))
    again = ModalityTransform.from_dict(t.to_dict())
    assert again.median_scale == t.median_scale and np.array_equal(again.raw_mean, t.raw_mean)
    old = {k: v for k, v in t.to_dict().items() if k not in ("raw_mean", "median_scale")}
    stale = ModalityTransform.from_dict(old)
    assert not stale.invertible and again.invertible
    with pytest.raises(ValueError, match="refit"):
        stale.inverse(np.zeros((1, stale.keep.size)))
