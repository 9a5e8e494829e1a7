"""TimeBins and the logistic-hazard NLL: known answers and cross-checks against pycox."""

import json

import numpy as np
import pytest
import torch
from pycox.models import LogisticHazard
from pycox.models.loss import nll_logistic_hazard as pycox_nll_logistic_hazard

from impumae.survival.bins import TimeBins, check_labels
from impumae.survival.losses import nll_logistic_hazard


# ----------------------------------------------------------------------------- TimeBins
def test_cuts_are_equidistant_from_zero_to_training_max():
    bins = TimeBins(n_bins=5).fit(np.array([1.0, 4.0, 2.0]))
    np.testing.assert_allclose(bins.cuts, [0.0, 1.0, 2.0, 3.0, 4.0])


def test_events_round_up_censorings_round_down_by_hand():
    bins = TimeBins(n_bins=5).fit(np.array([4.0]))          # cuts 0, 1, 2, 3, 4
    time = np.array([0.0, 0.5, 1.0, 1.5, 0.5, 1.0, 1.5, 4.0, 4.0])
    event = np.array([1, 1, 1, 1, 0, 0, 0, 1, 0])
    idx, ev = bins.transform(time, event)
    np.testing.assert_array_equal(idx, [0, 1, 1, 2, 0, 1, 1, 4, 4])
    np.testing.assert_array_equal(ev, event.astype(np.float32))
    assert idx.dtype == np.int64 and ev.dtype == np.float32


def test_times_beyond_training_max_are_censored_in_last_bin():
    bins = TimeBins(n_bins=5).fit(np.array([4.0]))
    idx, ev = bins.transform(np.array([4.5, 10.0, 7.0]), np.array([1, 1, 0]))
    np.testing.assert_array_equal(idx, [4, 4, 4])
    np.testing.assert_array_equal(ev, [0.0, 0.0, 0.0])


@pytest.mark.parametrize("n_bins", [5, 20])
def test_matches_pycox_label_transform(n_bins):
    rng = np.random.default_rng(1)
    train_time = rng.exponential(3.0, 300)
    train_event = rng.integers(0, 2, 300)
    # evaluation times include exact cut points, zero and times beyond the training max
    bins = TimeBins(n_bins=n_bins).fit(train_time)
    test_time = np.concatenate([rng.exponential(3.0, 200), bins.cuts, [0.0, train_time.max() * 1.5]])
    test_event = rng.integers(0, 2, test_time.shape[0])

    labtrans = LogisticHazard.label_transform(n_bins)
    pycox_train = labtrans.fit_transform(train_time, train_event)
    np.testing.assert_allclose(bins.cuts, labtrans.cuts)
    for ours, theirs in zip(bins.transform(train_time, train_event), pycox_train):
        np.testing.assert_array_equal(ours, theirs)
    pycox_test = labtrans.transform(test_time, test_event)
    ours_test = bins.transform(test_time, test_event)
    np.testing.assert_array_equal(ours_test[0], pycox_test[0])
    np.testing.assert_array_equal(ours_test[1], pycox_test[1])


def test_serialisation_round_trip_through_json():
    bins = TimeBins(n_bins=20).fit(np.array([0.3, 7.25, 2.0]))
    restored = TimeBins.from_dict(json.loads(json.dumps(bins.to_dict())))
    np.testing.assert_array_equal(restored.cuts, bins.cuts)
    time, event = np.array([0.1, 3.3, 9.0]), np.array([1, 0, 1])
    for a, b in zip(restored.transform(time, event), bins.transform(time, event)):
        np.testing.assert_array_equal(a, b)
    assert TimeBins.from_dict(TimeBins(7).to_dict()).cuts is None


def test_unfitted_and_bad_inputs_raise_clear_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        TimeBins().transform(np.array([1.0]), np.array([1]))
    with pytest.raises(ValueError, match="n_bins"):
        TimeBins(n_bins=1)
    bins = TimeBins(3).fit(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="negative"):
        bins.transform(np.array([-1.0]), np.array([1]))
    with pytest.raises(ValueError, match="0 \\(censored\\) or 1"):
        bins.transform(np.array([1.0]), np.array([2]))
    with pytest.raises(ValueError, match="2 values but event has 1"):
        bins.transform(np.array([1.0, 2.0]), np.array([1]))
    with pytest.raises(ValueError, match="NaN"):
        TimeBins().fit(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="> 0"):
        TimeBins().fit(np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="invalid cuts"):
        TimeBins.from_dict({"n_bins": 3, "cuts": [0.0, 2.0, 1.0]})


