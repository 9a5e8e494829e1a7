"""``mlflow models serve -m models:/NAME/1`` answers a JSON request for one patient with a survival curve."""
from __future__ import annotations

import json
import os
import shutil
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


def readme_serve_command() -> str:
    """The README's serve line, exactly as written."""
    (line,) = [l for l in (ROOT / "README.md").read_text().splitlines() if " mlflow models serve " in l and not l.startswith("#")]
    return line


def post_status(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_the_readme_serve_command_answers_one_patient_and_refuses_bad_requests(refit, tmp_path):
    """The README's command, run in a directory laid out like a clone (``.venv``, ``mlflow.db``), with only
    the model name and port changed; PATH without the venv, as in a fresh shell."""
    fitted, model, uri, _, root = refit
    port = free_port()
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    shutil.copy2(uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    command = readme_serve_command().replace("gbm-survival/1", f"{REGISTERED}/1").replace("-p 5001", f"-p {port} -h 127.0.0.1")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep) if str(Path(sys.executable).parent) not in d)
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(["bash", "-c", command], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                              start_new_session=True)
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
        url = f"http://127.0.0.1:{port}/invocations"
        cohort = Cohort.open(fitted.cohort.url)
        i = int(np.flatnonzero(cohort.present["rna"].to_numpy() & ~cohort.present["dna"].to_numpy())[0])
        patient = cohort.read_patient(i)
        row = {column("rna", f): float(v) for f, v in zip(cohort.feature_names("rna"), patient["rna"])}
        row.update({column("clinical", f): float(v) for f, v in zip(cohort.feature_names("clinical"), patient["clinical"])})
        del row[column("rna", cohort.feature_names("rna")[0])]           # a feature missing from the request
        columns = list(row)
        status, answer = post_status(url, {"dataframe_split": {"columns": ["patient_id", *columns, "rna/NOTAGENE"],
                                                                "data": [["P-1", *[row[c] for c in columns], 1.0]]}})
        assert status == 200, answer
        (prediction,) = answer["predictions"]
        curve = np.array([prediction[f"survival_at_{t:g}"] for t in model.grid])
        assert len(curve) == len(fitted.grid) and np.all(np.diff(curve) <= 1e-7) and 0 <= curve.min() <= curve.max() <= 1
        assert prediction["patient_id"] == "P-1" and prediction["unknown_columns"] == "rna/NOTAGENE"
        assert prediction["imputed_modalities"] == "dna" and prediction["missing_features_rna"] >= 1
        assert prediction["missing_fraction_dna"] is None
        local = predict_frame(model, pd.DataFrame([row]))
        assert prediction["risk"] == pytest.approx(float(local["risk"][0]), rel=1e-5)
        assert prediction["risk_group"] in ("low", "middle", "high")
        for payload, message in BAD_REQUESTS:
            status, answer = post_status(url, payload)
            assert status == 400 and message in answer["message"], (payload, answer)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


BAD_REQUESTS = [   # (request, part of the 400's message); docs/benchmarks.md records the answers
    ({"dataframe_split": {"columns": ["GENE00000"], "data": [[1.0]]}}, "no column of the request is a feature"),
    ({"dataframe_split": {"columns": [], "data": []}}, "the request has no rows"),
    ({"dataframe_split": {"columns": ["rna/GENE00001"], "data": []}}, "the request has no rows"),
    ({"dataframe_split": {"columns": ["rna/GENE00001"], "data": [[None]]}}, "have no value in any feature column"),
    ({"dataframe_split": {"columns": ["rna/GENE00001"], "data": [["abc"]]}}, "'abc' is not a number"),
]
