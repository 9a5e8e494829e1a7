"""Model families in one search: each scikit-survival family fits a fold as impuTMAE does (same
rows, transforms, grid, metrics); conditional parameters; a mixed-family Ray search selects on
validation folds only and keeps the holdout to the final score; the holdout scores a scikit-survival
family when it is the one selected."""
from pathlib import Path

import numpy as np
import optuna
import pytest

from impumae.data.synthetic import build_synthetic
from impumae.engine import audit
from impumae.data.cohort_view import REFIT, load_cohort_arrays
from impumae.engine.curves import FOLD_METRICS, validation_curve
from impumae.engine.mae_fold import model_and_transforms
from impumae.families import family_name, family_of, fold_populations
from impumae.families.sksurv import FAMILIES as SKSURV_FAMILIES, fit_sksurv_fold
from impumae.engine.pretrain_jobs import PretrainJob, run_pretraining
from impumae.engine.space import ConditionalSpace, SearchSpace
from impumae.engine.trial import SearchContext, summarise
from impumae.survival.metrics import evaluate

ROOT = Path(__file__).resolve().parents[2]
SUBSET = ("rna", "clinical")
MODEL = {"width": 32, "heads": 2, "mlp_ratio": 2, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2,
         "decoder_mlp": 64}
PRETRAIN = {"epochs": 1, "batch_size": 32, "lr": 1e-3}
OPTIONS = {"tabular_scaling": "rank_gauss"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("families") / "tiny.zarr"
    return str(build_synthetic(str(path), n_patients=240, seed=3, progress=False).url)


@pytest.mark.parametrize("family", [f.name for f in SKSURV_FAMILIES])
def test_each_family_fits_a_fold_like_impumae_and_scores_it_the_same_way(cohort, family):
    ca = load_cohort_arrays(cohort, SUBSET)
    fit = fit_sksurv_fold(ca, SUBSET, 1, family, seed=0, n_bins=12, transform_options=OPTIONS)
    train_rows, val_rows = fold_populations(ca, SUBSET, 1)
    np.testing.assert_array_equal(fit.train_rows, train_rows)     # the rows impuTMAE's fold uses
    np.testing.assert_array_equal(fit.val_rows, val_rows)
    assert fit.family == family and fit.fold == 1
    assert not set(fit.train_ids) & set(ca.ids[ca.holdout_indices()])
    (row,) = fit.history
    assert row["epoch"] == 1 and row["fit_seconds"] > 0
    curve = validation_curve(fit.history)
    assert set(curve) == set(FOLD_METRICS) and all(len(v) == 1 for v in curve.values())
    assert len(fit.grid) == 12 and fit.grid[-1] == pytest.approx(fit.train_time.max())
    surv = fit.survival(val_rows)
    assert surv.shape == (len(val_rows), 12) and (np.diff(surv, axis=1) <= 1e-9).all()
    # the validation metrics are evaluate() of the curves at the grid, as the fine-tuning loop computes them
    expected = evaluate(surv, fit.grid, ca.time[val_rows], ca.event[val_rows], fit.train_time, fit.train_event)
    assert {k: row[f"val_{k}"] for k in expected} == pytest.approx(expected)
    assert row["val_c_index"] > 0.65  # the synthetic risk is learnable from RNA + clinical (all 0.75-0.83 here)


def test_the_refit_trains_on_every_non_holdout_patient_with_the_anchor_and_has_no_validation(cohort):
    ca = load_cohort_arrays(cohort, SUBSET)
    fit = fit_sksurv_fold(ca, SUBSET, REFIT, "linear", seed=0)
    non_holdout = np.flatnonzero(~ca.holdout)
    np.testing.assert_array_equal(fit.train_rows, non_holdout[ca.present["rna"][non_holdout]])
    assert len(fit.val_rows) == 0 and not any(k.startswith("val_") for k in fit.history[0])
    assert fit.survival(ca.holdout_indices()).shape == (len(ca.holdout_indices()), 20)


def test_a_family_uses_the_transforms_impumae_pretrained_and_fine_tuned_with(cohort, tmp_path):
    """fit_transforms on the fold's training patients with the space's options = the pretraining
    job's transforms (tokenised modalities) + fit_mae_fold's clinical ones."""
    ca = load_cohort_arrays(cohort, SUBSET)
    job = PretrainJob.for_subset(ca, SUBSET, 1, MODEL, PRETRAIN, 0, OPTIONS)
    run_pretraining([job], str(tmp_path), workers=0, echo=lambda *_: None)
    _, impumae_transforms = model_and_transforms(ca, SUBSET, job, str(tmp_path), pretrained=False)
    fit = fit_sksurv_fold(ca, SUBSET, 1, "coxph", transform_options=OPTIONS)
    ours, theirs = fit.transforms.to_dict(), impumae_transforms.to_dict()
    assert set(ours["transforms"]) == set(theirs["transforms"]) == set(SUBSET)
    assert ours == theirs


def test_family_settings_come_from_their_prefixed_keys_only():
    assert family_name({"lr": 1e-3}) == "impumae"
    config = {"family": "linear", "linear_alpha_ratio": 0.1, "linear_l1_ratio": 0.7, "linear_l2": 3.0, "lr": 1e-3}
    assert family_of(config).settings(config) == {"alpha_ratio": 0.1, "l1_ratio": 0.7}  # linear_l2 is impuTMAE's
    with pytest.raises(ValueError, match="unknown model family 'xgb'"):
        family_of({"family": "xgb"})


def test_a_space_without_family_is_impumae_alone_and_searched_as_before():
    space = SearchSpace.load(ROOT / "search_spaces" / "default.yaml")
    assert space.families() == ["impumae"] and space.conditions() == {}
    assert space.searcher_space(["rna"]) == space.optuna_distributions(["rna"])  # the plain dict, as before


def test_conditional_parameters_are_sampled_only_for_their_family():
    space = SearchSpace.load(ROOT / "search_spaces" / "families.yaml")
    sampler = space.searcher_space(["rna", "rna,dna"])
    assert isinstance(sampler, ConditionalSpace)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    seen = set()
    for i in range(40):
        trial = study.ask()
        sampler(trial)
        family = trial.params["family"]
        seen.add(family)
        assert set(trial.params) == set(sampler.sample_names(family)) | {"subset"}
        expected_own = {k for k, v in space.search.items() if v.get("family") == family}
        assert expected_own <= set(trial.params)
        assert not {k for k, v in space.search.items() if v.get("family") not in (None, family)} & set(trial.params)
        study.tell(trial, float(i % 7) / 7)
    assert seen == set(space.families())


def test_a_conditional_searcher_saves_and_restores_for_a_resumed_search(tmp_path):
    from ray.tune.search.optuna import OptunaSearch
    space = SearchSpace.load(ROOT / "search_spaces" / "families.yaml").searcher_space(["rna"])
    searcher = OptunaSearch(space=space, metric="m", mode="max", seed=0)
    first = searcher.suggest("t1")
    assert set(first) == set(space.sample_names(first["family"]))
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    second = restored.suggest("t2")
    assert set(second) == set(space.sample_names(second["family"]))


@pytest.mark.parametrize("text, error", [
    ("family: {type: categorical, choices: [impumae, xgb]}", "unknown model family"),
    ("family: {type: categorical, choices: [impumae]}\n  rsf_min_samples_leaf: {type: int, low: 3, high: 9, family: rsf}",
     "not among the searched families"),
    ("family: {type: categorical, choices: [rsf]}\n  rsf_leaves: {type: int, low: 3, high: 9, family: rsf}",
     "named rsf_<setting>"),
    ("lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2, family: impumae}", "does not search 'family"),
], ids=["unknown-family", "unsearched-family", "misnamed-setting", "condition-without-family"])
def test_bad_family_spaces_are_refused_when_loaded(tmp_path, text, error):
    (tmp_path / "a.yaml").write_text(f"model: {{width: 32}}\npretrain: {{epochs: 1}}\nsearch:\n  {text}\n")
    with pytest.raises(ValueError, match=error):
        SearchSpace.load(tmp_path / "a.yaml")


def test_a_one_epoch_family_trial_reports_its_fold_scores_at_epoch_one(cohort):
    ca = load_cohort_arrays(cohort, SUBSET)
    folds = [{"fold": f, "n_train": 1, "n_val": 1,
              "fold_history": fit_sksurv_fold(ca, SUBSET, f, "linear").history} for f in (0, 1)]
    out = summarise(folds, n_folds=2)
    assert out["fixed_epoch"] == 1
    assert out["running_mean_val_cs_score"] == pytest.approx(np.mean([f["fold_history"][0]["val_cs_score"] for f in folds]))


def test_the_holdout_scores_a_scikit_survival_family_when_it_is_selected(cohort, tmp_path):
    from impumae.engine.holdout import score_holdout
    from impumae.engine.tracking import Tracker
    ctx = SearchContext(cohort_url=cohort, n_folds=2, storage=str(tmp_path / "runs"),
                        search_dir=str(tmp_path / "runs" / "s"), transforms=OPTIONS)
    best = {"config": {"family": "rsf", "rsf_min_samples_leaf": 10, "subset": ",".join(SUBSET)}, "family": "rsf",
            "fixed_epoch": 1}
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "holdout-family")
    out = score_holdout(ctx, best, tracker, "s", {"search": "s"}, n_boot=20, echo=lambda *_: None)
    assert out["family"] == "rsf"
    anchor = out["conditions"]["anchor"]
    assert anchor["c_index"]["low"] <= anchor["c_index"]["estimate"] <= anchor["c_index"]["high"]
    assert anchor["c_index"]["estimate"] > 0.55
    # the same model scored directly: the holdout number is the refit's survival at its grid
    ca = load_cohort_arrays(cohort, SUBSET)
    refit = fit_sksurv_fold(ca, SUBSET, REFIT, "rsf", {"min_samples_leaf": 10}, seed=0, transform_options=OPTIONS)
    rows = ca.holdout_indices()[ca.present["rna"][ca.holdout_indices()]]
    direct = evaluate(refit.survival(rows), refit.grid, ca.time[rows], ca.event[rows], refit.train_time, refit.train_event)
    assert anchor["c_index"]["estimate"] == pytest.approx(direct["c_index"])
    stages = audit.load(ctx.search_dir)
    holdout_ids = set(ca.ids[ca.holdout_indices()])
    assert not holdout_ids & set(stages["refit-finetune"]["train"])
    assert set(stages["holdout"]["anchor"]) <= holdout_ids
    (run,) = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'holdout'")
    assert run.data.tags["family"] == "rsf" and run.data.params["family"] == "rsf"
    assert "holdout_predictions.npz" in {a.path for a in tracker.client.list_artifacts(run.info.run_id)}


