"""A failing model fails only itself: its trial ends "failed" with the family, fold and cause in one
line (console, trial table, MLflow), and the search, the refit and nested CV go on with the others."""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from impumae.data.synthetic import build_synthetic
from impumae.families.sksurv import SksurvFoldFit
from impumae.engine.space import SearchSpace
from tests import fault_injection

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPACE = """
finetune: {epochs: 2, batch_size: 32}
search:
  family: {type: categorical, choices: [rsf, linear]}
"""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> str:
    return str(build_synthetic(str(tmp_path_factory.mktemp("c") / "tiny.zarr"), n_patients=160, seed=5,
                               progress=False).url)


def options(cohort: str, tmp: Path, experiment: str, trials: int):
    from impumae.engine.search import SearchOptions

    (tmp / "space.yaml").write_text(SPACE)
    return SearchOptions(cohort=cohort, subsets=["rna"], selection="best", space=SearchSpace.load(str(tmp / "space.yaml")),
                         trials=trials, folds=2, storage=str(tmp / "runs"), mlflow_uri=f"sqlite:///{tmp}/mlflow.db",
                         experiment=experiment, n_boot=20)


def test_a_family_whose_model_fails_in_the_trials_fails_only_its_trials(cohort, tmp_path):
    import ray

    from impumae.engine.search import run_search

    lines = []
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env=fault_injection.poison_runtime_env("linear"))
    try:
        summary = run_search(options(cohort, tmp_path, "fail-trials", trials=3), echo=lines.append,
                             route_ray_log=False)
    finally:
        ray.shutdown()
    failed = [r for r in summary["trials"] if r["failed"]]
    assert failed and all(r["family"] == "linear" for r in failed)
    assert all(r["failed"].startswith("linear failed in fold 0: ValueError: surv has NaN") for r in failed)
    assert summary["best"]["family"] == "rsf" and summary["holdout"]["conditions"]["anchor"]["n"] > 0
    said = [line for line in lines if line.startswith("trial ") and "failed in fold 0" in line and "\n" not in line]
    assert len(said) == len(failed) and not any("Traceback" in line for line in said)   # one line each, when it happened
    table = next(line for line in lines if line.startswith("trial ") and "\n" in line)   # the trial table
    assert sum("ERROR linear failed in fold 0" in row for row in table.splitlines()) == len(failed)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("fail-trials")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"]
    bad = [r for r in runs if r.data.tags.get("family") == "linear"]
    assert bad and all(r.info.status == "FAILED" and r.data.tags["status"] == "failed" for r in bad)
    assert all(r.data.tags["failure"].startswith("linear failed in fold 0") for r in bad)


def test_a_failing_refit_moves_to_the_next_candidate_and_nested_cv_goes_on(cohort, tmp_path):
    """The refit's predictions fail for the linear family (poisoned in the driver, where the refit is
    scored): an outer fold that selected it refits the next candidate; one that selected RSF records
    the linear family's failed scoring; the nested run finishes with every failure named."""
    import ray

    from impumae.engine.nested import run_nested

    lines = []
    original = fault_injection.poison("linear")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        summary = run_nested(options(cohort, tmp_path, "fail-nested", trials=2), outer_folds=2, concurrent_outer=1,
                             echo=lines.append)
    finally:
        ray.shutdown()
        SksurvFoldFit.survival = original
    assert all(row["config"]["family"] == "rsf" for row in summary["per_outer"])
    assert set(summary["failures"]) == {"r0-outer0", "r0-outer1"}
    for outer, failed in summary["failures"].items():
        assert any(cause.startswith("linear failed in the refit: ValueError: surv has NaN") for cause in failed.values())
    assert set(summary["by_family"]) == {"rsf"}
    text = (Path(summary["nested_dir"]) / "nested_results.md").read_text()
    assert "Failed (each failure cost only its own configuration or family)" in text
    assert any("linear failed in the refit" in line and line.startswith("[r0-outer") for line in lines)
