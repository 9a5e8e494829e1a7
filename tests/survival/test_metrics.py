"""Survival metrics: known answers by hand, cross-checks against pycox and scikit-survival."""

import time as clock

import numpy as np
import pandas as pd
import pytest
import torch
from pycox.evaluation import EvalSurv
from pycox.evaluation import ipcw as pycox_ipcw
from sksurv.metrics import brier_score as sksurv_brier_score
from sksurv.metrics import concordance_index_censored
from sksurv.metrics import integrated_brier_score as sksurv_integrated_brier_score
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from impumae.survival import metrics
from impumae.survival.bins import TimeBins
from impumae.survival.metrics import (
    bootstrap_ci,
    brier_ipcw,
    censoring_survival,
    concordance_antolini,
    concordance_harrell,
    cs_score,
    evaluate,
    ibs_grid,
    integrated_brier_score,
    interpolate_survival,
    restricted_mean_survival,
    survival_curve,
)


def _cohort(seed, n_test=150, n_train=400, n_bins=20):
    """Random labels and hazard logits that carry signal: a risk drives both times and logits."""
    rng = np.random.default_rng(seed)

    def labels(n):
        risk = rng.normal(size=n)
        event_time = rng.exponential(np.exp(-risk))
        censor_time = rng.exponential(1.5, n)
        return risk, np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int)

    _, train_time, train_event = labels(n_train)
    risk, time, event = labels(n_test)
    bins = TimeBins(n_bins).fit(train_time)
    logits = risk[:, None] - 2.0 + 0.3 * rng.normal(size=(n_test, n_bins))
    return dict(logits=logits, surv=survival_curve(logits), cuts=bins.cuts, time=time, event=event,
                train_time=train_time, train_event=train_event, risk=risk)


# ----------------------------------------------------------------------------- survival curves
def test_survival_curve_by_hand_and_against_pycox_hazard2surv():
    np.testing.assert_allclose(survival_curve(np.zeros((1, 3))), [[0.5, 0.25, 0.125]])
    logits = np.random.default_rng(0).normal(size=(10, 20)) * 4
    hazard = torch.sigmoid(torch.tensor(logits))
    pycox_surv = (1 - hazard).log().cumsum(1).exp().numpy()   # pycox hazard2surv without its epsilon
    np.testing.assert_allclose(survival_curve(logits), pycox_surv, rtol=1e-10)
    torch_surv = survival_curve(torch.tensor(logits))
    assert isinstance(torch_surv, torch.Tensor)
    np.testing.assert_allclose(torch_surv.numpy(), pycox_surv, rtol=1e-10)
    assert np.isfinite(survival_curve(np.full((1, 5), 1e4))).all()


def test_interpolate_survival_linear_and_step_by_hand():
    surv = np.array([[0.9, 0.5, 0.3]])
    times = np.array([1.0, 2.0, 4.0])
    at = np.array([0.0, 0.5, 1.0, 1.5, 3.0, 4.0, 9.0])
    np.testing.assert_allclose(interpolate_survival(surv, times, at, "linear"),
                               [[1.0, 0.95, 0.9, 0.7, 0.4, 0.3, 0.3]])
    np.testing.assert_allclose(interpolate_survival(surv, times, at, "step"),
                               [[1.0, 1.0, 0.9, 0.9, 0.5, 0.3, 0.3]])
    # restricted mean survival: area under the curve from 0 to 4
    np.testing.assert_allclose(restricted_mean_survival(surv, times, "linear"), [0.95 + 0.7 + 0.8])
    np.testing.assert_allclose(restricted_mean_survival(surv, times, "step"), [1.0 + 0.9 + 1.0])


