"""Classical baselines on scikit-survival's bundled datasets (offline) scored with our metrics."""

import numpy as np
import pandas as pd
import pytest
from sksurv.datasets import load_gbsg2, load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from impumae.survival.baselines import (
    BASELINES,
    MODELS,
    coxph_components,
    fit_baseline,
    fit_predict_baseline,
    late_fusion,
    make_preprocessor,
    run_baselines,
)
from impumae.survival.metrics import interpolate_survival


def _load(loader):
    X, y = loader()
    event_field, time_field = y.dtype.names
    X = pd.get_dummies(X, drop_first=True, dtype=float).to_numpy(dtype=float)
    return X, y[time_field].astype(float), y[event_field].astype(int)


def _split(n, seed=0, train_frac=0.7):
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(train_frac * n)
    return np.sort(perm[:cut]), np.sort(perm[cut:])


@pytest.fixture(scope="module")
def whas500():
    X, time, event = _load(load_whas500)
    train_idx, eval_idx = _split(len(time))
    return X, time, event, train_idx, eval_idx


@pytest.mark.parametrize("name", MODELS)
def test_each_baseline_discriminates_on_held_out_whas500(whas500, name):
    X, time, event, train_idx, eval_idx = whas500
    result = run_baselines({"clinical": X}, time, event, train_idx, eval_idx, names=(name,),
                           late_fusion_model=None)[name]
    assert result["c_index"] > 0.6 and result["c_index_harrell"] > 0.6
    assert 0.0 < result["ibs"] < 0.25          # better than a constant 0.5
    assert result["cs_score"] == pytest.approx((result["c_index"] + 1 - result["ibs"]) / 2)


def test_baselines_on_gbsg2_in_valid_ranges():
    X, time, event = _load(load_gbsg2)
    train_idx, eval_idx = _split(len(time), seed=1)
    results = run_baselines({"clinical": X}, time, event, train_idx, eval_idx, late_fusion_model=None)
    assert set(results) == set(BASELINES)
    for metrics in results.values():
        assert metrics["c_index"] > 0.6
        assert 0.0 < metrics["ibs"] < 0.25


def test_prediction_matches_sksurv_step_functions_and_concordance(whas500):
    X, time, event, train_idx, eval_idx = whas500
    pred = fit_predict_baseline("coxph", X[train_idx], time[train_idx], event[train_idx], X[eval_idx])
    # same model fitted directly with sksurv on the same preprocessing
    prep = make_preprocessor(X.shape[1], 32).fit(X[train_idx])
    direct = CoxPHSurvivalAnalysis(alpha=0.1, ties="efron").fit(
        prep.transform(X[train_idx]), Surv.from_arrays(event[train_idx].astype(bool), time[train_idx]))
    step_functions = direct.predict_survival_function(prep.transform(X[eval_idx]))
    at = np.linspace(time[train_idx].min(), time[train_idx].max(), 37)
    np.testing.assert_allclose(interpolate_survival(pred.surv, pred.surv_times, at, "step"),
                               np.array([fn(at) for fn in step_functions]), rtol=1e-10)
    np.testing.assert_allclose(pred.risk, direct.predict(prep.transform(X[eval_idx])), rtol=1e-10)
    result = run_baselines({"clinical": X}, time, event, train_idx, eval_idx, names=("coxph",),
                           late_fusion_model=None)["coxph"]
    expected = concordance_index_censored(event[eval_idx].astype(bool), time[eval_idx], pred.risk)[0]
    assert result["c_index_harrell"] == pytest.approx(expected, abs=1e-12)


def test_preprocessing_is_fitted_on_training_rows_only():
    X_train = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 4.0]])
    prep = make_preprocessor(2).fit(X_train)
    np.testing.assert_allclose(prep.named_steps["impute"].statistics_, [3.0, 3.0])
    np.testing.assert_allclose(prep.transform(np.array([[np.nan, np.nan]])), [[0.0, 0.0]])
    assert "pca" in make_preprocessor(40, 32).fit(np.random.default_rng(0).normal(size=(50, 40))).named_steps


