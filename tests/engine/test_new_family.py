"""A new model family, written outside the package and declared as a plugin, runs through the whole
protocol: a Ray search (its trials in Tune's workers, fresh interpreters that know the family only
through ``IMPUMAE_PLUGINS``), the holdout, nested CV and the export (logged, loaded, predicting, in
this process and in a fresh one).

The family is ``kmgroup`` (``tests/engine/family_plugin/impumae_kmgroup.py``: Kaplan-Meier curves
by ridge-score group), a subclass of ``impumae.families.Family`` that no module of the package
names: the engine, the report and the export ask it.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from impumae import families, plugins
from impumae.data.synthetic import build_synthetic
from impumae.engine.space import SearchSpace

PLUGIN_DIR = Path(__file__).parent / "family_plugin"
PLUGIN = "impumae_kmgroup"
SUBSET = "rna,clinical"

SPACE = """
finetune: {epochs: 2, batch_size: 32, n_bins: 12}
search:
  family: {type: categorical, choices: [kmgroup]}
  kmgroup_alpha: {type: loguniform, low: 0.1, high: 10.0, family: kmgroup}
  kmgroup_groups: {type: int, low: 2, high: 3, family: kmgroup}
"""


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    """The plugin declared as a user declares one: its folder on PYTHONPATH (this process's path and
    every child's), its module named in IMPUMAE_PLUGINS. Nothing imports it here."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", plugins.ENVIRONMENT_VARIABLE)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_DIR), saved["PYTHONPATH"]) if p)
    os.environ[plugins.ENVIRONMENT_VARIABLE] = PLUGIN
    sys.path.insert(0, str(PLUGIN_DIR))
    importlib.invalidate_caches()
    try:
        yield families.get("kmgroup")     # found through the plugin, not imported by the test
    finally:
        sys.path.remove(str(PLUGIN_DIR))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> str:
    return str(build_synthetic(str(tmp_path_factory.mktemp("kmgroup") / "tiny.zarr"), n_patients=200, seed=4,
                               progress=False).url)


def test_the_registry_finds_the_plugin_family_and_the_space_asks_it(declared, tmp_path):
    assert PLUGIN in sys.modules and declared.name in families.searchable_names()
    assert families.family_of({"family": "kmgroup", "kmgroup_alpha": 2.0, "lr": 1.0}).settings(
        {"family": "kmgroup", "kmgroup_alpha": 2.0, "lr": 1.0}) == {"alpha": 2.0}
    (tmp_path / "space.yaml").write_text(SPACE)
    assert SearchSpace.load(tmp_path / "space.yaml").families() == ["kmgroup"]
    (tmp_path / "bad.yaml").write_text(SPACE.replace("kmgroup_groups", "kmgroup_depth"))
    with pytest.raises(ValueError, match="a kmgroup parameter is kmgroup_<setting>"):
        SearchSpace.load(tmp_path / "bad.yaml")


@pytest.fixture(scope="module")
def runs(declared, cohort, tmp_path_factory):
    """One Ray session (started by the engine: its workers get IMPUMAE_PLUGINS): a search with its
    holdout and export, then a 2-outer x 2-inner nested CV of the new family."""
    import ray

    from impumae.engine.nested import run_nested
    from impumae.engine.search import SearchOptions, run_search

    tmp = tmp_path_factory.mktemp("kmgroup-runs")
    (tmp / "space.yaml").write_text(SPACE)

    def options(experiment, trials):
        return SearchOptions(cohort=cohort, subsets=[SUBSET], space=SearchSpace.load(tmp / "space.yaml"),
                             trials=trials, folds=2, storage=str(tmp / "runs"), mlflow_uri=f"sqlite:///{tmp}/mlflow.db",
                             experiment=experiment, n_boot=20, seed=3)
    if ray.is_initialized():   # a Ray another test left up has workers without this plugin
        ray.shutdown()
    try:
        search = run_search(options("kmgroup-search", 2), echo=lambda *a: None)
        nested = run_nested(options("kmgroup-nested", 1), outer_folds=2, concurrent_outer=1, echo=lambda *a, **k: None)
    finally:
        ray.shutdown()
    return search, nested, tmp


@pytest.mark.ray
def test_a_search_in_ray_workers_fits_scores_and_selects_the_new_family(runs, cohort):
    search, _, _ = runs
    assert len(search["trials"]) == 2
    for trial in search["trials"]:   # fitted in Tune's workers, which imported the plugin themselves
        assert trial["family"] == "kmgroup" and trial["folds_done"] == 2 and not trial["failed"]
        assert 0 < trial["mean_val_cs_score"] < 1 and trial["fixed_epoch"] == 1
        assert set(trial["config"]) == {"family", "subset", "kmgroup_alpha", "kmgroup_groups"}
    assert search["best"]["family"] == "kmgroup" and search["holdout"]["family"] == "kmgroup"
    anchor = search["holdout"]["conditions"]["anchor"]
    assert anchor["n"] > 10 and 0 < anchor["c_index"]["estimate"] < 1
    # no pretraining: the family does not need it
    assert not any(p.name == "pretrain" for p in Path(search["search_dir"]).parent.iterdir())


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from impumae.data.store import Cohort
    from impumae.export.align import align_cohort
    from impumae.export.mlflow_model import load_selected_model
    from impumae.export.predict import predict
    model = load_selected_model(sys.argv[1], sys.argv[2])
    surv = predict(model, align_cohort(model, Cohort.open(sys.argv[3]))).surv
    np.save(sys.argv[4], surv)
    print(model.family, type(model.predictor).__module__)
""")


@pytest.mark.ray
def test_the_exported_model_reproduces_the_holdout_here_and_in_a_fresh_interpreter(runs, cohort):
    from impumae.data.store import Cohort
    from impumae.export.align import align_cohort
    from impumae.export.mlflow_model import load_selected_model
    from impumae.export.predict import predict

    search, _, tmp = runs
    uri = search["holdout"]["model"]["model_uri"]
    with np.load(Path(search["search_dir"]) / "holdout_predictions.npz") as saved:
        ids, holdout_surv = saved["patient_id"], saved["survival"]
    store = Cohort.open(cohort)
    rows = np.array([list(store.patient_ids).index(i) for i in ids])
    model = load_selected_model(uri, f"sqlite:///{tmp}/mlflow.db")
    assert model.family == "kmgroup" and model.predictor.decoder() is None
    here = predict(model, align_cohort(model, store)).surv
    np.testing.assert_allclose(here[rows], holdout_surv, atol=1e-6)   # the refit's own holdout predictions
    env = {**os.environ}   # PYTHONPATH and IMPUMAE_PLUGINS as declared; nothing else registers it there
    done = subprocess.run([sys.executable, "-c", SCRIPT, uri, f"sqlite:///{tmp}/mlflow.db", cohort, str(tmp / "fresh.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["kmgroup", PLUGIN]
    np.testing.assert_allclose(np.load(tmp / "fresh.npy"), here, atol=1e-9)


@pytest.mark.ray
def test_nested_cv_of_the_new_family_scores_every_outer_test_patient_once(runs, cohort):
    from impumae.data.cohort_view import load_cohort_arrays

    _, nested, _ = runs
    assert [o["config"]["family"] for o in nested["per_outer"]] == ["kmgroup", "kmgroup"]
    ca = load_cohort_arrays(cohort, ("rna",))
    with np.load(Path(nested["nested_dir"]) / "oof_predictions.npz") as oof:
        assert sorted(oof["patient_id"]) == sorted(ca.ids[ca.present["rna"]])
    pooled = nested["pooled"][0]
    assert 0 < pooled["c_index"]["estimate"] < 1
    assert nested["selection"]["family"] == {'"kmgroup"': 2}
