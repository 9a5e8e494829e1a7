"""The fine-tuning loop: a validation curve per epoch, no epoch picked inside, and ``stop_after``
reproducing the first epochs of a full run on the same learning-rate schedule."""
import numpy as np
import pytest
import torch

from impumae.data.cohort_view import Batchable
from impumae.model import MAEConfig, MultimodalMAE
from impumae.train import finetune_loop
from impumae.train.finetune_loop import FinetuneConfig, finetune
from tests.model.tiny_model import SPECS, TINY

TABULAR = {m: SPECS[m] for m in ("rna", "dna")}


def patients(n: int, seed: int) -> Batchable:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = {m: torch.randn(n, *spec.shape, generator=g) for m, spec in TABULAR.items()}
    present = {"rna": torch.ones(n, dtype=torch.bool), "dna": torch.rand(n, generator=g) < 0.7}
    return Batchable(np.array([f"p{seed}-{i}" for i in range(n)]), x, present, None,
                     rng.exponential(3.0, n).astype(np.float32), (rng.random(n) < 0.6).astype(np.int8))


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    mae = MultimodalMAE(TABULAR, MAEConfig(**TINY))
    return mae, patients(48, seed=1), patients(24, seed=2)


def fit_recording_states(monkeypatch, mae, train, val, cfg):
    """``finetune`` with the model's state recorded after each epoch (when it scores ``val``)."""
    states = []
    scored = finetune_loop.predict_logits

    def recording(model, batch, *args, **kwargs):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return scored(model, batch, *args, **kwargs)

    monkeypatch.setattr(finetune_loop, "predict_logits", recording)
    return finetune(mae, train, val, cfg), states


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_after_is_the_first_epochs_of_the_full_run_on_its_schedule(data, monkeypatch):
    mae, train, val = data
    cfg = FinetuneConfig(epochs=3, batch_size=16, lr=1e-3, freeze="none", n_bins=6, seed=5)
    full, states = fit_recording_states(monkeypatch, mae, train, val, cfg)
    assert [row["epoch"] for row in full.history] == [1, 2, 3] and len(states) == 3
    assert all({"train_loss", "val_c_index", "val_ibs", "val_cs_score"} <= set(row) for row in full.history)
    # no best-state restore: the model returned is the one after the last epoch
    assert same_weights(full.model.state_dict(), states[2])

    stopped = finetune(mae, train, val, FinetuneConfig(**{**cfg.__dict__, "stop_after": 2}))
    assert stopped.history == full.history[:2]
    assert same_weights(stopped.model.state_dict(), states[1])

    # a 2-epoch schedule is another model: stop_after keeps the schedule of the curve it reproduces
    shorter = finetune(mae, train, val, FinetuneConfig(**{**cfg.__dict__, "epochs": 2}))
    assert not same_weights(shorter.model.state_dict(), states[1])


@pytest.mark.parametrize("stop_after", [0, 4])
def test_stop_after_outside_the_schedule_is_refused(data, stop_after):
    mae, train, val = data
    with pytest.raises(ValueError, match="stop_after"):
        finetune(mae, train, val, FinetuneConfig(epochs=3, stop_after=stop_after))


def test_the_linear_path_learns_at_its_own_learning_rate(data):
    """``linear_lr_mult`` scales the linear path's learning rate only: at 0 its weights stay at
    their zero start while the rest trains; at 10 they travel further than at 1."""
    mae, train, val = data
    base = dict(epochs=2, batch_size=16, lr=1e-3, freeze="none", imputation="drop", linear_path=True, km_init=True)
    still = finetune(mae, train, None, FinetuneConfig(**base, linear_lr_mult=0.0)).model
    assert torch.count_nonzero(still.linear.weight) == 0
    assert not torch.equal(still.head.weight, finetune(mae, train, None, FinetuneConfig(**base, linear_lr_mult=0.0, seed=1)).model.head.weight)
    slow = finetune(mae, train, None, FinetuneConfig(**base, linear_lr_mult=1.0)).model.linear.weight.norm()
    fast = finetune(mae, train, None, FinetuneConfig(**base, linear_lr_mult=10.0)).model.linear.weight.norm()
    assert 0 < slow < fast


def test_the_linear_warm_start_reaches_the_penalised_linear_optimum_and_touches_nothing_else(data):
    """``warm_start_linear_path``: the linear weights minimise mean NLL(rest + F w) + l2 ||w||^2 over
    the training patients (its gradient vanishes there; scipy's L-BFGS-B on the same objective
    agrees), the rest of the model and the global random stream are untouched."""
    from scipy.optimize import minimize

    from impumae.survival.bins import TimeBins
    from impumae.survival.losses import nll_logistic_hazard
    mae, train, _ = data
    cfg = FinetuneConfig(freeze="none", imputation="drop", linear_path=True, linear_l2=0.05, km_init=True, n_bins=6)
    model = finetune_loop.build_survival_model(mae, cfg, n_clinical=0)
    bins = TimeBins(cfg.n_bins).fit(train.time)
    model.init_hazard_bias(bins.baseline_hazard_logits(train.time, train.event))
    idx, event = (torch.as_tensor(a) for a in bins.transform(train.time, train.event))
    event = event.float()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("linear")}
    rng = torch.get_rng_state()
    finetune_loop.warm_start_linear_path(model, train, idx, event)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()
    with torch.no_grad():
        features = model.linear_features(train.x, train.present, train.clinical).double()
        w_found = model.linear.weight.detach().reshape(-1).double()
        model.linear.weight.zero_()
        rest = model(train.x, train.present, train.clinical).double()

    def objective(w):
        w = torch.as_tensor(w, dtype=torch.float64).requires_grad_(True)
        loss = nll_logistic_hazard(rest + (features @ w)[:, None], idx, event) + 0.05 * w.pow(2).sum()
        loss.backward()
        return float(loss.detach()), w.grad.numpy()
    value, grad = objective(w_found.numpy())
    assert np.abs(grad).max() < 1e-4
    reference = minimize(objective, np.zeros(len(w_found)), jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    assert value == pytest.approx(reference.fun, abs=1e-6)
    np.testing.assert_allclose(w_found.numpy(), reference.x, atol=1e-3)
    assert value < objective(np.zeros(len(w_found)))[0]


def test_fine_tuning_from_the_linear_warm_start_starts_at_the_linear_model(data):
    """With the warm start and a zero learning rate the fine-tuned model is the penalised linear one."""
    mae, train, val = data
    base = dict(epochs=1, batch_size=16, lr=0.0, freeze="none", imputation="drop", linear_path=True, linear_l2=0.05,
                km_init=True, n_bins=6)
    cold = finetune(mae, train, val, FinetuneConfig(**base)).model
    warm = finetune(mae, train, val, FinetuneConfig(**base, linear_warm_start=True)).model
    assert torch.count_nonzero(cold.linear.weight) == 0 and torch.count_nonzero(warm.linear.weight) > 0
    assert torch.equal(cold.head.weight, warm.head.weight)
