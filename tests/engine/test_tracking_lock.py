"""Two searches that start at the same moment on a fresh SQLite MLflow store: both get a Tracker.

Without a lock the first clients of a fresh store both run MLflow's alembic migrations and one
fails (``CommandError`` or ``duplicate column name: step``); ``Tracker`` serialises store creation
with a file lock next to the .db file."""
import multiprocessing as mp
import traceback

import pytest

pytestmark = pytest.mark.slow


def _make_tracker(uri: str, experiment: str, barrier, results) -> None:
    try:
        from impumae.engine.tracking import Tracker  # heavy import before the barrier: start together
        barrier.wait(timeout=120)
        tracker = Tracker(uri, experiment)
        results.put(("ok", tracker.experiment_id))
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put(("error", traceback.format_exc()))


@pytest.mark.parametrize("same_experiment", [True, False], ids=["same-experiment", "two-experiments"])
def test_two_processes_create_a_tracker_on_one_fresh_sqlite_store(tmp_path, same_experiment):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    names = ["race", "race"] if same_experiment else ["race-a", "race-b"]
    procs = [ctx.Process(target=_make_tracker, args=(uri, name, barrier, results)) for name in names]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [detail for status, detail in outcomes if status != "ok"]
    assert not errors, errors[0]
    ids = {detail for _, detail in outcomes}
    # both processes ended up with the one experiment (or with two different ones)
    assert len(ids) == (1 if same_experiment else 2)
    assert (tmp_path / "mlflow.db.lock").exists()
