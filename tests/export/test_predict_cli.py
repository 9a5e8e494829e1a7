"""experiments/predict.py end to end on the registered tiny model (in-process)."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
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


# ----------------------------------------------------------------------------- patients without follow-up
def write_tables(cohort, directory, modalities=("rna", "clinical")) -> dict:
    """The cohort's named-feature modalities as tidy CSV tables (id first), patients lacking one left out."""
    paths = {}
    for m in modalities:
        present = cohort.present[m].to_numpy()
        table = pd.DataFrame(cohort.load(m)[present], columns=cohort.feature_names(m))
        table.insert(0, "patient_id", cohort.patient_ids[present])
        paths[m] = directory / f"{m}.csv"
        table.to_csv(paths[m], index=False)
    return paths


def test_tables_without_labels_are_predicted_and_not_validated(refit, tmp_path, capsys):
    _, _, uri, refs, _ = refit
    cohort, _ = external_store(tmp_path / "new.zarr", seed=21, n_patients=30)
    paths = write_tables(cohort, tmp_path)
    out = tmp_path / "p.csv"
    code = predict_cli.main(["--model", refs["runs_uri"], *[a for m, p in paths.items() for a in ("--modality", f"{m}={p}")],
                             "--out", str(out), "--times", "1", "--mlflow-uri", uri])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "no labels" in captured.out and "external-validation run" not in captured.out
    table = pd.read_csv(out)                                    # a CSV, as the suffix says
    expected = [i for i in cohort.patient_ids if cohort.present.loc[i, ["rna", "clinical"]].any()]
    assert sorted(table["patient_id"]) == sorted(expected) and "time" not in table.columns
    assert set(table["imputed_modalities"]) >= {"dna"} and "survival_at_1" in table.columns


def test_a_store_without_labels_is_predicted(refit, tmp_path, capsys):
    import zarr

    _, _, uri, refs, _ = refit
    external_store(tmp_path / "unlabelled.zarr", seed=22, n_patients=20)
    group = zarr.open_group(str(tmp_path / "unlabelled.zarr"), mode="r+")
    for name in ("time", "event", "true_risk"):
        if f"labels/{name}" in group:
            del group[f"labels/{name}"]
    code = predict_cli.main(["--model", refs["runs_uri"], "--cohort", str(tmp_path / "unlabelled.zarr"),
                             "--out", str(tmp_path / "p.parquet"), "--mlflow-uri", uri])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = pd.read_parquet(tmp_path / "p.parquet")
    assert len(table) == 20 and "time" not in table.columns and "no labels" in captured.out


def test_labels_without_a_death_are_not_validated(refit, tmp_path, capsys):
    _, _, uri, refs, _ = refit
    cohort, _ = external_store(tmp_path / "new.zarr", seed=23, n_patients=20)
    paths = write_tables(cohort, tmp_path, ("rna",))
    pd.DataFrame({"patient_id": cohort.patient_ids, "time": 0.0, "event": 0}).to_csv(tmp_path / "labels.csv", index=False)
    code = predict_cli.main(["--model", refs["runs_uri"], "--modality", f"rna={paths['rna']}", "--labels",
                             str(tmp_path / "labels.csv"), "--out", str(tmp_path / "p.parquet"), "--mlflow-uri", uri])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "record no death" in captured.out and " in MLflow " not in captured.out


@pytest.mark.parametrize("extra, message", [
    (["--times", "-1"], "--times -1: a time must be a finite number of years > 0"),
    (["--times", "1e9"], "--times 1e+09: past the model's last grid time"),
    (["--imputed-out", "EXISTING"], "already exists; pass --overwrite"),
    (["--out-suffix", ".xlsx"], "unknown table format"),
])
def test_options_are_checked_before_anything_is_written(refit, tmp_path, capsys, extra, message):
    _, _, uri, refs, _ = refit
    external_store(tmp_path / "new.zarr", seed=24, n_patients=10)
    (tmp_path / "EXISTING").mkdir()
    out = tmp_path / "p.parquet"
    if extra[0] == "--out-suffix":
        out, extra = tmp_path / f"p{extra[1]}", []
    extra = [str(tmp_path / a) if a == "EXISTING" else a for a in extra]
    code = predict_cli.main(["--model", refs["runs_uri"], "--cohort", str(tmp_path / "new.zarr"), "--out", str(out),
                             "--mlflow-uri", uri, "--no-validate", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_times_past_the_grid_are_marked_as_extrapolated_when_asked(refit, tmp_path):
    _, model, uri, refs, _ = refit
    external_store(tmp_path / "new.zarr", seed=25, n_patients=10)
    out = tmp_path / "p.parquet"
    end = float(model.grid[-1])
    assert predict_cli.main(["--model", refs["runs_uri"], "--cohort", str(tmp_path / "new.zarr"), "--out", str(out),
                             "--times", "1", "100", "--extrapolate", "--mlflow-uri", uri, "--no-validate"]) == 0
    table = pd.read_parquet(out)
    assert end < 100 and {"survival_at_1", "survival_at_100_extrapolated"} <= set(table.columns)


def test_a_missing_or_damaged_model_is_named_with_exit_2(refit, tmp_path, capsys):
    import shutil

    from impumae.export.mlflow_model import download

    _, _, uri, refs, _ = refit
    external_store(tmp_path / "new.zarr", seed=26, n_patients=10)
    source = download(refs["model_uri"], uri)

    def run(model) -> str:
        code = predict_cli.main(["--model", str(model), "--cohort", str(tmp_path / "new.zarr"),
                                 "--out", str(tmp_path / "p.parquet"), "--mlflow-uri", uri, "--no-validate"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and not (tmp_path / "p.parquet").exists()
        return err

    assert "nothere: no such model directory" in run(tmp_path / "nothere")
    assert "No such registered model" in run("models:/not-registered/1") or "not-registered" in run("models:/not-registered/1")
    damaged = {}
    for what in ("state", "mlmodel", "pickle"):
        damaged[what] = tmp_path / what
        shutil.copytree(source, damaged[what])
    state = damaged["state"] / "artifacts" / "selected_model" / "selected_model.pt"
    state.write_bytes(state.read_bytes()[:-3189])
    assert f"{state}: cannot read the model state, the file is truncated or corrupted" in run(damaged["state"])
    (damaged["mlmodel"] / "MLmodel").write_text("flavors: [unclosed\n")
    assert f"{damaged['mlmodel'] / 'MLmodel'}: cannot read it as an MLflow model" in run(damaged["mlmodel"])
    (damaged["pickle"] / "python_model.pkl").write_bytes(b"\x80\x04garbage")
    assert f"{damaged['pickle'] / 'python_model.pkl'}: cannot unpickle" in run(damaged["pickle"])