def test_a_family_search_tries_every_family_once_first(tmp_path):
    from impumae.engine.search import make_searcher
    (tmp_path / "space.yaml").write_text(MIXED_SPACE)
    searcher = make_searcher(SearchSpace.load(tmp_path / "space.yaml"), ["rna,dna"], seed=0)
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["family"] for c in first] == ["impumae", "linear", "rsf"]
    assert first[0]["lr"] > 0 and first[2]["rsf_min_samples_leaf"] >= 5   # the rest is sampled
    single = tmp_path / "single.yaml"
    single.write_text("search:\n  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    assert "family" not in make_searcher(SearchSpace.load(single), ["rna"], seed=0).suggest("t0")


MIXED_SPACE = """
model: {width: 32, heads: 2, mlp_ratio: 2.0, decoder_width: 32, decoder_depth: 1, decoder_heads: 2, decoder_mlp: 64}
pretrain: {epochs: 2, batch_size: 32, lr: 1.0e-3}
finetune: {epochs: 2, batch_size: 32}
transforms: {tabular_scaling: rank_gauss}
search:
  family: {type: categorical, choices: [impumae, linear, rsf]}
  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2, family: impumae}
  linear_alpha_ratio: {type: loguniform, low: 0.01, high: 0.5, family: linear}
  rsf_min_samples_leaf: {type: int, low: 5, high: 20, family: rsf}
"""


@pytest.mark.ray
def test_a_mixed_family_search_and_its_ensemble_select_on_validation_only_and_keep_the_holdout_apart(cohort, tmp_path):
    import ray
    from mlflow.tracking import MlflowClient

    from impumae.engine.search import SearchOptions, run_search
    (tmp_path / "space.yaml").write_text(MIXED_SPACE)
    # the searcher tries each family once first (make_searcher), so 3 trials cover the 3 families
    opts = SearchOptions(cohort=cohort, subsets=[",".join(SUBSET)], selection="best", space=SearchSpace.load(tmp_path / "space.yaml"),
                         trials=3, folds=2, seed=5, storage=str(tmp_path / "runs"),
                         mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test-families", n_boot=20,
                         ensemble_top_k=3)
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)  # not a Ray already up
    try:
        summary = run_search(opts, echo=lambda *a: None)
    finally:
        ray.shutdown()
    trials = [t for t in summary["trials"] if t["family"] != "ensemble"]
    (ensemble,) = [t for t in summary["trials"] if t["family"] == "ensemble"]
    assert {t["family"] for t in trials} == {"impumae", "linear", "rsf"}
    # the ensemble of the three, scored on the same validation folds
    assert sorted(m["trial_id"] for m in ensemble["config"]["members"]) == sorted(t["trial_id"] for t in trials)
    assert ensemble["folds_done"] == 2 and np.isfinite(ensemble["mean_val_cs_score"])
    for t in trials:  # a trial carries its own family's parameters only
        own = {"impumae": "lr", "linear": "linear_alpha_ratio", "rsf": "rsf_min_samples_leaf"}[t["family"]]
        assert set(t["config"]) == {"family", "subset", own}
        assert t["folds_done"] == 2 and (t["family"] == "impumae" or t["fixed_epoch"] == 1)
    best = max([*trials, ensemble], key=lambda t: t["mean_val_cs_score"])  # the validation mean, nothing else
    assert summary["best"]["config"] == best["config"] and summary["holdout"]["family"] == best["family"]
    # MLflow: every trial a parent with a child run per fold and its family; pretraining only for impuTMAE
    client = MlflowClient(opts.mlflow_uri)
    exp = client.get_experiment_by_name(opts.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.params["family"] for r in parents) == sorted(t["family"] for t in trials)
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["fold"] for r in children) == ["0", "1"]
        assert all(r.data.tags["family"] == parent.data.tags["family"] for r in children)
    pretrains = sorted(r.data.tags["fold"] for r in runs if r.data.tags.get("kind") == "pretrain")
    refit_needed = family_of(best["config"]).pretrains(best["config"])
    assert pretrains == (["fold0", "fold1", "refit"] if refit_needed else ["fold0", "fold1"])
    # the audit: holdout patients reached the final score and no other stage
    ca = load_cohort_arrays(cohort, SUBSET)
    holdout = set(ca.ids[ca.holdout_indices()])
    stages = audit.load(summary["search_dir"])
    assert sum(s.startswith("finetune-") for s in stages) == 6 and "refit-finetune" in stages
    assert {"ensemble-fold0", "ensemble-fold1"} <= set(stages)
    for stage, roles in stages.items():
        for ids in roles.values():
            assert (set(ids) <= holdout) if stage == "holdout" else not holdout & set(ids), stage
    assert audit.check_holdout_isolation(summary["search_dir"], holdout) == []