def test_coxph_reduces_many_features_with_pca():
    rng = np.random.default_rng(2)
    n, p = 300, 200
    X = rng.normal(size=(n, p))
    risk = X[:, :5].sum(axis=1)
    event_time = rng.exponential(np.exp(-0.5 * risk))
    censor_time = rng.exponential(2.0, n)
    time, event = np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int)
    fitted = fit_baseline("coxph", X[:200], time[:200], event[:200])
    assert fitted[0].named_steps["pca"].n_components_ == coxph_components(event[:200]) < 32  # ~100 deaths: 10 components
    results = run_baselines({"rna": X}, time, event, np.arange(200), np.arange(200, 300),
                            names=("coxph", "coxnet"), late_fusion_model=None)
    assert results["coxnet"]["c_index"] > 0.6     # the elastic net finds the 5 informative genes


def test_late_fusion_with_missing_blocks(whas500):
    X, time, event, train_idx, eval_idx = whas500
    rng = np.random.default_rng(3)
    block_a, block_b = X[:, :7].copy(), X[:, 7:].copy()
    block_a[rng.random(len(time)) < 0.3] = np.nan
    block_b[rng.random(len(time)) < 0.3] = np.nan
    neither = np.isnan(block_a).all(axis=1) & np.isnan(block_b).all(axis=1)
    assert neither[eval_idx].any()                 # some evaluated patients have no block at all

    pred = late_fusion({"a": block_a, "b": block_b}, time, event, train_idx, eval_idx)
    assert pred.risk.shape == (len(eval_idx),) and pred.surv.shape == (len(eval_idx), len(pred.surv_times))
    km_times, km_surv = kaplan_meier_estimator(event[train_idx].astype(bool), time[train_idx])
    km = interpolate_survival(km_surv[None, :], km_times, pred.surv_times, "step")[0]
    np.testing.assert_allclose(pred.surv[neither[eval_idx]], np.tile(km, (neither[eval_idx].sum(), 1)))
    np.testing.assert_array_equal(pred.risk[neither[eval_idx]], 0.0)

    results = run_baselines({"a": block_a, "b": block_b}, time, event, train_idx, eval_idx,
                            names=("coxph",), late_fusion_model="coxph")
    fused = results["late_fusion_coxph"]
    assert fused["c_index"] > 0.6
    assert 0.0 < fused["ibs"] < 0.25


def test_late_fusion_with_one_complete_block_ranks_like_the_single_model(whas500):
    X, time, event, train_idx, eval_idx = whas500
    single = fit_predict_baseline("coxph", X[train_idx], time[train_idx], event[train_idx], X[eval_idx])
    fused = late_fusion({"all": X}, time, event, train_idx, eval_idx, model="coxph")
    # z-scoring is monotone: the same ranking
    np.testing.assert_array_equal(np.argsort(fused.risk), np.argsort(single.risk))


def test_bad_inputs_raise():
    X = np.zeros((10, 2))
    time, event = np.arange(1.0, 11.0), np.ones(10, int)
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_predict_baseline("deepsurv", X, time, event, X)
    with pytest.raises(ValueError, match="overlap"):
        run_baselines({"a": X}, time, event, np.arange(8), np.arange(5, 10))
    with pytest.raises(ValueError, match="rows"):
        run_baselines({"a": X[:9]}, time, event, np.arange(5), np.arange(5, 10))
    with pytest.raises(ValueError, match="2 deaths"):
        fit_baseline("coxph", X, time, np.zeros(10, int))


