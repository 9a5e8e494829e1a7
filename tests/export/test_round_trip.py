"""Refit -> registered MLflow model -> predictions on another cohort with shuffled, partly missing
features, equal to the in-memory model's on inputs aligned by hand."""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from impumae.data.store import Cohort
from impumae.data.cohort_view import load_cohort_arrays, make_batchable
from impumae.export.align import (
    AlignmentError,
    FeatureAlignmentWarning,
    align_cohort,
    align_frame,
    column,
)
from impumae.export.mlflow_model import load_selected_model, predict_frame
from impumae.export.predict import (
    median_survival,
    predict,
    prediction_table,
    write_imputed,
)
from impumae.export.external_validation import external_metrics, log_external_validation
from impumae.modalities import ModalitySpec
from impumae.survival.metrics import survival_curve
from impumae.train.finetune_loop import predict_logits
from tests.export.conftest import REGISTERED, SUBSET, external_store


def in_memory_survival(fitted, reference_url: str, kept: dict[str, list[str]]) -> np.ndarray:
    """The refit's own model on the reference cohort (same patients, original feature order), with
    the features the external cohort lacks set to NaN by hand."""
    ca = load_cohort_arrays(reference_url, SUBSET)
    names = Cohort.open(reference_url).feature_names
    arrays = dict(ca.arrays)
    for m, keep in kept.items():
        lacking = ~np.isin(names(m), keep)
        arrays[m] = ca.arrays[m].copy()
        arrays[m][:, lacking] = np.nan
    view = type(ca)(**{**ca.__dict__, "arrays": arrays})
    rows = np.arange(len(ca.ids))
    return survival_curve(predict_logits(fitted.model, make_batchable(view, SUBSET, fitted.transforms, rows)))


def tree_hash(path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("uri_kind", ["models", "runs"])
def test_the_registered_model_predicts_a_shuffled_partly_missing_cohort_like_the_in_memory_model(refit, tmp_path, uri_kind):
    fitted, _, uri, refs, _ = refit
    assert refs["model_uri"] == f"models:/{REGISTERED}/1" and refs["version"] == "1"
    model = load_selected_model(refs["model_uri"] if uri_kind == "models" else refs["runs_uri"], uri)
    assert model.family == "impumae" and model.subset == SUBSET
    np.testing.assert_array_equal(model.grid, fitted.grid)

    drop = {"rna": 0.1, "dna": 0.1, "clinical": 0.0}
    external, kept = external_store(tmp_path / "external.zarr", seed=7, drop=drop)
    reference, _ = external_store(tmp_path / "reference.zarr", seed=7, shuffle=False)
    assert kept["rna"] != Cohort.open(reference.url).feature_names("rna")[:len(kept["rna"])]  # really shuffled

    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureAlignmentWarning)  # 10% missing: no warning
        aligned = align_cohort(model, external)
    prediction = predict(model, aligned)
    expected = in_memory_survival(fitted, reference.url, kept)
    np.testing.assert_allclose(prediction.surv, expected, rtol=1e-5, atol=1e-6)

    table = prediction_table(model, prediction, times=[0.5, 1.0])
    assert list(table["patient_id"]) == list(external.patient_ids)
    assert {"risk", "risk_group", "median_survival", "survival_at_0.5", "survival_at_1", "present_modalities",
            "imputed_modalities", "missing_features_rna", "missing_features_dna", "time", "event"} <= set(table.columns)
    present = external.present
    n_lacking = len(fitted.cohort.arrays["rna"][0]) - len(kept["rna"])
    assert (table.loc[present["rna"].to_numpy(), "missing_features_rna"] >= n_lacking).all()
    assert (table.loc[~present["rna"].to_numpy(), "missing_features_rna"] == 0).all()
    lacks_dna = ~present["dna"].to_numpy()
    assert lacks_dna.any() and all("dna" in s for s in table.loc[lacks_dna, "imputed_modalities"])
    assert set(table["risk_group"]) <= {"low", "middle", "high"}
    np.testing.assert_allclose(table["risk"], model.risk(expected), rtol=1e-5)

    # the same patients as a serving table, columns shuffled: the same predictions
    frame = serving_frame(external, kept)
    served = predict_frame(model, frame.sample(frac=1.0, axis=1, random_state=0))
    np.testing.assert_allclose(served["risk"], table["risk"], rtol=1e-5)


def serving_frame(cohort, kept) -> pd.DataFrame:
    parts = {"patient_id": cohort.patient_ids.astype(str)}
    for m in SUBSET:
        values = cohort.load(m)
        for j, name in enumerate(kept[m]):
            parts[column(m, name)] = values[:, j]
    return pd.DataFrame(parts)


def test_median_survival_interpolates_and_is_nan_when_not_reached():
    grid = np.array([1.0, 2.0, 3.0])
    surv = np.array([[0.8, 0.4, 0.2], [0.9, 0.8, 0.7], [0.5, 0.4, 0.3]])
    np.testing.assert_allclose(median_survival(surv, grid), [1.75, np.nan, 1.0])


