"""Pretraining refuses a modality it cannot learn from, before anything trains: the 76-feature
``rna`` table that got the paper's 16k-gene patch (one token, nothing masked, loss 0.0000)."""
import numpy as np
import pandas as pd
import pytest

from impumae.data.tables import build_from_tables
from impumae.engine.pretrain_jobs import check_job, ensure_pretrained, job_for, run_pretraining

N, FEATURES = 40, 76
MODEL = dict(width=16, heads=2, mlp_ratio=2.0, decoder_width=16, decoder_depth=1, decoder_heads=2, decoder_mlp=32)
PRETRAIN = dict(epochs=1, batch_size=16, mask_ratio=0.5)


def rna_table_cohort(tmp_path, patches=None) -> str:
    rng = np.random.default_rng(0)
    ids = [f"P{i:02d}" for i in range(N)]
    labels = pd.DataFrame({"patient_id": ids, "time": rng.uniform(0.1, 10, N), "event": rng.integers(0, 2, N)})
    rna = pd.DataFrame(rng.normal(size=(N, FEATURES)), columns=[f"G{j}" for j in range(FEATURES)])
    rna.insert(0, "patient_id", ids)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    rna.to_csv(tmp_path / "rna.csv", index=False)
    out = str(tmp_path / ("c512.zarr" if patches else "c.zarr"))
    build_from_tables(str(tmp_path / "labels.csv"), {"rna": str(tmp_path / "rna.csv")}, out, patches=patches,
                      progress=False, n_folds=3)
    return out


def test_a_one_token_modality_is_refused_before_training(tmp_path):
    cohort = rna_table_cohort(tmp_path, patches={"rna": 512})
    job, _, _ = job_for(cohort, "rna", 0, MODEL, PRETRAIN, 0)
    message = r"modality 'rna' \(76 features, patch 512\) has 1 token\(s\); .* at least 4: .*--patch rna=P"
    with pytest.raises(ValueError, match=message):
        check_job(job)
    storage = str(tmp_path / "runs")
    with pytest.raises(ValueError, match=message):
        ensure_pretrained(job, storage, workers=0, echo=lambda *a, **k: None)
    with pytest.raises(ValueError, match=message):  # the driver's path: refused before Ray is asked for
        run_pretraining([job], storage, workers=2, echo=lambda *a, **k: None)
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_the_default_patch_pretrains_and_scores_validation_reconstruction(tmp_path):
    cohort = rna_table_cohort(tmp_path)
    job, _, _ = job_for(cohort, "rna", 0, MODEL, PRETRAIN, 0)
    check_job(job)  # 76 features -> patch 4, 19 tokens
    state = ensure_pretrained(job, str(tmp_path / "runs"), workers=0, echo=lambda *a, **k: None)
    last = state["history"][-1]
    assert last["loss"] > 0 and np.isfinite(last["recon_vs_mean_rna"])


def test_progress_lines_show_recon_vs_mean_per_modality():
    from impumae.engine.pretrain_jobs import format_losses
    row = {"epoch": 3, "loss": 1.5, "loss_rna": 0.7, "loss_dna": 0.8, "recon_vs_mean_rna": 0.7412, "recon_vs_mean_dna": 0.8}
    assert format_losses(row).endswith("recon_vs_mean rna 0.74 dna 0.80")
    refit = {"epoch": 3, "loss": 1.5, "recon_vs_mean_train_rna": 0.5}
    assert format_losses(refit) == "loss 1.5000  recon_vs_mean_train rna 0.50"
