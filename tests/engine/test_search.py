"""The engine end to end at tiny sizes: one search in this process (local Ray, started once),
a search interrupted and resumed in subprocesses, and the protocol checks on what each stage saw."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from impumae.data.synthetic import build_synthetic
from impumae.engine import audit
from impumae.data.cohort_view import load_cohort_arrays
from impumae.engine.space import SearchSpace
from tests import fault_injection

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cohort") / "tiny.zarr"
    return str(build_synthetic(str(path), n_patients=240, seed=3, progress=False).url)


def tiny_space(tmp_path) -> str:
    path = tmp_path / "space.yaml"
    path.write_text("""
model: {width: 32, heads: 2, mlp_ratio: 2.0, decoder_width: 32, decoder_depth: 1, decoder_heads: 2, decoder_mlp: 64}
pretrain: {epochs: 2, batch_size: 32, lr: 1.0e-3}
finetune: {epochs: 2, batch_size: 32}
search:
  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
  imputation: {type: categorical, choices: [decoder, mask_token, drop]}
""")
    return str(path)


@pytest.fixture(scope="module")
def search(cohort, tmp_path_factory):
    """One 2-trial x 2-fold search in which every trial raises once (at its second fold)."""
    import ray
    from impumae.engine.search import SearchOptions, run_search

    tmp = tmp_path_factory.mktemp("search")
    opts = SearchOptions(cohort=cohort, subsets=["rna,dna,mri"], space=SearchSpace.load(tiny_space(tmp)),
                         trials=2, folds=2, storage=str(tmp / "runs"), mlflow_uri=f"sqlite:///{tmp}/mlflow.db",
                         experiment="test-search", n_boot=50)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env=fault_injection.runtime_env(tmp / "faults"))
    try:
        summary = run_search(opts, echo=lambda *a: None)
    finally:
        ray.shutdown()
    return summary, opts, tmp


def runs_by_kind(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    out = {}
    for r in runs:
        out.setdefault(r.data.tags.get("kind"), []).append(r)
    return client, out


def test_search_logs_parent_and_child_runs(search):
    summary, opts, _ = search
    client, runs = runs_by_kind(opts.mlflow_uri, opts.experiment)
    assert len(runs["trial"]) == 2
    assert len(runs["fold"]) == 4
    parents = {r.info.run_id for r in runs["trial"]}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs["fold"]} == parents
    for r in runs["fold"]:
        assert {"val_c_index", "val_ibs", "val_cs_score", "n_train", "n_val"} <= set(r.data.metrics)
        for name in ("train_loss", "val_cs_score"):  # the whole curve: one point per fine-tuning epoch
            assert [m.step for m in client.get_metric_history(r.info.run_id, name)] == [1, 2]
    for r in runs["trial"]:
        assert {"fixed_epoch", "mean_val_cs_score", "std_val_cs_score", "mean_val_c_index",
                "mean_val_c_index_peek"} <= set(r.data.metrics)
        assert r.data.metrics["fixed_epoch"] in (1, 2)
        assert r.data.metrics["mean_val_cs_score_peek"] >= r.data.metrics["mean_val_cs_score"] - 1e-9
        assert len(client.get_metric_history(r.info.run_id, "fold_mean_val_cs_score")) == 2
        assert r.data.params["imputation"] in ("decoder", "mask_token", "drop")
    assert len(runs["pretrain"]) == 3  # fold 0, fold 1, refit
    (holdout,) = runs["holdout"]
    artifacts = {a.path for a in client.list_artifacts(holdout.info.run_id)}
    assert {"km_holdout_by_risk_tertile.png", "refit_training_curve.png", "holdout_results.json"} <= artifacts
    assert 0 <= holdout.data.metrics["holdout_anchor_cs_score"] <= 1


def test_failed_trials_were_retried_and_completed(search):
    summary, _, tmp = search
    assert len(list((tmp / "faults").glob("*.failed"))) == 2  # both trials raised once
    assert all(t["folds_done"] == 2 and t["error"] is None for t in summary["trials"])


def test_best_configuration_is_chosen_on_validation_folds(search):
    summary, _, _ = search
    best = max(summary["trials"], key=lambda t: t["mean_val_cs_score"])
    assert summary["best"]["config"] == best["config"]
    assert summary["holdout"]["refit_epochs"] == best["fixed_epoch"] in (1, 2)  # the refit trains the fixed epoch
    for condition in ("anchor", "all_present"):
        result = summary["holdout"]["conditions"][condition]
        if "note" not in result:
            est, low, high = (result["cs_score"][k] for k in ("estimate", "low", "high"))
            assert low <= est <= high


def test_the_selected_model_is_registered_and_predicts_the_holdout_as_the_refit_did(search, cohort):
    import numpy as np

    from impumae.data.store import Cohort
    from impumae.engine.holdout import PREDICTIONS_FILE
    import pandas as pd

    from impumae.export.align import AlignmentError, align_cohort
    from impumae.export.mlflow_model import load_selected_model, predict_frame

    summary, opts, _ = search
    refs = summary["holdout"]["model"]
    assert refs["model_uri"] == f"models:/{opts.experiment}/1"  # --register defaults to the experiment name
    client, runs = runs_by_kind(opts.mlflow_uri, opts.experiment)
    assert refs["source_run_id"] == runs["holdout"][0].info.run_id
    model = load_selected_model(refs["model_uri"], opts.mlflow_uri)
    assert model.subset == ("rna", "dna", "mri") and model.family == "impumae"
    saved = np.load(Path(summary["search_dir"]) / PREDICTIONS_FILE)
    aligned = align_cohort(model, Cohort.open(cohort))
    rows = np.flatnonzero(np.isin(aligned.view.ids, saved["patient_id"]))
    np.testing.assert_array_equal(aligned.view.ids[rows], saved["patient_id"])
    np.testing.assert_allclose(model.survival(aligned.view, rows), saved["survival"], rtol=1e-5, atol=1e-6)
    with pytest.raises(AlignmentError, match="column 'mri/voxel0': the model's 'mri' is a volume modality of shape"):
        predict_frame(model, pd.DataFrame({"mri/voxel0": [0.1]}))  # a volume cannot be sent as table columns


def test_holdout_patients_reach_no_stage_but_the_final_score(search, cohort):
    summary, _, _ = search
    ca = load_cohort_arrays(cohort, ("rna", "dna", "mri"))
    holdout = set(ca.ids[ca.holdout_indices()])
    stages = audit.load(summary["search_dir"])
    assert {"pretrain-rna_dna_mri-fold0", "pretrain-rna_dna_mri-fold1", "pretrain-rna_dna_mri-refit",
            "refit-finetune", "holdout"} <= set(stages)
    assert any(s.startswith("finetune-") for s in stages)
    for stage, roles in stages.items():
        for role, ids in roles.items():
            if stage == "holdout":
                assert set(ids) <= holdout
            else:
                assert not holdout & set(ids), f"{stage}:{role} saw holdout patients"
    # pretraining of fold k saw only fold k's training patients; validation only fold k's
    for k in (0, 1):
        fold_val = set(ca.ids[ca.validation_indices(k)])
        assert not fold_val & set(stages[f"pretrain-rna_dna_mri-fold{k}"]["train"])
        for stage, roles in stages.items():
            if stage.startswith("finetune-") and stage.endswith(f"fold{k}"):
                assert set(roles["validate"]) <= fold_val
                assert not fold_val & set(roles["train"])
    assert audit.check_holdout_isolation(summary["search_dir"], holdout) == []


def _trial_dirs(search_dir: Path) -> dict[str, Path]:
    """{trial id: its Tune directory}: named ``<trainable>_<trial id>_<index>_...``, the trainable
    named after the search (engine.search.trainable_name)."""
    from impumae.engine.search import trainable_name

    prefix = trainable_name(search_dir.name) + "_"
    return {d.name[len(prefix):].split("_")[0]: d for d in search_dir.glob(prefix + "*") if d.is_dir()}


def _trial_result_lines(search_dir: Path) -> dict[str, int]:
    return {t: len((d / "result.json").read_text().splitlines())
            for t, d in _trial_dirs(search_dir).items() if (d / "result.json").exists()}


def test_interrupted_search_resumes_without_repeating_finished_trials(cohort, tmp_path):
    storage, db = tmp_path / "runs", tmp_path / "mlflow.db"
    command = [sys.executable, str(ROOT / "experiments" / "cv_search.py"), "--cohort", cohort,
               "--subset", "rna,dna", "--space", tiny_space(tmp_path), "--trials", "4", "--folds", "2",
               "--storage", str(storage), "--mlflow-uri", f"sqlite:///{db}", "--experiment", "resume-test",
               "--n-boot", "20", "--cpus-per-trial", "2"]  # one trial at a time: a clean cut between trials
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 300
    finished_before = {}
    while time.time() < deadline and first.poll() is None:
        dirs = list(storage.glob("resume-test-*"))
        if dirs:
            finished_before = {t: n for t, n in _trial_result_lines(dirs[0]).items() if n == 2}
            if finished_before:
                break
        time.sleep(0.5)
    assert finished_before, "no trial finished within the time limit"
    os.killpg(first.pid, signal.SIGINT)
    try:
        first.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    search_dir = next(storage.glob("resume-test-*"))
    mtimes = {t: (_trial_dirs(search_dir)[t] / "result.json").stat().st_mtime for t in finished_before}
    second = subprocess.run(command + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout
    summary = json.loads((search_dir / "summary.json").read_text())
    assert len(summary["trials"]) == 4
    after = _trial_result_lines(search_dir)
    for trial, lines in finished_before.items():
        assert after[trial] == 2  # not run again
        assert (_trial_dirs(search_dir)[trial] / "result.json").stat().st_mtime == mtimes[trial]
    client, runs = runs_by_kind(f"sqlite:///{db}", "resume-test")
    folds_per_parent = {}
    for r in runs["fold"]:
        folds_per_parent.setdefault(r.data.tags["mlflow.parentRunId"], []).append(r.data.tags["fold"])
    assert all(sorted(v) == sorted(set(v)) for v in folds_per_parent.values())  # no fold logged twice


def test_ray_chatter_is_filtered_in_workers_but_warnings_stay():
    """The worker setup hook drops Train's per-report INFO line and the cleaner's state-API warning
    (both private loggers, looked up by module); the loggers still pass what is above the level."""
    import importlib
    import logging

    from impumae.engine.console import RAY_CHATTER, quiet_ray_chatter
    loggers = {name: importlib.import_module(name).logger for name in RAY_CHATTER}
    before = {name: list(logger.filters) for name, logger in loggers.items()}
    try:
        quiet_ray_chatter()
        for name, level in RAY_CHATTER.items():
            logger = loggers[name]
            below = logger.makeRecord(logger.name, level - 10, __file__, 1, "chatter", (), None)
            at = logger.makeRecord(logger.name, level, __file__, 1, "kept", (), None)
            assert not logger.filter(below) and logger.filter(at), name
        assert RAY_CHATTER["ray.train.v2._internal.execution.context"] == logging.WARNING
    finally:
        for name, logger in loggers.items():
            logger.filters[:] = before[name]


def test_fractional_gpu_trials_share_one_gpu(cohort, tmp_path):
    """--gpus-per-trial 0.25 packs four trials onto one GPU. Ray is told the machine has one GPU (a
    logical resource: there is no CUDA here, so the trials compute on the CPU); what is checked is
    Tune's placement, which each trial reports: a quarter of the GPU, and the same GPU for all four,
    so Ray's resource accounting lets all four run at once."""
    import ray
    from impumae.engine.search import SearchOptions, run_search

    opts = SearchOptions(cohort=cohort, subsets=["rna,dna"], space=SearchSpace.load(tiny_space(tmp_path)),
                         trials=4, folds=2, gpus_per_trial=0.25, cpus_per_trial=0.5, workers=0,
                         storage=str(tmp_path / "runs"), mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db",
                         experiment="test-fractional", n_boot=20)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False)
    try:
        summary = run_search(opts, echo=lambda *a: None)
    finally:
        ray.shutdown()
    placements = []
    for trial_dir in _trial_dirs(Path(summary["search_dir"])).values():
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
        placements += [(r["resources"], r["gpu_ids"], r["device"]) for r in rows]
    assert len({p[0]["GPU"] for p in placements}) == 1 and placements[0][0]["GPU"] == 0.25
    assert {p[0]["CPU"] for p in placements} == {0.5}
    assert {tuple(p[1]) for p in placements} == {("0",)}  # all on GPU 0
    assert {p[2] for p in placements} == {"cpu"}           # no CUDA on this machine
    assert all(t["folds_done"] == 2 for t in summary["trials"]) and len(summary["trials"]) == 4