def test_many_missing_features_warn_and_no_overlap_or_another_kind_is_refused(refit, tmp_path):
    _, model, *_ = refit
    many_missing, _ = external_store(tmp_path / "many.zarr", seed=3, drop={"dna": 0.3})
    with pytest.warns(FeatureAlignmentWarning, match=r"modality 'dna': \d+ of the model's 384 features \(30%\)"):
        align_cohort(model, many_missing)

    renamed = pd.DataFrame({"rna/not_a_gene": [1.0], "clinical/age_years": [60.0]})
    assert align_frame(model, renamed).absent_modalities == ["rna", "dna"]   # the unknown column is no rna feature
    with pytest.raises(AlignmentError, match="no column of the request is a feature of the model"):
        align_frame(model, renamed[["rna/not_a_gene"]])
    with pytest.raises(AlignmentError, match=r"no column of the request is a feature of the model .*\['mri/x'\]"):
        align_frame(model, pd.DataFrame({"mri/x": [1.0]}))

    tabular_clinical = ModalitySpec("clinical", kind="tabular", shape=(3,), patch=1)
    wrong_kind, _ = external_store(tmp_path / "kind.zarr", seed=3, shuffle=False, specs={"clinical": tabular_clinical},
                                   value_types={"clinical": "raw"})
    with pytest.raises(AlignmentError, match="modality 'clinical': the model's is a clinical modality, .* is tabular"):
        align_cohort(model, wrong_kind)
    wrong_values, _ = external_store(tmp_path / "values.zarr", seed=3, shuffle=False, value_types={"rna": "zscore"})
    with pytest.raises(AlignmentError, match="modality 'rna': the model was trained on value type 'fpkm_uq', .* "
                                             "stores 'zscore'. .* rebuild the store with --value-type rna=fpkm_uq"):
        align_cohort(model, wrong_values)


def test_imputed_out_writes_a_new_store_and_leaves_the_source_untouched(refit, tmp_path):
    _, model, *_ = refit
    source, _ = external_store(tmp_path / "source.zarr", seed=5, drop={"rna": 0.1})
    before = tree_hash(tmp_path / "source.zarr")
    imputed, not_stored = write_imputed(model, align_cohort(model, source), source, str(tmp_path / "imputed.zarr"))
    assert tree_hash(tmp_path / "source.zarr") == before and not_stored == []
    lacks = ~source.present["dna"].to_numpy()
    assert lacks.any()
    np.testing.assert_array_equal(imputed.imputed["dna"].to_numpy(), lacks)
    assert np.isfinite(imputed.load("dna")[lacks]).all()
    np.testing.assert_array_equal(imputed.load("dna")[~lacks], source.load("dna")[~lacks])


def test_external_validation_logs_a_run_linked_to_the_model_version(refit, tmp_path):
    _, model, uri, refs, _ = refit
    external, _ = external_store(tmp_path / "labelled.zarr", seed=9, n_patients=80)
    prediction = predict(model, align_cohort(model, external))
    results = external_metrics(model, prediction, n_boot=50)
    assert results["all"]["n"] == 80 and 0 <= results["all"]["c_index"]["estimate"] <= 1
    client = MlflowClient(tracking_uri=uri)
    run_id = log_external_validation(client, model, refs, prediction, results, external.url, n_boot=50, seed=0)
    run = client.get_run(run_id)
    assert run.data.tags["kind"] == "external_validation" and run.data.tags["model_version"] == "1"
    assert run.data.tags["model_model_id"] == refs["model_id"]
    assert run.data.metrics["external_all_c_index"] == pytest.approx(results["all"]["c_index"]["estimate"])
    files = {a.path for a in client.list_artifacts(run_id)}
    assert {"km_external_by_training_risk_tertile.png", "calibration_external.png", "external_validation.json"} <= files
    tags = client.get_model_version(REGISTERED, "1").tags
    assert tags[f"external_validation.{run_id}"] == external.url


def test_the_pyfunc_accepts_a_request_with_a_few_columns_and_refuses_one_without_a_known_feature(refit):
    import mlflow

    from impumae.export.mlflow_model import download

    _, model, uri, refs, _ = refit
    pyfunc = mlflow.pyfunc.load_model(str(download(refs["model_uri"], uri)))
    names = model.feature_names
    frame = pd.DataFrame({column("rna", names["rna"][0]): [3.1], column("rna", names["rna"][1]): [0.4],
                          column("clinical", "age_years"): [61.0]})
    (row,) = pyfunc.predict(frame).to_dict("records")
    assert row["present_modalities"] == "rna,clinical" and row["imputed_modalities"] == "dna"
    assert row["missing_features_rna"] == len(names["rna"]) - 2 and row["missing_features_clinical"] == 2
    assert 0 < row[f"survival_at_{model.grid[-1]:g}"] <= 1
    with pytest.raises(AlignmentError, match=r"no column of the request is a feature of the model .*'dna/not_a_probe'"):
        predict_frame(model, pd.DataFrame({"dna/not_a_probe": [0.5]}))