def test_the_report_lists_each_familys_best_validation_trial_and_labels_the_holdout_by_family():
    import pandas as pd

    from impumae.evaluation.report import ExperimentRuns, HoldoutRecord, ablation_rows, family_rows, holdout_label
    def trial(family, cs, status="complete", **params):
        return {"search": "s", "trial_id": f"{family}{cs}", "subset": "rna", "status": status, "family": family,
                "pretrained": True, "params": {"subset": "rna", "family": family, **params}, "fixed_epoch": 1,
                "mean_val_cs_score": cs, "std_val_cs_score": 0.01, "mean_val_c_index": cs - 0.1, "std_val_c_index": 0.02}
    runs = ExperimentRuns("e", "sqlite://", trials=pd.DataFrame([
        trial("impumae", 0.70, lr=1e-3), trial("impumae", 0.72, lr=2e-3), trial("rsf", 0.75, rsf_min_samples_leaf=9),
        trial("rsf", 0.90, status="stopped_early", rsf_min_samples_leaf=3), trial("linear", 0.71, linear_l1_ratio=0.5)]))
    rows = {r["family"]: r for r in family_rows(runs)}
    assert set(rows) == {"impuTMAE", "RSF", "Cox elastic net (searched penalty)"}
    assert rows["RSF"]["val CS-score"] == "0.750 ± 0.010" and rows["RSF"]["trials"] == 1  # complete trials only
    assert rows["RSF"]["configuration"] == "rsf_min_samples_leaf=9"
    assert rows["impuTMAE"]["val CS-score"].startswith("0.720") and rows["impuTMAE"]["trials"] == 2
    assert [r["trials"] for r in ablation_rows(runs)] == [2]  # the pretraining ablation: impuTMAE trials only
    record = HoldoutRecord("r", "s", "rna", "", True, {}, 0, {}, family="rsf")
    assert holdout_label(record) == "RSF (the search's choice)"
    assert holdout_label(HoldoutRecord("r", "s", "rna", "", True, {}, 0, {})) == "impuTMAE"


