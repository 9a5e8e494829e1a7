"""The report from a real (tiny, Ray-free) refit + holdout evaluation logged to MLflow."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from impumae.data.synthetic import build_synthetic
from impumae.data.cohort_view import REFIT, fit_transforms, load_cohort_arrays, population
from impumae.engine.holdout import score_baselines, score_holdout
from impumae.engine.search import SearchOptions, pretrain_and_log, pretrain_job
from impumae.engine.space import SearchSpace
from impumae.engine.tracking import Tracker
from impumae.engine.trial import SearchContext
from impumae.data.baseline_features import baseline_features
from impumae.evaluation.report import (
    ablation_rows,
    build_report,
    collect_runs,
    latest_holdouts,
    logged_baselines,
)
from impumae.survival.baselines import common_grid, fit_baseline, on_grid, predict_baseline
from impumae.survival.metrics import evaluate

SUBSET = "rna,dna"
MODEL = {"width": 32, "heads": 2, "mlp_ratio": 2, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2,
         "decoder_mlp": 64}
EXPERIMENT = "report-test"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A refit MAE and a holdout evaluation, logged the way run_search logs them (no Tune trials)."""
    root = tmp_path_factory.mktemp("report")
    url = str(root / "cohort.zarr")
    build_synthetic(url, n_patients=200, progress=False)
    storage, uri, search = str(root / "runs"), f"sqlite:///{root / 'mlflow.db'}", "report-test-1"
    ctx = SearchContext(cohort_url=url, n_folds=2, storage=storage, search_dir=f"{storage}/{search}", model=MODEL,
                        pretrain={"epochs": 2, "batch_size": 32, "lr": 1e-3},
                        finetune={"batch_size": 32, "n_bins": 10, "freeze": "paper"})
    tracker = Tracker(uri, EXPERIMENT)
    tags = {"search": search, "cohort": url, "subsets": SUBSET}
    ca = load_cohort_arrays(url, ("rna", "dna"))
    job = pretrain_job(ctx, ca, ("rna", "dna"), REFIT)
    opts = SearchOptions(cohort=url, subsets=[SUBSET], space=SearchSpace(), workers=0)
    pretrain_and_log([((SUBSET, REFIT), job)], ctx, opts, tracker, tags, echo=lambda *_: None)
    best = {"config": {"subset": SUBSET, "lr": 1e-3, "imputation": "decoder"}, "fixed_epoch": 2}
    holdout = score_holdout(ctx, best, tracker, search, tags, n_boot=50, echo=lambda *_: None)
    for trial_id, pretrained, cs in (("a", True, 0.61), ("b", True, 0.66), ("c", False, 0.58)):
        run = tracker.start_run(f"trial-{trial_id}", {**tags, "kind": "trial", "trial_id": trial_id, "subset": SUBSET,
                                                      "status": "complete"}, params={"pretrained": pretrained})
        tracker.log_metrics(run, {"mean_val_cs_score": cs, "std_val_cs_score": 0.01, "mean_val_c_index": cs + 0.05,
                                  "std_val_c_index": 0.02, "fixed_epoch": 3, "mean_val_c_index_peek": cs + 0.08})
        tracker.end_run(run)
    return {"root": root, "url": url, "storage": storage, "uri": uri, "holdout": holdout}


def test_collect_runs_reads_the_holdout_and_its_predictions(experiment):
    runs = collect_runs(EXPERIMENT, experiment["uri"])
    holdouts = latest_holdouts(runs)
    assert list(holdouts) == [SUBSET]
    record = holdouts[SUBSET]
    assert record.results["anchor"]["n"] == experiment["holdout"]["conditions"]["anchor"]["n"]
    ca = load_cohort_arrays(experiment["url"], ("rna", "dna"))
    expected = ca.ids[population(ca, ("rna", "dna"), ca.holdout_indices(), "anchor")]
    np.testing.assert_array_equal(record.predictions["patient_id"], expected)
    assert record.predictions["survival"].shape == (len(expected), 10)  # every family's curves at its grid
    # the saved predictions reproduce the logged estimate exactly
    p = record.predictions
    again = evaluate(p["survival"], p["cuts"], p["time"], p["event"], p["train_time"], p["train_event"])
    assert again["cs_score"] == pytest.approx(record.results["anchor"]["cs_score"]["estimate"], abs=1e-9)


