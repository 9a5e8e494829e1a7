"""``mlflow models serve -m models:/NAME/1`` answers a JSON request for one patient with a survival curve."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from impumae.data.store import Cohort
from impumae.export.align import column
from impumae.export.mlflow_model import predict_frame
from tests.export.conftest import REGISTERED

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
def test_the_served_model_answers_one_patient_with_a_survival_curve(refit, tmp_path):
    fitted, model, uri, _, _ = refit
    port = free_port()
    bin_dir = Path(sys.executable).parent   # mlflow and the uvicorn it starts
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    mlflow_cli = bin_dir / "mlflow"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"models:/{REGISTERED}/1", "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the server did not start:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(1)
        cohort = Cohort.open(fitted.cohort.url)
        i = int(np.flatnonzero(cohort.present["rna"].to_numpy() & ~cohort.present["dna"].to_numpy())[0])
        patient = cohort.read_patient(i)
        row = {column("rna", f): float(v) for f, v in zip(cohort.feature_names("rna"), patient["rna"])}
        row.update({column("clinical", f): float(v) for f, v in zip(cohort.feature_names("clinical"), patient["clinical"])})
        del row[column("rna", cohort.feature_names("rna")[0])]           # a feature missing from the request
        columns = list(row)
        answer = post(f"http://127.0.0.1:{port}/invocations",
                      {"dataframe_split": {"columns": columns, "data": [[row[c] for c in columns]]}})
        (prediction,) = answer["predictions"]
        curve = np.array([prediction[f"survival_at_{t:g}"] for t in model.grid])
        assert len(curve) == len(fitted.grid) and np.all(np.diff(curve) <= 1e-7) and 0 <= curve.min() <= curve.max() <= 1
        assert prediction["imputed_modalities"] == "dna" and prediction["missing_features_rna"] >= 1
        local = predict_frame(model, pd.DataFrame([row]))
        assert prediction["risk"] == pytest.approx(float(local["risk"][0]), rel=1e-5)
        assert prediction["risk_group"] in ("low", "middle", "high")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