def _row(trial_id, cs, config, fixed_epoch=1):
    return {"trial_id": trial_id, "config": config, "mean_val_cs_score": cs, "fixed_epoch": fixed_epoch}


def test_the_ensemble_averages_its_members_and_is_scored_like_a_trial(cohort, tmp_path):
    from impumae.engine.ensemble import ensemble_config, ensemble_row
    from impumae.engine.trial import fit_configuration
    subset = ",".join(SUBSET)
    rsf = {"family": "rsf", "rsf_min_samples_leaf": 8, "subset": subset}
    linear = {"family": "linear", "linear_alpha_ratio": 0.1, "subset": subset}
    complete = [_row("a", 0.70, rsf), _row("b", 0.80, linear), _row("c", 0.75, {**rsf, "subset": "rna"}),
                _row("d", 0.60, {**linear, "linear_alpha_ratio": 0.3})]
    config = ensemble_config(complete, k=2)
    assert [m["trial_id"] for m in config["members"]] == ["b", "a"]  # the best two of the best's subset
    assert ensemble_config(complete[2:3], k=3) is None
    ctx = SearchContext(cohort_url=cohort, n_folds=2, storage=str(tmp_path), search_dir=str(tmp_path / "s"),
                        transforms=OPTIONS)
    fits = [fit_configuration(ctx, config, fold, "cpu") for fold in (0, 1)]
    members = [fit_configuration(ctx, c, 1, "cpu") for c in (linear, rsf)]
    rows = fits[1].val_rows
    np.testing.assert_allclose(fits[1].survival(rows), (members[0].survival(rows) + members[1].survival(rows)) / 2)
    ca = load_cohort_arrays(cohort, SUBSET)
    expected = evaluate(fits[1].survival(rows), fits[1].grid, ca.time[rows], ca.event[rows], fits[1].train_time,
                        fits[1].train_event)
    assert fits[1].history[0]["val_cs_score"] == pytest.approx(expected["cs_score"])
    row = ensemble_row(config, fits)
    assert row["family"] == "ensemble" and row["fixed_epoch"] == 1 and row["folds_done"] == 2
    assert row["mean_val_cs_score"] == pytest.approx(np.mean([f.history[0]["val_cs_score"] for f in fits]))


