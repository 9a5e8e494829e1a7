"""What the pyfunc model answers to good and bad serving requests (in process; the served model is in
test_serving.py): refusals name the column form or the column, unknown columns and missing features are
reported, ids pass through, missing values are null."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils.proto_json_utils import NumpyEncoder

from impumae.export.align import column
from impumae.export.mlflow_model import download


@pytest.fixture(scope="module")
def pyfunc(refit):
    _, model, uri, refs, _ = refit
    return mlflow.pyfunc.load_model(str(download(refs["model_uri"], uri))), model


def one_patient(model, n_rna: int = 256) -> dict:
    names = model.feature_names
    row = {column("rna", f): 1.0 + j % 5 for j, f in enumerate(names["rna"][:n_rna])}
    row.update({column("clinical", "age_years"): 61.0, column("clinical", "radiation"): 1.0,
                column("clinical", "pharmaceutical"): 0.0})
    return row


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"GENE00000": [1.0], "GENE00001": [2.0]}), "no column of the request is a feature of the model"),
    (pd.DataFrame(), "the request has no rows"),
    (pd.DataFrame({"rna/GENE00000": []}), "the request has no rows"),
    (pd.DataFrame({"patient_id": ["a"]}), "no column of the request is a feature of the model"),
])
def test_a_request_without_a_known_feature_is_refused_naming_the_column_form(pyfunc, frame, message):
    model_pyfunc, model = pyfunc
    with pytest.raises(MlflowException, match=message) as error:
        model_pyfunc.predict(frame)
    assert error.value.get_http_status_code() == 400
    assert "expected columns '<modality>/<feature>': rna/" in str(error.value) or "no rows" in message


def test_unknown_columns_and_missing_features_are_reported_and_the_patient_id_passes_through(pyfunc):
    model_pyfunc, model = pyfunc
    frame = pd.DataFrame([{"patient_id": "P-7", column("rna", model.feature_names["rna"][0]): 3.0, "rna/NOTAGENE": 1.0}])
    (row,) = model_pyfunc.predict(frame).to_dict("records")
    assert row["patient_id"] == "P-7"
    assert row["unknown_columns"] == "rna/NOTAGENE"
    assert row["missing_features_rna"] == 255 and row["missing_fraction_rna"] == pytest.approx(255 / 256)
    assert "rna: 255 of the model's 256 features have no value" in row["warnings"]
    assert "ignored: rna/NOTAGENE" in row["warnings"]
    assert row["present_modalities"] == "rna" and row["missing_fraction_dna"] is None   # absent: null, imputed


@pytest.mark.parametrize("value, message", [(np.inf, "inf is not finite"), ("abc", "'abc' is not a number")])
def test_a_non_finite_or_non_numeric_value_is_refused_naming_column_and_patient(pyfunc, value, message):
    model_pyfunc, model = pyfunc
    row = one_patient(model)
    first = column("rna", model.feature_names["rna"][3])
    frame = pd.DataFrame([{"patient_id": "A", **row}, {"patient_id": "B", **row, first: value}])
    with pytest.raises(MlflowException, match=f"column '{first}', row 1 \\(patient 'B'\\): {message}"):
        model_pyfunc.predict(frame)


def test_a_row_without_any_value_is_refused(pyfunc):
    model_pyfunc, model = pyfunc
    row = one_patient(model)
    frame = pd.DataFrame([row, {k: np.nan for k in row}])
    with pytest.raises(MlflowException, match=r"row\(s\) \[1\] .* have no value in any feature column"):
        model_pyfunc.predict(frame)


def test_the_answer_is_valid_json_with_null_for_missing_values(pyfunc):
    model_pyfunc, model = pyfunc
    answer = model_pyfunc.predict(pd.DataFrame([one_patient(model, n_rna=200)]))
    text = json.dumps({"predictions": answer.to_dict("records")}, cls=NumpyEncoder, allow_nan=False)
    (row,) = json.loads(text)["predictions"]
    assert row["median_survival"] is None or row["median_survival"] >= 0
    assert row["missing_fraction_dna"] is None and row["missing_fraction_rna"] == pytest.approx(56 / 256)
    assert row["warnings"].startswith("rna: 56 of the model's 256")


def test_the_model_requirements_name_impumae_and_pin_torch(refit):
    import torch

    _, _, uri, refs, _ = refit
    local = download(refs["model_uri"], uri)
    requirements = (local / "requirements.txt").read_text().split()
    wheel = next(r for r in requirements if r.startswith("wheels/impumae-"))
    assert (local / wheel).is_file()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements or f"torch=={torch.__version__}" in requirements