# ----------------------------------------------------------------------------- C-indices
def test_antolini_known_answers():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 1, 0])
    grid = np.array([0.5, 1.5, 2.5, 3.5, 4.5])
    right_order = np.array([[0.9, 0.1, 0.1, 0.1, 0.1],   # dies first, drops first
                            [0.9, 0.8, 0.2, 0.2, 0.2],
                            [0.9, 0.9, 0.8, 0.3, 0.3],
                            [0.9, 0.9, 0.9, 0.9, 0.8]])
    for ties in ("adjusted", "strict"):
        assert concordance_antolini(right_order, grid, time, event, ties=ties) == 1.0
    # reversed: discordant everywhere except one tie (S_0(1) = S_1(1) = 0.9), which counts 1/2 of 6 pairs
    assert concordance_antolini(right_order[::-1], grid, time, event, ties="strict") == 0.0
    assert concordance_antolini(right_order[::-1], grid, time, event) == pytest.approx(0.5 / 6)
    for ties in ("adjusted", "strict"):
        # no events: no comparable pair
        assert np.isnan(concordance_antolini(right_order, grid, time, np.zeros(4, int), ties=ties))
    # identical curves: every comparable pair is a tie, which counts 1/2 (the default, pycox
    # adj_antolini) or as not concordant (strict Antolini, the paper's code)
    constant = np.tile(right_order[:1], (4, 1))
    assert concordance_antolini(constant, grid, time, event) == 0.5
    assert concordance_antolini(constant, grid, time, event, ties="strict") == 0.0
    with pytest.raises(ValueError, match="ties must be"):
        concordance_antolini(constant, grid, time, event, ties="loose")


def test_antolini_by_hand_with_one_discordant_pair():
    time = np.array([1.0, 2.0, 3.0])
    event = np.array([1, 1, 0])
    grid = np.array([1.0, 2.0, 3.0])
    # patient 1 looks safer than patient 2 at t=2 although 1 dies first -> pair (1, 2) discordant
    surv = np.array([[0.2, 0.1, 0.1], [0.9, 0.8, 0.7], [0.8, 0.6, 0.5]])
    # comparable: (0,1), (0,2), (1,2); concordant: S0(1)=.2<.9 yes, .2<.8 yes, S1(2)=.8<.6 no
    for ties in ("adjusted", "strict"):
        assert concordance_antolini(surv, grid, time, event, interpolation="step", ties=ties) == pytest.approx(2 / 3)


@pytest.mark.parametrize("interpolation", ["step", "linear"])
def test_antolini_matches_pycox(interpolation):
    c = _cohort(seed=3)
    ours = concordance_antolini(c["surv"], c["cuts"], c["time"], c["event"], interpolation=interpolation)
    if interpolation == "step":
        surv_df = pd.DataFrame(c["surv"].T, index=c["cuts"])  # pycox steps='post' on the cut grid
    else:
        # the linear curve tabulated at every patient's time: pycox then reads it exactly
        grid = np.unique(np.concatenate([c["cuts"], c["time"]]))
        surv_df = pd.DataFrame(interpolate_survival(c["surv"], c["cuts"], grid, "linear").T, index=grid)
    theirs = EvalSurv(surv_df, c["time"], c["event"], censor_surv=None).concordance_td("antolini")
    assert concordance_antolini(c["surv"], c["cuts"], c["time"], c["event"], interpolation=interpolation,
                                ties="strict") == pytest.approx(theirs, abs=1e-12)
    adjusted = EvalSurv(surv_df, c["time"], c["event"], censor_surv=None).concordance_td("adj_antolini")
    assert ours == pytest.approx(adjusted, abs=1e-12)
    assert 0.6 < ours < 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adjusted_antolini_matches_pycox_with_tied_predictions(seed):
    """Predictions from a handful of distinct curves (what a forest with big leaves gives): many
    tied pairs, each 1/2, as pycox's adj_antolini counts them (continuous times: no tied times)."""
    rng = np.random.default_rng(seed)
    n = 80
    time = rng.exponential(3.0, n)
    event = (rng.random(n) < 0.6).astype(int)
    grid = np.linspace(0.5, 9.0, 12)
    curves = np.sort(rng.random((4, len(grid))), axis=1)[:, ::-1]
    surv = curves[rng.integers(0, 4, n)]
    at = np.unique(np.concatenate([grid, time]))
    surv_df = pd.DataFrame(interpolate_survival(surv, grid, at, "step").T, index=at)
    theirs = EvalSurv(surv_df, time, event, censor_surv=None)
    assert concordance_antolini(surv, grid, time, event, interpolation="step") == pytest.approx(
        theirs.concordance_td("adj_antolini"), abs=1e-12)
    assert concordance_antolini(surv, grid, time, event, interpolation="step", ties="strict") == pytest.approx(
        theirs.concordance_td("antolini"), abs=1e-12)
    flat = np.tile(curves[:1], (n, 1))                 # one curve for everyone
    flat_df = pd.DataFrame(interpolate_survival(flat, grid, at, "step").T, index=at)
    assert EvalSurv(flat_df, time, event, censor_surv=None).concordance_td("adj_antolini") == pytest.approx(0.5)
    assert concordance_antolini(flat, grid, time, event, interpolation="step") == pytest.approx(0.5)