def test_an_impumae_member_is_refitted_to_the_model_its_trial_scored_at_the_fixed_epoch(cohort, tmp_path):
    from impumae.engine.trial import fit_configuration
    ca = load_cohort_arrays(cohort, SUBSET)
    run_pretraining([PretrainJob.for_subset(ca, SUBSET, 0, MODEL, PRETRAIN, 0, OPTIONS)], str(tmp_path), workers=0,
                    echo=lambda *_: None)
    ctx = SearchContext(cohort_url=cohort, n_folds=2, storage=str(tmp_path), search_dir=str(tmp_path / "s"),
                        model=MODEL, pretrain=PRETRAIN, finetune={"epochs": 3, "batch_size": 32}, transforms=OPTIONS)
    mae = {"family": "impumae", "lr": 1e-3, "subset": ",".join(SUBSET)}
    trial_fold = fit_configuration(ctx, mae, 0, "cpu")                    # what the trial ran: 3 epochs
    config = {"family": "ensemble", "subset": mae["subset"],
              "members": [{"trial_id": "m", "config": mae, "fixed_epoch": 2},
                          {"trial_id": "r", "config": {"family": "rsf", "subset": mae["subset"]}, "fixed_epoch": 1}]}
    ensemble = fit_configuration(ctx, config, 0, "cpu")
    member = ensemble.members[0]
    assert len(member.history) == 2
    assert member.history[1]["val_cs_score"] == pytest.approx(trial_fold.history[1]["val_cs_score"])


def test_the_holdout_scores_a_selected_ensemble(cohort, tmp_path):
    from impumae.engine.holdout import score_holdout
    from impumae.engine.tracking import Tracker
    subset = ",".join(SUBSET)
    config = {"family": "ensemble", "subset": subset,
              "members": [{"trial_id": "a", "config": {"family": "linear", "subset": subset}, "fixed_epoch": 1},
                          {"trial_id": "b", "config": {"family": "gbsa", "subset": subset}, "fixed_epoch": 1}]}
    ctx = SearchContext(cohort_url=cohort, n_folds=2, storage=str(tmp_path / "runs"),
                        search_dir=str(tmp_path / "runs" / "s"), transforms=OPTIONS)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "holdout-ensemble")
    out = score_holdout(ctx, {"config": config, "family": "ensemble", "fixed_epoch": 1}, tracker, "s",
                        {"search": "s"}, n_boot=20, echo=lambda *_: None)
    assert out["family"] == "ensemble"
    ca = load_cohort_arrays(cohort, SUBSET)
    rows = ca.holdout_indices()[ca.present["rna"][ca.holdout_indices()]]
    refits = [fit_sksurv_fold(ca, SUBSET, REFIT, f, seed=0, transform_options=OPTIONS) for f in ("linear", "gbsa")]
    surv = np.mean([r.survival(rows) for r in refits], axis=0)
    direct = evaluate(surv, refits[0].grid, ca.time[rows], ca.event[rows], refits[0].train_time, refits[0].train_event)
    assert out["conditions"]["anchor"]["cs_score"]["estimate"] == pytest.approx(direct["cs_score"])
