"""Tracker: explicit MLflow client on its own URI; the process-wide tracking URI is not touched."""
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from impumae.engine.tracking import Tracker


def test_tracker_logs_nested_runs_without_changing_the_global_uri(tmp_path):
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "tracking-test")
    parent = tracker.start_run("trial", {"kind": "trial"}, params={"lr": 1e-3, "model": {"width": 32}})
    child = tracker.start_run("fold0", {"kind": "fold", "fold": 0}, parent=parent)
    tracker.log_history(child, [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5, "val_ibs": float("nan")}])
    tracker.log_metrics(child, {"val_cs_score": 0.6, "skipped": None})
    tracker.end_run(child)
    tracker.end_run(parent)
    assert mlflow.get_tracking_uri() == before

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracking-test")
    runs = {r.data.tags["kind"]: r for r in client.search_runs([exp.experiment_id])}
    assert runs["fold"].data.tags["mlflow.parentRunId"] == parent
    assert runs["trial"].data.params == {"lr": "0.001", "model.width": "32"}
    assert [m.value for m in client.get_metric_history(child, "train_loss")] == [2.0, 1.5]
    assert runs["fold"].data.metrics["val_cs_score"] == 0.6 and "val_ibs" not in runs["fold"].data.metrics
    assert Tracker(uri, "tracking-test").find_run(kind="fold") == child  # an existing experiment is reused


def test_search_logger_logs_each_folds_curve_and_the_trials_fixed_epoch(tmp_path):
    """The Tune callback, fed what cv_trial reports: a child run per fold with its whole validation
    curve (step = epoch), and on the parent the fixed epoch, the metrics at it, the peek beside them
    and the mean curve over folds."""
    from types import SimpleNamespace

    from impumae.engine.tracking import MLflowSearchLogger
    from impumae.engine.trial import summarise
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "logger-test")
    logger = MLflowSearchLogger(tracker, "s1", {"search": "s1"})
    trial = SimpleNamespace(trial_id="t1", config={"lr": 1e-3, "subset": "rna"}, last_result=None)
    folds = []
    for fold, cs in enumerate(([0.5, 0.7, 0.6], [0.6, 0.65, 0.7])):  # own best epochs 2 and 3; mean curve: 2
        history = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_cs_score": v, "val_c_index": v - 0.1,
                    "val_c_index_harrell": v, "val_ibs": 0.2} for e, v in enumerate(cs)]
        folds.append({"fold": fold, "n_train": 10, "n_val": 5, "fold_history": history})
        trial.last_result = {**folds[-1], **summarise(folds, n_folds=2)}
        logger.on_trial_result(0, [], trial, trial.last_result)
    logger.on_trial_complete(0, [], trial)

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([tracker.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["kind"] == "trial"]
    children = [r for r in runs if r.data.tags["kind"] == "fold"]
    assert len(children) == 2 and parent.data.tags["status"] == "complete"
    for child in children:
        curve = client.get_metric_history(child.info.run_id, "val_cs_score")
        assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [1, 2, 3]
    metrics = parent.data.metrics
    assert metrics["fixed_epoch"] == 2
    # each fold read at the epoch the other fold chose: fold 0 at 3 (0.6), fold 1 at 2 (0.65)
    assert metrics["mean_val_cs_score"] == pytest.approx(0.625)
    assert metrics["mean_val_c_index"] == pytest.approx(0.525)
    assert metrics["mean_val_cs_score_shared_epoch"] == pytest.approx(0.675)   # both at the shared epoch 2
    assert metrics["mean_val_c_index_peek"] == pytest.approx(0.6)  # each fold at its own best epoch
    mean_curve = sorted(client.get_metric_history(parent.info.run_id, "fold_mean_val_cs_score"), key=lambda m: m.step)
    assert [m.value for m in mean_curve] == pytest.approx([0.55, 0.675, 0.65])