def test_check_labels_accepts_booleans_and_torch():
    time, event = check_labels(torch.tensor([1.0, 2.0]), np.array([True, False]))
    np.testing.assert_array_equal(event, [1, 0])
    assert time.dtype == np.float64


# ----------------------------------------------------------------------------- NLL
def test_nll_by_hand_on_two_patients():
    # patient 0: died in bin 1; patient 1: censored in bin 2
    logits = torch.tensor([[0.0, 1.0, 5.0], [-1.0, 0.0, 2.0]])
    idx = torch.tensor([1, 2])
    event = torch.tensor([1.0, 0.0])
    h = torch.sigmoid(logits)
    loss_0 = -(torch.log(1 - h[0, 0]) + torch.log(h[0, 1]))
    loss_1 = -(torch.log(1 - h[1, 0]) + torch.log(1 - h[1, 1]) + torch.log(1 - h[1, 2]))
    per_patient = nll_logistic_hazard(logits, idx, event, reduction="none")
    torch.testing.assert_close(per_patient, torch.stack([loss_0, loss_1]))
    torch.testing.assert_close(nll_logistic_hazard(logits, idx, event), (loss_0 + loss_1) / 2)
    torch.testing.assert_close(nll_logistic_hazard(logits, idx, event, reduction="sum"), loss_0 + loss_1)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_matches_pycox_on_random_inputs(reduction):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 20, generator=gen, dtype=torch.float64) * 3
    idx = torch.randint(0, 20, (64,), generator=gen)
    event = torch.randint(0, 2, (64,), generator=gen).double()
    ours = nll_logistic_hazard(logits, idx, event, reduction=reduction)
    theirs = pycox_nll_logistic_hazard(logits, idx, event, reduction=reduction)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_nll_gradient_flows_and_matches_pycox():
    gen = torch.Generator().manual_seed(1)
    logits_a = torch.randn(16, 20, generator=gen, requires_grad=True)
    logits_b = logits_a.detach().clone().requires_grad_(True)
    idx = torch.randint(0, 20, (16,), generator=gen)
    event = torch.randint(0, 2, (16,), generator=gen).bool()
    nll_logistic_hazard(logits_a, idx, event).backward()
    pycox_nll_logistic_hazard(logits_b, idx.view(-1, 1), event.float()).backward()
    torch.testing.assert_close(logits_a.grad, logits_b.grad, atol=1e-6, rtol=0)


def test_nll_rejects_bad_shapes_and_indices():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="idx must lie"):
        nll_logistic_hazard(logits, torch.tensor([0, 3]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="2 rows"):
        nll_logistic_hazard(logits, torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="reduction"):
        nll_logistic_hazard(logits, torch.tensor([0, 1]), torch.tensor([1.0, 0.0]), reduction="avg")


def test_baseline_hazard_is_kaplan_meier_on_binned_times_and_minimises_the_loss():
    from sksurv.nonparametric import kaplan_meier_estimator

    rng = np.random.default_rng(3)
    time = rng.exponential(2.0, 300)
    event = (rng.random(300) < 0.6).astype(int)
    bins = TimeBins(20).fit(time)
    logits = bins.baseline_hazard_logits(time, event)
    surv = np.cumprod(1 - 1 / (1 + np.exp(-logits)))
    # scikit-survival's Kaplan-Meier on the binned times (a death at bin j before a censoring at j)
    idx, ev = bins.transform(time, event)
    km_t, km_s = kaplan_meier_estimator(ev.astype(bool), idx + np.where(ev == 1, 0.0, 0.5))
    expected = np.array([km_s[km_t <= j + 0.5][-1] if (km_t <= j + 0.5).any() else 1.0 for j in range(20)])
    np.testing.assert_allclose(surv, expected, atol=2e-4)   # eps clipping of empty bins
    # no intercept-only model does better on the loss (it is the maximum-likelihood fit)
    at = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = nll_logistic_hazard(at.expand(300, 20), torch.as_tensor(idx), torch.as_tensor(ev))
    loss.backward()
    assert at.grad.abs().max() < 1e-3
