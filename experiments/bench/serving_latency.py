"""Latency of ``mlflow models serve`` for the selected model, and its answers to bad requests.

    PYTHONPATH=. python experiments/bench/serving_latency.py --requests 200

(from the repository root: the model is the export tests' fixture, imported from ``tests/export/conftest.py``)

Builds the export tests' tiny impuTMAE model (rna 256 + dna 384 + clinical 3 features; a 120-patient
synthetic cohort, one pretraining epoch, two fine-tuning epochs), registers it in a temporary SQLite
MLflow, serves it with ``mlflow models serve --env-manager local -w 1`` and times ``--requests`` POSTs
of 1 row and of 100 rows (rna and clinical columns; dna left out, imputed) after 5 warm-up requests.
Prints p50/p95 per batch size, the same for the pyfunc's ``predict`` called in this process (no HTTP,
the model loaded with ``mlflow.pyfunc.load_model``), and a Markdown table of the status and message of
each bad request.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd


BAD = [
    ("gene names without the rna/ prefix", {"columns": ["GENE00000", "GENE00001"], "data": [[1.0, 2.0]]}),
    ("no columns, no data", {"columns": [], "data": []}),
    ("a known column, no data", {"columns": ["rna/GENE00001"], "data": []}),
    ("an unknown modality only", {"columns": ["mri/x"], "data": [[1.0]]}),
    ("a row with only null", {"columns": ["rna/GENE00001", "clinical/age_years"], "data": [[None, None]]}),
    ("Infinity (Python's JSON)", {"columns": ["rna/GENE00001"], "data": [[float("inf")]]}),
    ("a string value", {"columns": ["rna/GENE00001"], "data": [["abc"]]}),
    ("one known, one unknown column", {"columns": ["patient_id", "rna/GENE00001", "rna/NOTAGENE"],
                                       "data": [["P1", 2.0, 1.0]]}),
]


def post(url: str, payload: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def tiny_model(root: Path) -> str:
    from mlflow.tracking import MlflowClient

    from impumae.data.synthetic import build_synthetic
    from impumae.data.cohort_view import REFIT, load_cohort_arrays
    from impumae.engine.mae_fold import finetune_config, fit_mae_fold
    from impumae.engine.pretrain_jobs import PretrainJob, run_pretraining
    from impumae.export.mlflow_model import log_selected_model
    from impumae.export.selected_model import SelectedModel
    try:
        from tests.export.conftest import MODEL, PRETRAIN, SUBSET
    except ModuleNotFoundError as err:
        raise SystemExit("run from the repository root with PYTHONPATH=. (the model is the export tests' "
                         "fixture, tests/export/conftest.py)") from err

    url = str(build_synthetic(str(root / "cohort.zarr"), n_patients=120, seed=1, progress=False).url)
    ca = load_cohort_arrays(url, SUBSET)
    run_pretraining([PretrainJob.for_subset(ca, SUBSET, REFIT, MODEL, PRETRAIN, 0)], str(root / "runs"), workers=0,
                    echo=lambda *_: None)
    fitted = fit_mae_fold(ca, SUBSET, REFIT, finetune_config({"epochs": 2, "batch_size": 32, "n_bins": 8}, {}, seed=0),
                      storage_url=str(root / "runs"), model=MODEL, pretrain=PRETRAIN, seed=0)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench", artifact_location=(root / "mlartifacts").as_uri())
    run = client.create_run(experiment).info.run_id
    log_selected_model(client, SelectedModel.from_fit(fitted), run, "bench-serving")
    return uri


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args()
    from impumae.data.store import Cohort

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        uri = tiny_model(root)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/bench-serving/1",
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/invocations"
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                    break
                except OSError:
                    time.sleep(1)
            cohort = Cohort.open(str(root / "cohort.zarr"))
            columns = [f"rna/{f}" for f in cohort.feature_names("rna")] + [f"clinical/{f}" for f in cohort.feature_names("clinical")]
            values = np.nan_to_num(np.concatenate([cohort.load("rna"), cohort.load("clinical")], axis=1)).tolist()
            print("| rows per request | requests | p50 (ms) | p95 (ms) |\n|---|---|---|---|")
            for rows in (1, 100):
                payload = {"dataframe_split": {"columns": columns, "data": values[:rows]}}
                for _ in range(5):
                    assert post(url, payload)[0] == 200
                times = []
                for _ in range(args.requests):
                    start = time.perf_counter()
                    status, _ = post(url, payload)
                    times.append(1000 * (time.perf_counter() - start))
                    assert status == 200
                print(f"| {rows} | {args.requests} | {np.percentile(times, 50):.1f} | {np.percentile(times, 95):.1f} |")
            print("\nin process (pyfunc predict, no HTTP):\n| rows per call | calls | p50 (ms) | p95 (ms) |\n|---|---|---|---|")
            import mlflow  # noqa: PLC0415
            mlflow.set_tracking_uri(uri)
            model = mlflow.pyfunc.load_model("models:/bench-serving/1")
            for rows in (1, 100):
                frame = pd.DataFrame(values[:rows], columns=columns)
                for _ in range(5):
                    model.predict(frame)
                times = []
                for _ in range(args.requests):
                    start = time.perf_counter()
                    model.predict(frame)
                    times.append(1000 * (time.perf_counter() - start))
                print(f"| {rows} | {args.requests} | {np.percentile(times, 50):.1f} | {np.percentile(times, 95):.1f} |")
            print("\n| request | status | answer |\n|---|---|---|")
            for what, split in BAD:
                status, body = post(url, {"dataframe_split": split})
                answer = json.loads(body)
                text = answer.get("message", json.dumps(answer.get("predictions", answer))[:0])
                if status == 200:
                    (row,) = answer["predictions"]
                    text = (f"scored; patient_id {row['patient_id']}, unknown_columns {row['unknown_columns']!r}, "
                            f"missing_fraction_rna {row['missing_fraction_rna']:.3f}, warnings {row['warnings']!r}")
                else:
                    text = text.split("Error: ")[-1]
                print(f"| {what} | {status} | {text.replace('|', '/')[:300]} |")
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
