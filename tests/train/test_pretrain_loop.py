"""Single-process pretraining: loss falls, exact resume, weights-only checkpoints, rank shards."""
import numpy as np
import pytest
import torch

from impumae.train import checkpoint
from impumae.train.pretrain_loop import (PretrainConfig, ResidentData, check_maskable, epoch_generator, make_optimizer,
                                         make_scheduler, pretrain, pretrain_epoch, recon_vs_mean,
                                         training_patch_means)
from impumae.modalities import ModalitySpec
from impumae.model import MAEConfig, MultimodalMAE

SPECS = {
    "rna": ModalitySpec("rna", "tabular", (64,), patch=16, depth=1),
    "dna": ModalitySpec("dna", "tabular", (48,), patch=16, depth=1),
    "mri": ModalitySpec("mri", "volume", (8, 8, 8), patch=4, depth=1),
    "wsi": ModalitySpec("wsi", "image", (2, 16, 16, 3), dtype="uint8", patch=8, depth=1),
}
TINY = dict(width=32, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64)


def cohort(n=48, seed=0):
    """Modalities driven by one shared latent (so they predict each other), ~25% missing each."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))

    def view(shape):
        w = rng.normal(size=(3, int(np.prod(shape))))
        return (z @ w).reshape(n, *shape) + 0.1 * rng.normal(size=(n, *shape))

    x = {"rna": view((64,)).astype(np.float32), "dna": view((48,)).astype(np.float32),
         "mri": view((8, 8, 8)).astype(np.float32),
         "wsi": np.clip(128 + 40 * view((2, 16, 16, 3)), 0, 255).astype(np.uint8)}
    present = {m: rng.random(n) > 0.25 for m in x}
    for m in x:  # a missing modality holds NaN (floats) / 0 (uint8), as in the cohort store
        if x[m].dtype == np.float32:
            x[m][~present[m]] = np.nan
        else:
            x[m][~present[m]] = 0
    return x, present


def model(seed=0):
    torch.manual_seed(seed)
    return MultimodalMAE(SPECS, MAEConfig(**TINY))


def test_loss_falls_over_a_few_epochs():
    x, present = cohort()
    data = ResidentData(x, present)
    cfg = PretrainConfig(epochs=12, batch_size=8, lr=3e-3, seed=0, hide_modality_prob=0.0)  # token masking alone
    history = pretrain(model(), data, cfg)
    assert len(history) == 12 and all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], [round(h["loss"], 3) for h in history]
    assert set(history[0]) == {"epoch", "loss", "loss_rna", "loss_dna", "loss_mri", "loss_wsi"}


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    x, present = cohort(30)
    data = ResidentData(x, present)
    cfg = PretrainConfig(epochs=4, batch_size=8, lr=2e-3, warmup_epochs=1, seed=3)
    straight = model(0)
    history = pretrain(straight, data, cfg, checkpoint_path=str(tmp_path / "a.pt"))

    class Stop(Exception):
        pass

    def stop_after_second(epoch, losses):
        if epoch == 1:
            raise Stop

    path = str(tmp_path / "b.pt")
    with pytest.raises(Stop):
        pretrain(model(0), data, cfg, checkpoint_path=path, on_epoch_end=stop_after_second)
    assert checkpoint.load_resume(path)["epoch"] == 1
    resumed = model(7)  # different initial weights: everything must come from the checkpoint
    torch.manual_seed(123)  # and from the per-epoch generators, not the ambient RNG state
    history_resumed = pretrain(resumed, data, cfg, checkpoint_path=path)
    assert [h["epoch"] for h in history_resumed] == [0, 1, 2, 3]
    assert history_resumed == history
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_loads_weights_only_and_rebuilds_the_model(tmp_path):
    x, present = cohort(16)
    data = ResidentData(x, present)
    path = tmp_path / "sub" / "ckpt.pt"
    trained = model()
    pretrain(trained, data, PretrainConfig(epochs=1, batch_size=8), checkpoint_path=str(path))
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 0 and isinstance(state["rng"]["torch"], torch.Tensor)
    assert state["config"]["batch_size"] == 8 and state["specs"]["mri"]["kind"] == "volume"
    rebuilt = checkpoint.build_mae(checkpoint.load(str(path)))
    for (name, a), b in zip(trained.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left


def test_rank_shards_partition_the_patients():
    x, present = cohort(40)
    data = ResidentData(x, present)
    n = len(data)
    for world in (1, 2, 4):
        if n % world:
            continue
        shards = [data.shard(seed=0, epoch=5, rank=r, world_size=world) for r in range(world)]
        merged = torch.cat(shards)
        assert sorted(merged.tolist()) == list(range(n))  # disjoint and complete
    # uneven: equal shard sizes (DDP needs the same number of steps), every patient covered
    shards = [data.shard(seed=0, epoch=5, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and set(torch.cat(shards).tolist()) == set(range(n))
    assert not torch.equal(data.shard(0, 1), data.shard(0, 2))  # reshuffled each epoch
    batches = list(data.batches(batch_size=7, seed=0, epoch=5, rank=1, world_size=2))
    assert sum(len(p["rna"]) for _, p in batches) == len(data.shard(0, 5, 1, 2))


def test_resident_data_keeps_patients_with_a_tokenised_modality_and_zeroes_missing():
    x, present = cohort(20)
    for m in present:
        present[m][[3, 7]] = False
    data = ResidentData(x, present)
    assert len(data) == 20 - 2 - int(sum(~np.any([present[m] for m in present], axis=0)[i] for i in range(20) if i not in (3, 7)))
    assert 3 not in data.rows.tolist() and 7 not in data.rows.tolist()
    for m in data.names:
        assert torch.isfinite(data.x[m].float()).all()
    bad = {m: v.copy() for m, v in x.items()}
    i = int(np.flatnonzero(present["rna"])[0])
    bad["rna"][i, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ResidentData(bad, present)


def test_pretrain_epoch_returns_mean_losses_and_steps_the_schedule():
    x, present = cohort(20)
    data = ResidentData(x, present)
    net = model()
    cfg = PretrainConfig(epochs=2, batch_size=8)
    opt = make_optimizer(net, cfg)
    sched = make_scheduler(opt, cfg, data.num_batches(cfg.batch_size))
    losses = pretrain_epoch(net, data, opt, sched, cfg, epoch_generator(0, 0, 0, data.device))
    assert losses["loss"] == pytest.approx(sum(losses[f"loss_{m}"] for m in SPECS), rel=1e-5)
    assert sched.last_epoch == data.num_batches(8)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3, rel=1e-6)  # half-way down the cosine


# ---------------------------------------------------------------------------------------------
# recon_vs_mean: validation reconstruction against the training mean
# ---------------------------------------------------------------------------------------------

class ReconstructsWith(torch.nn.Module):
    """Wraps a MAE; its forward returns ``make(output)`` as every modality's prediction."""

    def __init__(self, mae, make):
        super().__init__()
        self.mae, self.make = mae, make
        self.names, self.specs, self.kinds = mae.names, mae.specs, mae.kinds

    def prepare_input(self, *args, **kwargs):
        return self.mae.prepare_input(*args, **kwargs)

    def value_mask(self, name):
        return self.mae.value_mask(name)

    def forward(self, *args, **kwargs):
        out = self.mae(*args, **kwargs)
        out.pred = {n: self.make(n, out) for n in out.pred}
        return out