def test_constant_predictions_score_one_half_and_are_flagged():
    c = _cohort(seed=11)
    flat = np.tile(c["surv"][:1], (len(c["time"]), 1))
    result = evaluate(flat, c["cuts"], c["time"], c["event"], c["train_time"], c["train_event"])
    assert result["c_index"] == pytest.approx(0.5) and result["c_index_strict"] == 0.0
    assert result["c_index_harrell"] == pytest.approx(0.5)
    assert result["constant_predictions"] == 1.0
    assert evaluate(c["surv"], c["cuts"], c["time"], c["event"], c["train_time"],
                    c["train_event"])["constant_predictions"] == 0.0


def test_linear_interpolation_removes_bin_ties():
    c = _cohort(seed=4)
    step = concordance_antolini(c["surv"], c["cuts"], c["time"], c["event"], interpolation="step")
    linear = concordance_antolini(c["surv"], c["cuts"], c["time"], c["event"], interpolation="linear")
    harrell = concordance_harrell(c["risk"], c["time"], c["event"])
    assert linear > step
    assert abs(linear - harrell) < 0.05


def test_harrell_known_answers_and_ties():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 1, 0])
    assert concordance_harrell([4, 3, 2, 1], time, event) == 1.0
    assert concordance_harrell([1, 2, 3, 4], time, event) == 0.0
    assert concordance_harrell([1, 1, 1, 1], time, event) == 0.5


def test_harrell_matches_sksurv_with_tied_times_and_risks():
    rng = np.random.default_rng(5)
    time = rng.integers(1, 15, 300).astype(float)     # many tied times
    event = rng.integers(0, 2, 300)
    risk = rng.integers(0, 6, 300).astype(float)      # many tied risks
    ours = concordance_harrell(risk, time, event)
    theirs = concordance_index_censored(event.astype(bool), time, risk)[0]
    assert ours == pytest.approx(theirs, abs=1e-12)


# ----------------------------------------------------------------------------- Brier and IBS
def test_brier_known_answers_without_censoring():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4, int)
    grid = np.array([0.5, 1.5, 2.5, 3.5, 4.5])
    at = np.array([1.5, 2.5, 3.5])
    perfect = (grid[None, :] < time[:, None]).astype(float)   # S_i(t) = 1 before death, 0 after
    np.testing.assert_allclose(brier_ipcw(perfect, grid, time, event, time, event, at, "step"), 0.0)
    assert integrated_brier_score(perfect, grid, time, event, time, event, grid=at, interpolation="step") == 0.0
    half = np.full((4, 5), 0.5)
    np.testing.assert_allclose(brier_ipcw(half, grid, time, event, time, event, at), 0.25)
    assert integrated_brier_score(half, grid, time, event, time, event, grid=at) == pytest.approx(0.25)
    # predicting death at time 0 scores the fraction still alive: 3/4, 2/4, 1/4
    np.testing.assert_allclose(brier_ipcw(np.zeros((4, 5)), grid, time, event, time, event, at),
                               [0.75, 0.5, 0.25])


def test_brier_with_censoring_by_hand():
    train_time = np.array([1.0, 2.0, 2.0, 5.0])
    train_event = np.array([1, 1, 0, 1])
    # reverse KM: at t=2, at risk = 3 minus 1 death = 2, censored = 1 -> G(2) = 1/2
    np.testing.assert_allclose(censoring_survival(train_time, train_event, [0.5, 2.0, 3.0, 9.0]),
                               [1.0, 0.5, 0.5, 0.5])
    time = np.array([1.0, 3.0, 4.0])
    event = np.array([1, 0, 1])
    surv = np.array([[0.3], [0.6], [0.8]])            # constant curves on a one-point grid
    # at t=3.5: patient 0 died (0.3^2 / G(1) = 0.09), patient 1 censored (0), patient 2 alive
    # ((1-0.8)^2 / G(3.5) = 0.04 / 0.5 = 0.08) -> mean 0.17 / 3
    bs = brier_ipcw(surv, [0.0], time, event, train_time, train_event, [3.5])
    np.testing.assert_allclose(bs, [(0.09 + 0.08) / 3])