def test_common_grid_makes_antolini_equal_harrell_for_a_cox_model_with_early_deaths():
    """A validation death before the first training death ties everyone on a step curve (flat at 1);
    on the common grid, interpolated linearly from S(0) = 1, a proportional-hazards model's Antolini C
    equals its Harrell C (the GBM/LGG fold that gave 0.728 vs 0.816)."""
    from impumae.survival.baselines import common_grid, on_grid
    from impumae.survival.metrics import evaluate

    rng = np.random.default_rng(5)
    n = 300
    X = rng.normal(size=(n, 4))
    time = rng.exponential(np.exp(-X[:, 0])) + 0.05
    event = (rng.random(n) < 0.7).astype(int)
    train_idx, eval_idx = np.arange(200), np.arange(200, n)
    time[eval_idx[:3]], event[eval_idx[:3]] = 0.01, 1       # dies before anybody in training
    pred = fit_predict_baseline("coxnet", X[train_idx], time[train_idx], event[train_idx], X[eval_idx])
    args = (time[eval_idx], event[eval_idx], time[train_idx], event[train_idx])
    on_steps = evaluate(pred.surv, pred.surv_times, *args, risk=pred.risk, interpolation="step")
    assert on_steps["c_index_strict"] < on_steps["c_index_harrell"] - 0.01    # the artefact (strict ties)
    grid = common_grid(time[train_idx])
    assert grid[0] == 0 and len(grid) == 20 and grid[-1] == time[train_idx].max()
    gridded = on_grid(pred, grid)
    fair = evaluate(gridded.surv, gridded.surv_times, *args, risk=pred.risk, interpolation="linear")
    assert fair["c_index"] == pytest.approx(fair["c_index_harrell"], abs=1e-9)
    assert fair["c_index_strict"] == pytest.approx(fair["c_index_harrell"], abs=1e-9)
    scored = run_baselines({"x": X}, time, event, train_idx, eval_idx, names=("coxnet",), late_fusion_model=None)
    assert scored["coxnet"]["c_index"] == pytest.approx(fair["c_index"])


def test_model_settings_replace_the_defaults_and_unknown_ones_are_named(whas500):
    X, time, event, train_idx, _ = whas500
    strong = fit_baseline("linear", X[train_idx], time[train_idx], event[train_idx], params={"alpha_ratio": 0.5})
    weak = fit_baseline("linear", X[train_idx], time[train_idx], event[train_idx], params={"alpha_ratio": 0.01})
    # the model predicts at the end of its path: alpha_ratio times the largest penalty
    for fitted, ratio in ((strong, 0.5), (weak, 0.01)):
        alphas = fitted[-1].alphas_
        assert alphas[-1] == pytest.approx(ratio * alphas[0])
    assert np.abs(strong[-1].coef_[:, -1]).sum() < np.abs(weak[-1].coef_[:, -1]).sum()
    forest = fit_baseline("rsf", X[train_idx], time[train_idx], event[train_idx], params={"n_estimators": 7})
    assert len(forest[-1].estimators_) == 7
    with pytest.raises(ValueError, match=r"baseline 'rsf' has no setting\(s\) \['leaves'\]"):
        fit_baseline("rsf", X[train_idx], time[train_idx], event[train_idx], params={"leaves": 3})
    with pytest.raises(ValueError, match="unknown baseline 'xgb'"):
        fit_baseline("xgb", X[train_idx], time[train_idx], event[train_idx])


def test_coxph_keeps_to_one_feature_per_ten_deaths_and_stays_finite_on_small_folds(tmp_path):
    """A 160-patient cohort's nested split leaves ~60 training patients per fold: with 32 PCA
    components CoxPH diverged there (risk scores ~exp(40), NaN survival curves)."""
    from impumae.data.synthetic import build_synthetic
    from impumae.data.cohort_view import REFIT, load_cohort_arrays
    from impumae.families.sksurv import fit_sksurv_fold

    assert coxph_components(np.r_[np.ones(25), np.zeros(50)]) == 2
    assert coxph_components(np.ones(1000)) == 32 and coxph_components(np.ones(3)) == 1
    url = str(build_synthetic(str(tmp_path / "t.zarr"), n_patients=160, seed=5, progress=False).url)
    for outer in range(2):
        split = {"outer_folds": 2, "outer_fold": outer, "repeat": 0, "seed": 0, "stratify": "rna"}
        ca = load_cohort_arrays(url, ("rna", "dna"), split)
        for fold in (0, 1, REFIT):
            fit = fit_sksurv_fold(ca, ("rna", "dna"), fold, "coxph", seed=0)
            rows = ca.holdout_indices() if fold == REFIT else fit.val_rows
            assert np.isfinite(fit.survival(rows)).all()
            assert fit.estimator.named_steps["prep"].named_steps["pca"].n_components == coxph_components(fit.train_event)


