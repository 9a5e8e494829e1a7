"""The fine-tuning loop: a validation curve per epoch, no epoch picked inside, and ``stop_after``
reproducing the first epochs of a full run on the same learning-rate schedule."""
import numpy as np
import pytest
import torch

from impumae.engine.cohort_view import Batchable
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