def resident(x, present):
    data = ResidentData(x, present)
    return data.x, data.present


def test_recon_vs_mean_is_one_for_the_training_mean_and_zero_for_a_perfect_reconstruction():
    x, present = cohort(48)
    train_x, train_present = resident({m: v[:32] for m, v in x.items()}, {m: v[:32] for m, v in present.items()})
    val_x, val_present = resident({m: v[32:] for m, v in x.items()}, {m: v[32:] for m, v in present.items()})
    mae = model()
    means = training_patch_means(mae, train_x, train_present)
    predicts_mean = ReconstructsWith(mae, lambda n, out: means[n].expand_as(out.target[n]).clone())
    perfect = ReconstructsWith(mae, lambda n, out: out.target[n].clone())
    as_mean = recon_vs_mean(predicts_mean, val_x, val_present, means, mask_ratio=0.5)
    assert as_mean == pytest.approx({m: 1.0 for m in SPECS}, abs=1e-5)
    assert recon_vs_mean(perfect, val_x, val_present, means, mask_ratio=0.5) == pytest.approx({m: 0.0 for m in SPECS}, abs=1e-6)
    # an untrained model is scored, deterministically (the same fixed mask every call)
    untrained = recon_vs_mean(mae, val_x, val_present, means, mask_ratio=0.5)
    assert all(np.isfinite(v) and v > 0 for v in untrained.values())
    assert recon_vs_mean(mae, val_x, val_present, means, mask_ratio=0.5) == untrained


def test_training_patch_means_are_the_mean_of_present_training_patches():
    x, present = cohort(32)
    train_x, train_present = resident(x, present)
    mae = model()
    means = training_patch_means(mae, train_x, train_present)
    mri = torch.as_tensor(x["mri"][present["mri"]])
    expected = mae.kinds["mri"].patchify(SPECS["mri"], mri).mean(0)
    assert torch.allclose(means["mri"], expected, atol=1e-5)
    wsi = torch.as_tensor(x["wsi"][present["wsi"]]).float().div(255).reshape(-1, 16, 16, 3)
    assert torch.allclose(means["wsi"], mae.kinds["wsi"].patchify(SPECS["wsi"], wsi).mean(0), atol=1e-5)