def test_baselines_use_the_refit_training_patients_and_the_same_holdout(experiment):
    url = experiment["url"]
    results = score_baselines(url, SUBSET, names=("coxph",), n_boot=50, echo=lambda *_: None)
    ca = load_cohort_arrays(url, ("rna", "dna"))
    subset = ("rna", "dna")
    train = ca.train_indices(REFIT)
    features = baseline_features(ca, subset, fit_transforms(ca, subset, train))
    assert np.isnan(features["dna"][~ca.present["dna"]]).all()
    assert not np.isnan(features["dna"][ca.present["dna"]]).any()
    X = np.concatenate(list(features.values()), axis=1)
    ft_train = population(ca, subset, train, "finetune")
    assert not np.isin(ft_train, ca.holdout_indices()).any()
    rows = population(ca, subset, ca.holdout_indices(), "anchor")
    pred = predict_baseline(fit_baseline("coxph", X[ft_train], ca.time[ft_train], ca.event[ft_train]), X[rows])
    # scored as every family is: the step functions read at the common grid of the training times
    pred = on_grid(pred, common_grid(ca.time[ft_train]))
    direct = evaluate(pred.surv, pred.surv_times, ca.time[rows], ca.event[rows], ca.time[ft_train], ca.event[ft_train],
                      risk=pred.risk)
    anchor = results["coxph"]["anchor"]
    assert anchor["n"] == len(rows) == experiment["holdout"]["conditions"]["anchor"]["n"]
    assert anchor["c_index"]["estimate"] == pytest.approx(direct["c_index"])
    assert anchor["cs_score"]["estimate"] == pytest.approx(direct["cs_score"])
    assert anchor["c_index_harrell"]["estimate"] == pytest.approx(direct["c_index_harrell"])  # the model's own risk
    assert anchor["cs_score"]["low"] <= anchor["cs_score"]["estimate"] <= anchor["cs_score"]["high"]


def test_the_holdout_scores_the_baselines_once_and_the_report_reads_them(experiment):
    """The single holdout logged CoxPH, CoxNet and RSF with the search's settings (n_boot 50, seed 0,
    default transforms): the very numbers a refit at report time gives, which the report takes
    only when asked for the same settings."""
    record = latest_holdouts(collect_runs(EXPERIMENT, experiment["uri"]))[SUBSET]
    assert record.baselines is not None and set(record.baselines["baselines"]) == {"coxph", "coxnet", "rsf"}
    assert (record.baselines["n_boot"], record.baselines["seed"]) == (50, 0)
    logged = logged_baselines(record, ("coxph", "rsf"), n_boot=50, seed=0, transform_options={})
    refitted = score_baselines(experiment["url"], SUBSET, names=("coxph", "rsf"), n_boot=50, seed=0,
                               echo=lambda *_: None, transform_options={})
    assert logged == json.loads(json.dumps(refitted))
    assert logged_baselines(record, ("coxph",), n_boot=1000, seed=0, transform_options={}) is None
    assert logged_baselines(record, ("coxph",), n_boot=50, seed=1, transform_options={}) is None
    assert logged_baselines(record, ("coxph",), n_boot=50, seed=0, transform_options={"tabular_scaling": "clip"}) is None


