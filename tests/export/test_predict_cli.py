"""experiments/predict.py end to end on the registered tiny model (in-process)."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from experiments import predict as predict_cli
from impumae.data.store import Cohort
from impumae.modalities import ModalitySpec
from tests.export.conftest import REGISTERED, external_store


def digest(path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()


def test_predict_writes_the_table_an_imputed_store_and_a_validation_run(refit, tmp_path, capsys):
    _, _, uri, refs, _ = refit
    cohort, _ = external_store(tmp_path / "new.zarr", seed=11, drop={"dna": 0.3})
    before = digest(tmp_path / "new.zarr")
    out = tmp_path / "predictions.parquet"
    code = predict_cli.main(["--model", f"models:/{REGISTERED}/1", "--cohort", str(tmp_path / "new.zarr"),
                             "--out", str(out), "--times", "1", "2", "--imputed-out", str(tmp_path / "imputed.zarr"),
                             "--mlflow-uri", uri, "--n-boot", "20"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "modality 'dna'" in captured.err and "30%" in captured.err        # the > 20% warning
    table = pd.read_parquet(out)
    assert len(table) == len(cohort) and {"survival_at_1", "survival_at_2", "missing_features_dna"} <= set(table.columns)
    assert (np.diff(table[["survival_at_1", "survival_at_2"]].to_numpy(), axis=1) <= 1e-7).all()
    assert digest(tmp_path / "new.zarr") == before                           # the source store is only read
    assert Cohort.open(str(tmp_path / "imputed.zarr")).imputed is not None
    assert (tmp_path / "predictions_calibration_external.png").exists()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_run(refs["source_run_id"]).info.experiment_id],
                              filter_string="tags.kind = 'external_validation'")
    assert any(r.data.tags.get("cohort") == cohort.url and "external_all_c_index" in r.data.metrics for r in runs)


def test_predict_refuses_a_modality_of_another_shape_naming_it(refit, tmp_path, capsys):
    _, _, uri, refs, _ = refit
    external_store(tmp_path / "bad.zarr", seed=12, shuffle=False,
                   specs={"clinical": ModalitySpec("clinical", kind="tabular", shape=(3,), patch=1)},
                   value_types={"clinical": "raw"})
    code = predict_cli.main(["--model", refs["runs_uri"], "--cohort", str(tmp_path / "bad.zarr"),
                             "--out", str(tmp_path / "p.parquet"), "--mlflow-uri", uri, "--no-validate"])
    assert code == 2
    assert "modality 'clinical': the model's is a clinical modality" in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()
