"""The survival model's linear path (zero at start, its own L2) and its Kaplan-Meier start."""
import numpy as np
import pytest
import torch
from sksurv.nonparametric import kaplan_meier_estimator
from torch import nn

from impumae.data.cohort_view import Batchable
from impumae.model import MAEConfig, MultimodalMAE, SurvivalConfig, SurvivalModel
from impumae.modalities import ModalitySpec
from impumae.survival.bins import TimeBins
from impumae.survival.metrics import evaluate
from impumae.train.finetune_loop import FinetuneConfig, finetune
from tests.model.tiny_model import SPECS, TINY, random_inputs


def make_model(imputation="decoder", linear_path=False, linear_l2=0.0, seed=0, specs=SPECS, n_clinical=3, n_bins=20):
    torch.manual_seed(seed)
    mae = MultimodalMAE(specs, MAEConfig(**TINY))
    return SurvivalModel(mae, SurvivalConfig(imputation=imputation, n_clinical=n_clinical, fusion_heads=2,
                                             linear_path=linear_path, linear_l2=linear_l2, n_bins=n_bins))


def make_batch(b=6, seed=1):
    x, present, g = random_inputs(b, seed, present_rate=0.6)
    present["rna"][0], present["dna"][0] = True, False
    return x, present, torch.randn(b, 3, generator=g)


@pytest.mark.parametrize("imputation", ["decoder", "mask_token", "drop"])
def test_linear_path_is_exactly_zero_at_initialisation(imputation):
    x, present, clinical = make_batch()
    without = make_model(imputation).eval()
    with_path = make_model(imputation, linear_path=True, linear_l2=1.0).eval()
    assert torch.equal(with_path.linear.weight, torch.zeros(1, 250 + 128 + 3))   # tabular features + clinical
    assert torch.equal(without(x, present, clinical), with_path(x, present, clinical))


def test_linear_path_uses_measured_features_only_and_receives_gradient():
    model = make_model("decoder", linear_path=True).eval()
    x, present, clinical = make_batch()
    x["rna"][~present["rna"]] = float("nan")       # a missing modality's values never reach the risk
    x["dna"][~present["dna"]] = 1e6
    w = torch.randn(1, 250 + 128 + 3)
    with torch.no_grad():
        model.linear.weight.copy_(w)
    features = torch.cat([torch.where(present["rna"][:, None], x["rna"], 0.0),
                          torch.where(present["dna"][:, None], x["dna"], 0.0), clinical], dim=1)
    torch.testing.assert_close(model.linear_risk(x, present, clinical), features @ w.T)
    # the risk is added to every bin's logit
    with torch.no_grad():
        model.linear.weight.zero_()
    base = model(x, present, clinical)
    with torch.no_grad():
        model.linear.weight.copy_(w)
    shift = model(x, present, clinical) - base
    torch.testing.assert_close(shift, (features @ w.T).expand_as(shift), rtol=1e-4, atol=1e-3)
    # gradient at initialisation (w = 0)
    model = make_model("decoder", linear_path=True).train()
    model(x, present, clinical).sum().backward()
    assert model.linear.weight.grad is not None and model.linear.weight.grad.abs().sum() > 0


def test_penalty_and_parameter_groups():
    model = make_model(linear_path=True, linear_l2=0.5)
    assert model.penalty().item() == 0.0
    with torch.no_grad():
        model.linear.weight.fill_(2.0)
    assert model.penalty().item() == pytest.approx(0.5 * 4.0 * (250 + 128 + 3))
    groups = model.parameter_groups(weight_decay=0.1)
    assert groups[1] == {"params": [model.linear.weight], "weight_decay": 0.0}
    assert groups[0]["weight_decay"] == 0.1 and all(p is not model.linear.weight for p in groups[0]["params"])
    assert len(groups[0]["params"]) + 1 == len(model.trainable_parameters())
    assert model.parameter_groups(0.1, linear_lr=3e-3)[1]["lr"] == 3e-3
    plain = make_model()
    assert plain.penalty().item() == 0.0
    assert [p for g in plain.parameter_groups(0.1) for p in g["params"]] == plain.trainable_parameters()