def test_ablation_picks_the_best_complete_trial_per_variant(experiment):
    rows = ablation_rows(collect_runs(EXPERIMENT, experiment["uri"]))
    by_model = {r["model"]: r for r in rows}
    assert by_model["impuTMAE + pretraining"]["trials"] == 2
    assert by_model["impuTMAE + pretraining"]["val CS-score"].startswith("0.660")
    assert by_model["impuTMAE (no pretraining)"]["val CS-score"].startswith("0.580")
    assert by_model["impuTMAE (no pretraining)"]["holdout CS-score"] == "n/a"
    assert by_model["impuTMAE + pretraining"]["fixed epoch"] == "3"
    assert by_model["impuTMAE + pretraining"]["val C-index"].startswith("0.710")
    assert by_model["impuTMAE + pretraining"]["val C-index (peek)"] == "0.740"


def test_build_report_writes_tables_figures_and_logs_to_mlflow(experiment):
    out = experiment["root"] / "report"
    path = build_report(EXPERIMENT, out, mlflow_uri=experiment["uri"], storage=experiment["storage"],
                        extra_subsets=("clinical",), n_boot=50, baselines=("coxph", "rsf"), echo=lambda *_: None)
    text = path.read_text()
    anchor = experiment["holdout"]["conditions"]["anchor"]
    assert f"| {SUBSET} | impuTMAE |" in text
    assert f"{anchor['c_index']['estimate']:.3f} [{anchor['c_index']['low']:.3f}, {anchor['c_index']['high']:.3f}]" in text
    assert f"| {SUBSET} | CoxPH |" in text and f"| {SUBSET} | RSF |" in text
    assert "| clinical | CoxPH |" in text and "| clinical | impuTMAE |" not in text
    assert "Table 3" in text and "impuTMAE (no pretraining)" in text
    assert (out / "km_rna_dna.png").stat().st_size > 1000 and (out / "calibration.png").stat().st_size > 1000
    tables = json.loads((out / "report.json").read_text())
    hidden = {(r["modality"], r["method"]) for r in tables["imputation"]}
    assert {("rna", "decoder"), ("dna", "knn")} <= hidden
    calibration = tables["calibration"][SUBSET]
    assert all(0 <= v <= 1 for v in calibration["predicted"] + calibration["observed"])

    client = MlflowClient(experiment["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    reports = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'report'")
    assert reports
    assert {"report.md", "calibration.png"} <= {a.path for a in client.list_artifacts(reports[0].info.run_id)}


def test_unknown_experiment_is_a_clear_error(experiment):
    with pytest.raises(ValueError, match="no MLflow experiment"):
        collect_runs("does-not-exist", experiment["uri"])


def test_table_1_keeps_a_search_that_chose_no_pretraining_and_leaves_out_the_ablation():
    """``pretrained`` is searched: a search that chose no pretraining on validation is that subset's
    Table 1 row; only a search whose space switched pretraining off (the ablation) is left out.
    Runs logged before the ``pretraining`` tag: inferred from the search's trials."""
    import pandas as pd

    from impumae.evaluation.report import ExperimentRuns, HoldoutRecord, _infer_untagged_pretraining

    def record(search, subset, pretrained, start, pretraining=""):
        return HoldoutRecord(run_id=search, search=search, subset=subset, cohort="c", pretrained=pretrained, params={},
                             start_time=start, results={}, pretraining=pretraining)
    runs = ExperimentRuns("e", "u", holdouts=[
        record("chose-none", "rna,mutations", False, 1, "searched"), record("ablation", "rna,mutations", False, 2, "off"),
        record("old-search", "rna", False, 3), record("old-ablation", "rna", False, 4)])
    runs.trials = pd.DataFrame([{"search": "old-search", "family": "impumae", "pretrained": p} for p in (True, False)]
                               + [{"search": "old-ablation", "family": "impumae", "pretrained": False}] * 2)
    _infer_untagged_pretraining(runs)
    assert [r.pretraining for r in runs.holdouts] == ["searched", "off", "searched", "off"]
    assert {s: r.search for s, r in latest_holdouts(runs).items()} == {"rna,mutations": "chose-none", "rna": "old-search"}
    assert {s: r.search for s, r in latest_holdouts(runs, ablation=True).items()} == {"rna,mutations": "ablation",
                                                                                     "rna": "old-ablation"}