def test_recon_vs_mean_excludes_visible_tokens_and_missing_samples():
    x, present = cohort(48)
    val_x, val_present = resident(x, present)
    mae = model()
    means = training_patch_means(mae, val_x, val_present)

    def wrong_where_not_counted(name, out):
        # the target on counted tokens, garbage on visible tokens and on missing samples
        counted = out.counted[name][:, :, None]
        return torch.where(counted, out.target[name], torch.full_like(out.target[name], 1e3))
    scores = recon_vs_mean(ReconstructsWith(mae, wrong_where_not_counted), val_x, val_present, means, mask_ratio=0.5)
    assert scores == pytest.approx({m: 0.0 for m in SPECS}, abs=1e-6)
    # and only present samples are scored: a modality nobody in the set has is NaN
    nobody = {**val_present, "dna": torch.zeros_like(val_present["dna"])}
    assert np.isnan(recon_vs_mean(mae, val_x, nobody, means, mask_ratio=0.5)["dna"])


def test_pretrain_merges_evaluations_into_the_history_every_few_epochs():
    x, present = cohort(24)
    data = ResidentData(x, present)
    cfg = PretrainConfig(epochs=5, batch_size=8, seed=0)
    history = pretrain(model(), data, cfg, evaluate=lambda epoch: {"score": float(epoch)}, evaluate_every=2)
    assert [h.get("score") for h in history] == [None, 1.0, None, 3.0, 4.0]


def test_check_maskable_refuses_too_few_tokens_and_a_mask_that_masks_nothing():
    one_token = {"rna": ModalitySpec("rna", "tabular", (76,), patch=512, depth=2)}
    with pytest.raises(ValueError, match=r"'rna' \(76 features, patch 512\) has 1 token.*--patch rna=P"):
        check_maskable(one_token, ["rna"], mask_ratio=0.5)
    eight = {"rna": ModalitySpec("rna", "tabular", (76,), patch=10, depth=2)}
    check_maskable(eight, ["rna"], mask_ratio=0.5)
    with pytest.raises(ValueError, match=r"'rna' \(76 features, patch 10\) has 8 token.*mask ratio 0.05 masks none"):
        check_maskable(eight, ["rna"], mask_ratio=0.05)


def test_cross_linear_ridge_is_sklearns_ridge_on_the_pretraining_patients_and_held_fixed(tmp_path):
    """cross_linear="ridge": before the first epoch each map is set to StandardScaler + RidgeCV fitted on
    the pretraining patients who have the modality and a source (the same prediction, cross-checked), and
    training leaves it there; a resumed run does not refit it."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from impumae.train.imputers import RIDGE_ALPHAS

    x, present = cohort(60)
    tab = {m: SPECS[m] for m in ("rna", "dna")}
    x, present = {m: x[m] for m in tab}, {m: present[m] for m in tab}
    data = ResidentData(x, present)
    torch.manual_seed(0)
    mae = MultimodalMAE(tab, MAEConfig(**TINY, cross_linear="ridge"))
    assert not any(p.requires_grad for p in mae.cross_linear.parameters())
    cfg = PretrainConfig(epochs=2, batch_size=8, lr=3e-3, seed=0)
    pretrain(mae, data, cfg, checkpoint_path=str(tmp_path / "ck.pt"))
    rows = np.flatnonzero(present["rna"] & present["dna"])            # dna is rna's only source
    inputs = np.concatenate([x["dna"][rows], np.ones((len(rows), 1))], axis=1)
    reference = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, cv=KFold(5, shuffle=True, random_state=0)))
    reference.fit(inputs, x["rna"][rows])
    new = np.random.default_rng(1).normal(size=(7, 48)).astype(np.float32)
    ours = mae.cross_linear_prediction("rna", {"dna": torch.as_tensor(new)},
                                       {"dna": torch.ones(7, dtype=torch.bool)}).reshape(7, -1)[:, :64]
    expected = reference.predict(np.concatenate([new, np.ones((7, 1))], axis=1))
    np.testing.assert_allclose(ours.detach().numpy(), expected, rtol=1e-3, atol=1e-3)
    assert reference.score(inputs, x["rna"][rows]) > 0.5              # a real map (shared latent), not the mean
    before = {k: v.clone() for k, v in mae.cross_linear.state_dict().items()}
    resumed = MultimodalMAE(tab, MAEConfig(**TINY, cross_linear="ridge"))
    pretrain(resumed, data, PretrainConfig(epochs=3, batch_size=8, lr=3e-3, seed=0),
             checkpoint_path=str(tmp_path / "ck.pt"))                  # loads epoch 1, trains epoch 2: no refit
    for k, v in resumed.cross_linear.state_dict().items():
        assert torch.equal(v, before[k]), k