def test_a_kaplan_meier_start_predicts_the_training_kaplan_meier_curve():
    rng = np.random.default_rng(0)
    n, n_train = 120, 80
    time = rng.exponential(2.0, n).round(2) + 0.01
    event = (rng.random(n) < 0.7).astype(np.int64)
    train, val = np.arange(n_train), np.arange(n_train, n)
    bins = TimeBins(10).fit(time[train])
    specs = {"rna": ModalitySpec("rna", "tabular", (20,), patch=8, depth=1)}
    model = make_model("drop", linear_path=True, specs=specs, n_clinical=0, n_bins=10).eval()
    model.init_hazard_bias(bins.baseline_hazard_logits(time[train], event[train], eps=1e-9))
    nn.init.zeros_(model.head.weight)
    x = {"rna": torch.randn(len(val), 20)}
    logits = model(x, {"rna": torch.ones(len(val), dtype=torch.bool)}).detach().double().numpy()
    assert np.allclose(logits, logits[:1])            # one curve for every patient
    # the training Kaplan-Meier curve on the binned times, computed independently
    idx, binned_event = bins.transform(time[train], event[train])
    km_times, km_surv = kaplan_meier_estimator(binned_event.astype(bool), bins.cuts[idx])
    at_cuts = np.array([km_surv[km_times <= c][-1] if (km_times <= c).any() else 1.0 for c in bins.cuts])
    km = evaluate(np.tile(at_cuts, (len(val), 1)), bins.cuts, time[val], event[val], time[train], event[train])
    model_metrics = evaluate(logits, bins.cuts, time[val], event[val], time[train], event[train], from_logits=True)
    assert model_metrics["ibs"] == pytest.approx(km["ibs"], abs=1e-6)


def test_finetune_with_km_init_starts_the_head_bias_at_the_kaplan_meier_hazard():
    data = linear_cohort(n=60, seed=1)
    cfg = FinetuneConfig(epochs=1, batch_size=16, lr=1e-12, freeze="none", imputation="drop", n_bins=6, km_init=True)
    result = finetune(tiny_mae(), data, None, cfg)
    expected = result.bins.baseline_hazard_logits(data.time, data.event)
    np.testing.assert_allclose(result.model.head.bias.detach().numpy(), expected, atol=1e-4)


def tiny_mae(n_features=16):
    specs = {"rna": ModalitySpec("rna", "tabular", (n_features,), patch=8, depth=1)}
    return MultimodalMAE(specs, MAEConfig(width=16, heads=2, decoder_width=16, decoder_depth=1, decoder_heads=2,
                                          decoder_mlp=32))


def linear_cohort(n, seed, n_features=16):
    """Times drawn with log-hazard = a linear function of the features (+ censoring)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, n_features)).astype(np.float32)
    beta = np.zeros(n_features)
    beta[:4] = [1.0, -1.0, 0.8, -0.6]
    death = rng.exponential(1.0 / np.exp(features @ beta))
    censor = rng.exponential(2.0, n)
    time, event = np.minimum(death, censor), (death <= censor).astype(np.int64)
    return Batchable(np.arange(n).astype(str), {"rna": torch.from_numpy(features)},
                     {"rna": torch.ones(n, dtype=torch.bool)}, None, time, event)


def test_the_linear_path_learns_a_linear_signal():
    train, val = linear_cohort(300, seed=2), linear_cohort(150, seed=3)
    cfg = FinetuneConfig(epochs=6, batch_size=32, lr=3e-3, freeze="none", imputation="drop", n_bins=10, seed=0,
                         km_init=True, linear_path=True, linear_l2=0.01)
    result = finetune(tiny_mae(), train, val, cfg)
    assert result.history[-1]["val_c_index"] > 0.7
    assert result.model.linear.weight.abs().sum() > 0


def test_a_linear_path_without_features_is_an_error():
    volume_only = {"mri": SPECS["mri"]}
    with pytest.raises(ValueError, match="linear_path needs features"):
        make_model("drop", linear_path=True, specs=volume_only, n_clinical=0)