@pytest.mark.parametrize("name", ["coxph", "coxnet", "linear"])
def test_cox_survival_equals_scikit_survival_s_breslow_where_that_is_finite(whas500, name):
    from impumae.survival.baselines import fit_baseline, predict_baseline

    X, time, event, train_idx, eval_idx = whas500
    fitted = fit_baseline(name, X[train_idx], time[train_idx], event[train_idx])
    ours = predict_baseline(fitted, X[eval_idx])
    model = fitted[-1]
    theirs = model.predict_survival_function(fitted[:-1].transform(X[eval_idx]), return_array=True)
    np.testing.assert_allclose(ours.surv_times, model.unique_times_)
    np.testing.assert_allclose(ours.surv, theirs, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.risk, model.predict(fitted[:-1].transform(X[eval_idx])))


def test_a_weakly_penalised_cox_model_on_heavy_tailed_features_gives_finite_curves():
    """Raw, heavy-tailed expression and a small penalty: the training linear predictors span ~60,
    scikit-survival's Breslow sums overflow and cancel, and its curves are NaN (what sank nested runs
    on two public cohorts); the log-domain baseline gives finite curves that still rank patients."""
    import warnings

    from impumae.survival.baselines import fit_baseline, predict_baseline

    rng = np.random.default_rng(0)
    n, p = 160, 3000
    X = rng.lognormal(0, 2.0, size=(n, p)) * (rng.random((n, p)) < 0.3)
    hazard = np.log1p(X[:, :5]).sum(1) * 0.3
    death, censor = rng.exponential(np.exp(-hazard)), rng.exponential(1.0, n)
    time, event = np.minimum(death, censor), (death <= censor).astype(int)
    train, test = np.arange(100), np.arange(100, n)
    fitted = fit_baseline("linear", X[train], time[train], event[train], params={"alpha_ratio": 0.005, "l1_ratio": 0.1})
    model = fitted[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        theirs = model.predict_survival_function(fitted[:-1].transform(X[test]), return_array=True)
    assert not np.isfinite(theirs).all()                      # the failure this guards against
    ours = predict_baseline(fitted, X[test])
    assert np.isfinite(ours.surv).all() and (ours.surv >= 0).all() and (ours.surv <= 1).all()
    assert (np.diff(ours.surv, axis=1) <= 1e-12).all()        # survival curves do not rise


@pytest.mark.parametrize("name", ["linear", "coxnet"])
def test_clinical_columns_stay_in_the_elastic_net_when_unpenalised(name):
    """Three clinical columns that carry the hazard beside 500 noise genes: penalised with the genes
    a strong penalty removes them; unpenalised (the default for these families) they stay."""
    from impumae.survival.baselines import fit_baseline

    rng = np.random.default_rng(3)
    n = 150
    clinical = rng.normal(size=(n, 3))
    genes = rng.normal(size=(n, 500))
    death = rng.exponential(np.exp(-0.4 * clinical.sum(1)))
    censor = rng.exponential(1.5, n)
    time, event = np.minimum(death, censor), (death <= censor).astype(int)
    X = np.concatenate([genes, clinical], axis=1)
    mask = np.r_[np.zeros(500, bool), np.ones(3, bool)]
    params = {"alpha_ratio": 0.5} if name == "linear" else {}

    def clinical_coef(fitted):
        coef = fitted[-1].coef_
        return (coef[:, -1] if coef.ndim == 2 else coef)[-3:] if name == "linear" else fitted[-1].coef_[-3:, -1]

    free = fit_baseline(name, X, time, event, params=params, unpenalized=mask)
    assert (np.abs(clinical_coef(free)) > 0.05).all()
    penalised = fit_baseline(name, X, time, event, params={**params, "unpenalized_clinical": False}, unpenalized=mask)
    assert np.abs(clinical_coef(penalised)).sum() < np.abs(clinical_coef(free)).sum()
    with pytest.raises(ValueError, match="unpenalized has"):
        fit_baseline(name, X, time, event, params=params, unpenalized=mask[:10])
