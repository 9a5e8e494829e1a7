"""Tracker: explicit MLflow client on its own URI; the process-wide tracking URI is not touched."""
import mlflow
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
