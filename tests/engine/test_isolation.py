"""Concurrent searches in one Ray driver stay apart: every trial runs the context (cohort, folds,
outer test split) of the search that launched it, and the audit proves it trial by trial.

Before the fix, every search registered its trainable under the one name ``cv_trial`` in Tune's
registry, which the Tuners of one driver share: a trial launched by one outer fold of nested CV
could run another outer fold's context, train on its inner folds (which hold the first fold's outer
test patients) and write its audit into the other fold's folder, where nobody looked for it.
"""
import threading
from pathlib import Path

import pytest

from impumae.data.synthetic import build_synthetic
from impumae.engine import audit
from impumae.data.cohort_view import load_cohort_arrays
from impumae.engine.space import SearchSpace

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# two fast scikit-survival families: the race is in Tune's trainable registry, not in the model
SPACE = """
finetune: {epochs: 2, batch_size: 32}
search:
  family: {type: categorical, choices: [rsf, linear]}
  rsf_min_samples_leaf: {type: int, low: 3, high: 10, family: rsf}
"""


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("cohorts")
    small = build_synthetic(str(root / "small.zarr"), n_patients=160, seed=5, progress=False).url
    large = build_synthetic(str(root / "large.zarr"), n_patients=240, seed=6, progress=False).url
    return str(small), str(large)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=3, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def options(cohort: str, tmp: Path, experiment: str, trials: int):
    from impumae.engine.search import SearchOptions

    (tmp / "space.yaml").write_text(SPACE)
    return SearchOptions(cohort=cohort, subsets=["rna"], space=SearchSpace.load(str(tmp / "space.yaml")),
                         trials=trials, folds=2, storage=str(tmp / "runs"), mlflow_uri=f"sqlite:///{tmp}/mlflow.db",
                         experiment=experiment, n_boot=20, grace_folds=2)


def trial_records(search_dir: str) -> dict[str, dict]:
    return {stage: roles for stage, roles in audit.load_records(search_dir).items() if stage.startswith("finetune-")}


def test_concurrent_outer_folds_run_only_their_own_trials(cohorts, ray_session, tmp_path_factory):
    """Nested CV with three outer folds at once, twice (the defect was a race): in every outer fold
    every trial fold was launched by it, ran with its context, and saw none of its outer test
    patients; each outer fold holds the audit of all of its trials' folds."""
    from impumae.engine.nested import run_nested

    cohort = cohorts[0]
    trials, inner_folds = 3, 2
    for attempt in range(2):
        opts = options(cohort, tmp_path_factory.mktemp(f"nested{attempt}"), f"isolation-{attempt}", trials)
        summary = run_nested(opts, outer_folds=3, concurrent_outer=3, echo=lambda *a, **k: None)
        for k in range(3):
            search_dir = str(Path(summary["nested_dir"]) / f"r0-outer{k}")
            split = {"outer_folds": 3, "outer_fold": k, "repeat": 0, "seed": 0, "stratify": "rna"}
            view = load_cohort_arrays(cohort, ("rna",), split)
            test = set(view.ids[view.holdout])
            records = trial_records(search_dir)
            assert len(records) == trials * inner_folds, f"attempt {attempt}, outer fold {k}: {sorted(records)}"
            for stage, roles in records.items():
                meta = roles[audit.META]
                assert meta["launched_by"] == search_dir and meta["context"] == search_dir, (attempt, k, stage, meta)
                seen = set(roles["train"]) | set(roles["validate"])
                assert not seen & test, f"attempt {attempt}, outer fold {k}: {stage} saw {len(seen & test)} test patients"
            assert audit.check_launches(search_dir) == []


def test_two_searches_of_one_driver_on_different_cohorts_each_see_their_own(cohorts, ray_session, tmp_path_factory):
    from impumae.engine.search import run_search

    results, errors = {}, []

    def search(name: str, cohort: str):
        try:
            opts = options(cohort, tmp_path_factory.mktemp(name), name, trials=3)
            results[name] = run_search(opts, echo=lambda *a, **k: None, route_ray_log=False)
        except Exception as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=search, args=(name, cohort)) for name, cohort in zip(("small", "large"), cohorts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for name, cohort in zip(("small", "large"), cohorts):
        ids = set(load_cohort_arrays(cohort, ("rna",)).ids)
        search_dir = results[name]["search_dir"]
        records = trial_records(search_dir)
        assert len(records) == 3 * 2
        for stage, roles in records.items():
            assert roles[audit.META]["context"] == search_dir
            assert set(roles["train"]) | set(roles["validate"]) <= ids, f"{name}: {stage} saw the other cohort"


def test_a_trial_started_with_another_search_s_context_refuses_to_run(tmp_path):
    from impumae.engine.trial import LAUNCHED_BY, SearchContext, check_launcher

    ctx = SearchContext(cohort_url="c", n_folds=2, storage=str(tmp_path), search_dir=str(tmp_path / "outer1"))
    check_launcher({LAUNCHED_BY: str(tmp_path / "outer1")}, ctx)
    with pytest.raises(RuntimeError, match="outer0 was started with the context of the search .*outer1"):
        check_launcher({LAUNCHED_BY: str(tmp_path / "outer0")}, ctx)


def test_the_audit_names_a_trial_that_ran_another_search_s_context(tmp_path):
    from impumae.engine.nested import check_outer_isolation

    mine, other = str(tmp_path / "r0-outer0"), str(tmp_path / "r0-outer1")
    audit.record(mine, "finetune-t1-fold0", meta={"launched_by": mine, "context": mine}, train=["a"], validate=["b"])
    audit.record(mine, "holdout", anchor=["c"])
    check_outer_isolation(mine, ["c"], "r0-outer0")
    audit.record(mine, "finetune-t2-fold0", meta={"launched_by": mine, "context": other}, train=["a"], validate=["d"])
    with pytest.raises(RuntimeError, match=r"r0-outer0: trials it launched ran with another outer fold's context: "
                                           r"\['finetune-t2-fold0"):
        check_outer_isolation(mine, ["c"], "r0-outer0")
    assert audit.load(mine)["finetune-t2-fold0"] == {"train": ["a"], "validate": ["d"]}   # no provenance in ids