def test_censoring_survival_matches_sksurv():
    c = _cohort(seed=6)
    at = np.linspace(0, c["train_time"].max(), 57)
    cens = CensoringDistributionEstimator().fit(Surv.from_arrays(c["train_event"].astype(bool), c["train_time"]))
    np.testing.assert_allclose(censoring_survival(c["train_time"], c["train_event"], at), cens.predict_proba(at))


def test_brier_and_ibs_match_sksurv():
    c = _cohort(seed=7)
    train_y = Surv.from_arrays(c["train_event"].astype(bool), c["train_time"])
    keep = c["time"] < c["train_time"].max()     # sksurv's censoring KM is undefined beyond it
    test_y = Surv.from_arrays(c["event"][keep].astype(bool), c["time"][keep])
    grid = ibs_grid(c["time"][keep], c["train_time"])
    surv_at_grid = interpolate_survival(c["surv"][keep], c["cuts"], grid)
    ours_bs = brier_ipcw(c["surv"][keep], c["cuts"], c["time"][keep], c["event"][keep],
                         c["train_time"], c["train_event"], grid)
    _, theirs_bs = sksurv_brier_score(train_y, test_y, surv_at_grid, grid)
    np.testing.assert_allclose(ours_bs, theirs_bs, rtol=1e-12)
    ours_ibs = integrated_brier_score(c["surv"][keep], c["cuts"], c["time"][keep], c["event"][keep],
                                      c["train_time"], c["train_event"])
    theirs_ibs = sksurv_integrated_brier_score(train_y, test_y, surv_at_grid, grid)
    assert ours_ibs == pytest.approx(theirs_ibs, rel=1e-12)
    assert 0.0 < ours_ibs < 0.25


def test_brier_matches_pycox_ipcw_terms_at_single_times():
    """pycox weights deaths by G(t_i-) and divides by the sum of weights; with continuous times
    (no training censoring tied with a test death) its per-patient terms equal ours, so the
    Graf score is their sum over n."""
    c = _cohort(seed=8)
    at = np.quantile(c["time"], [0.25, 0.5, 0.75])
    train_grid = np.concatenate([[0.0], np.unique(c["train_time"])])
    g = censoring_survival(c["train_time"], c["train_event"], train_grid)
    n = c["time"].shape[0]
    censor_surv = np.tile(g[:, None], (1, n))
    surv_grid = np.unique(np.concatenate([c["cuts"], at]))
    surv_tab = interpolate_survival(c["surv"], c["cuts"], surv_grid).T
    scores, _ = pycox_ipcw.brier_score(at, c["time"], c["event"].astype(float), np.ascontiguousarray(surv_tab),
                                       censor_surv, surv_grid, train_grid, np.inf, False, "post", "post")
    ours = brier_ipcw(c["surv"], c["cuts"], c["time"], c["event"], c["train_time"], c["train_event"], at)
    np.testing.assert_allclose(ours, scores.sum(axis=1) / n, rtol=1e-10)


def test_ibs_grid_stays_inside_follow_up():
    time = np.arange(1.0, 101.0)
    grid = ibs_grid(time)
    assert grid.shape == (100,)
    assert grid[0] == pytest.approx(np.quantile(time, 0.1)) and grid[-1] == pytest.approx(np.quantile(time, 0.9))
    assert ibs_grid(time, train_time=np.array([50.0]))[-1] == 50.0


# ----------------------------------------------------------------------------- evaluate
def test_cs_score():
    assert cs_score(0.8, 0.2) == pytest.approx(0.8)
    assert cs_score(0.5, 0.25) == pytest.approx(0.625)


def test_evaluate_combines_the_metrics():
    c = _cohort(seed=9)
    result = evaluate(c["surv"], c["cuts"], c["time"], c["event"], c["train_time"], c["train_event"])
    assert set(result) == {"c_index", "c_index_strict", "c_index_harrell", "ibs", "cs_score", "constant_predictions"}
    assert result["c_index"] == pytest.approx(
        concordance_antolini(c["surv"], c["cuts"], c["time"], c["event"]), abs=1e-12)
    rmst = restricted_mean_survival(c["surv"], c["cuts"])
    assert result["c_index_harrell"] == pytest.approx(concordance_harrell(-rmst, c["time"], c["event"]), abs=1e-12)
    assert result["ibs"] == pytest.approx(integrated_brier_score(
        c["surv"], c["cuts"], c["time"], c["event"], c["train_time"], c["train_event"]), abs=1e-12)
    assert result["cs_score"] == pytest.approx(cs_score(result["c_index"], result["ibs"]))
    from_logits = evaluate(torch.tensor(c["logits"]), c["cuts"], c["time"], c["event"], c["train_time"],
                           c["train_event"], from_logits=True)
    for name in result:
        assert from_logits[name] == pytest.approx(result[name], abs=1e-12)
    with_risk = evaluate(c["surv"], c["cuts"], c["time"], c["event"], c["train_time"], c["train_event"],
                         risk=c["risk"])
    assert with_risk["c_index_harrell"] == pytest.approx(concordance_harrell(c["risk"], c["time"], c["event"]))


