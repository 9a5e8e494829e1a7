"""console.ray_to_file without starting Ray: where Ray's log records and worker output go."""
import logging

from impumae.engine import console


def _worker_batch(is_err: bool, line: str) -> dict:
    return {"ip": "127.0.0.1", "pid": 4242, "job": "01000000", "is_err": is_err, "lines": [line],
            "actor_name": "TrainController", "task_name": ""}


def test_ray_records_below_error_go_to_the_file_errors_also_to_the_console(tmp_path):
    """Ray's console handler is raised to ERROR for the block (its stream may be a stream captured
    at import, so the levels are checked, not a captured stderr) and restored after it."""
    import ray  # noqa: F401 - installs Ray's console handler
    log = tmp_path / "search" / console.LOG_NAME
    tune_logger = logging.getLogger("ray.tune.execution.tune_controller")
    handlers = console._stream_handlers(logging.getLogger("ray"))
    before = [h.level for h in handlers]
    assert handlers
    with console.ray_to_file(str(log)):
        assert all(h.level >= logging.ERROR for h in handlers)
        tune_logger.warning("Experiment state snapshotting has been triggered")
        tune_logger.error("Trial task failed for trial cv_trial_1")
    text = log.read_text()
    assert "snapshotting" in text and "Trial task failed" in text
    assert [h.level for h in handlers] == before


def test_worker_stderr_goes_to_the_file_and_stdout_to_the_console(tmp_path, capsys, monkeypatch):
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    monkeypatch.setattr(type(ray_worker.global_worker), "connected", property(lambda self: True))
    printed = []
    dispatcher.add_handler("ray_print_logs", printed.append)  # what ray.init(log_to_driver=True) installs
    try:
        log = tmp_path / console.LOG_NAME
        with console.ray_to_file(str(log)) as handle:
            handle.capture_workers()
            dispatcher.emit(_worker_batch(True, "Traceback (most recent call last): GetTimeoutError"))
            dispatcher.emit(_worker_batch(False, "  pretrain rna fold 0: epoch   1/2  loss 3.1"))
        captured = capsys.readouterr()
        assert "pretrain rna fold 0: epoch" in captured.out
        assert "Traceback" not in captured.out + captured.err
        assert "GetTimeoutError" in log.read_text() and "TrainController" in log.read_text()
        dispatcher.emit(_worker_batch(True, "after"))  # Ray's own printer is back
        assert printed and printed[-1]["lines"] == ["after"]
    finally:
        dispatcher.remove_handler("ray_print_logs")


def test_log_path_is_local_for_remote_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert console.log_path_for("/runs/s1") == f"/runs/s1/{console.LOG_NAME}"
    assert console.log_path_for("file:///runs/s1") == f"/runs/s1/{console.LOG_NAME}"
    assert console.log_path_for("s3://bucket/runs/s1") == str(tmp_path / "ray-logs" / "s1" / console.LOG_NAME)