def test_evaluate_rejects_bad_inputs():
    c = _cohort(seed=10, n_test=20)
    args = (c["cuts"], c["time"], c["event"], c["train_time"], c["train_event"])
    with pytest.raises(ValueError, match="logits"):
        evaluate(c["logits"], *args)                          # logits passed as survival
    bad = c["surv"].copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(bad, *args)
    with pytest.raises(ValueError, match="rows"):
        evaluate(c["surv"][:-1], *args)
    with pytest.raises(ValueError, match="columns"):
        evaluate(c["surv"][:, :-1], *args)
    with pytest.raises(ValueError, match="negative"):
        evaluate(c["surv"], c["cuts"], -c["time"], c["event"], c["train_time"], c["train_event"])
    with pytest.raises(ValueError, match="0 \\(censored\\) or 1"):
        evaluate(c["surv"], c["cuts"], c["time"], c["event"] * 2, c["train_time"], c["train_event"])
    with pytest.raises(ValueError, match="interpolation"):
        evaluate(c["surv"], *args, interpolation="cubic")


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_weights_equal_metrics_on_the_resampled_patients():
    c = _cohort(seed=11, n_test=40)
    grid = ibs_grid(c["time"], c["train_time"])
    parts = metrics._evaluation_parts(c["surv"], c["cuts"], c["time"], c["event"], c["train_time"],
                                      c["train_event"], False, None, grid, "linear")
    picks = np.random.default_rng(0).integers(0, 40, 40)
    weights = np.bincount(picks, minlength=40).astype(float)[None, :]
    reweighted = parts.metrics(weights)
    rmst = restricted_mean_survival(c["surv"], c["cuts"])
    direct = evaluate(c["surv"][picks], c["cuts"], c["time"][picks], c["event"][picks], c["train_time"],
                      c["train_event"], grid=grid, risk=-rmst[picks])
    assert set(reweighted) == set(metrics.METRIC_NAMES)
    for name in metrics.METRIC_NAMES:
        assert reweighted[name][0] == pytest.approx(direct[name], abs=1e-12)


def test_bootstrap_ci_is_seeded_brackets_the_estimate_and_is_fast():
    c = _cohort(seed=12, n_test=200)
    args = (c["surv"], c["cuts"], c["time"], c["event"], c["train_time"], c["train_event"])
    start = clock.perf_counter()
    ci = bootstrap_ci(*args, n_boot=1000, seed=0)
    elapsed = clock.perf_counter() - start
    assert elapsed < 5.0
    point = evaluate(*args)
    for name, (estimate, low, high) in ci.items():
        assert estimate == pytest.approx(point[name])
        assert low < estimate < high
    assert ci["c_index"][2] - ci["c_index"][1] < 0.2
    assert bootstrap_ci(*args, n_boot=50, seed=3) == bootstrap_ci(*args, n_boot=50, seed=3)
    assert bootstrap_ci(*args, n_boot=50, seed=3) != bootstrap_ci(*args, n_boot=50, seed=4)


def test_bootstrap_skips_resamples_without_events():
    c = _cohort(seed=13, n_test=15)
    event = np.zeros(15, int)
    event[np.argsort(c["time"])[:2]] = 1    # two deaths: about 1 resample in 8 has none
    ci = bootstrap_ci(c["surv"], c["cuts"], c["time"], event, c["train_time"], c["train_event"], n_boot=300)
    assert all(np.isfinite(v).all() for v in ci.values())
    with pytest.raises(ValueError, match="comparable pairs"):
        bootstrap_ci(c["surv"], c["cuts"], c["time"], np.zeros(15, int), c["train_time"], c["train_event"])
