"""Pretraining with two DDP ranks (gloo on CPU): the engine's headline path, at tiny sizes.

* One step, two ranks, without Ray (``torch.distributed`` in two spawned processes): the engine's
  ``pretrain_step`` on a DDP-wrapped model, each rank on its half of a global batch, ends with the
  parameters a single process gets from the mean of the two halves' losses (what DDP's gradient
  averaging computes), drawing each half's masks from the generator that rank used.
* Ray Train with two workers (0.5 CPU each): ``train_job`` under ``TorchTrainer`` as the engine's
  worker loop runs it; the ranks end with identical parameters, and in every epoch the two ranks'
  patients are disjoint halves of the fold's training patients.
"""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

from impumae.train.pretrain_loop import PretrainConfig, make_optimizer, pretrain_step
from impumae.model.mae import MAEConfig, MultimodalMAE, draw_hidden_modalities
from impumae.modalities import ModalitySpec

SPECS = {"rna": ModalitySpec("rna", "tabular", (64,), patch=16, depth=1),
         "dna": ModalitySpec("dna", "tabular", (48,), patch=16, depth=1)}
TINY = dict(width=32, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64)
CFG = PretrainConfig(epochs=1, batch_size=8, lr=1e-2, mask_ratio=0.5, hide_modality_prob=0.25, seed=0)
HALF = 8


def _global_batch():
    g = torch.Generator().manual_seed(7)
    x = {"rna": torch.randn(2 * HALF, 64, generator=g), "dna": torch.randn(2 * HALF, 48, generator=g)}
    present = {"rna": torch.ones(2 * HALF, dtype=torch.bool), "dna": torch.rand(2 * HALF, generator=g) > 0.3}
    return x, present


def _model():
    torch.manual_seed(0)
    return MultimodalMAE(SPECS, MAEConfig.from_dict(TINY))


def _half(batch, rank):
    x, present = batch
    rows = slice(rank * HALF, (rank + 1) * HALF)
    return {n: v[rows] for n, v in x.items()}, {n: v[rows] for n, v in present.items()}


def _rank_generator(rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + rank)


def _ddp_rank(rank: int, world_size: int, init_file: str, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        optimizer = make_optimizer(model, CFG)
        x, present = _half(_global_batch(), rank)
        pretrain_step(model, x, present, optimizer, None, CFG, _rank_generator(rank), bf16=False)
        torch.save(model.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_one_ddp_step_on_two_ranks_matches_the_single_process_step(tmp_path):
    tmp_mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    model = _model()
    optimizer = make_optimizer(model, CFG)
    batch = _global_batch()
    losses = []
    for rank in range(2):  # the same draws, in the same order, as pretrain_step on that rank
        x, present = _half(batch, rank)
        g = _rank_generator(rank)
        hidden = draw_hidden_modalities(present, CFG.hide_modality_prob, g)
        losses.append(model(x, present, mask_ratio=CFG.mask_ratio, generator=g, hidden=hidden,
                            predict_missing=False).loss)
    optimizer.zero_grad()
    (sum(losses) / 2).backward()
    optimizer.step()
    reference = model.state_dict()
    before = _model().state_dict()

    moved = 0
    for name, value in reference.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)  # ranks identical
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(before[name], value))
    assert moved > len(reference) // 2  # the step changed most tensors: the comparison is not vacuous


# --- Ray Train, two workers ---------------------------------------------------------------------

def _recording_loop(config: dict):
    """The engine's worker loop for one job (``train_job`` with ``prepare_model``), recording which
    patients this rank's shard held in each epoch and the final parameters."""
    import ray.train
    import ray.train.torch

    from impumae.engine.pretrain_jobs import PretrainJob, train_job
    from impumae.train import pretrain_loop as loop
    from impumae.train.pretrain_loop import unwrap

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(1)
    seen, models = [], []
    original_shard = loop.ResidentData.shard

    def shard(self, seed, epoch, rank=0, world_size=1):
        order = original_shard(self, seed, epoch, rank, world_size)
        seen.append(self.rows[order].tolist())
        return order

    loop.ResidentData.shard = shard
    try:
        def wrap(model):
            models.append(ray.train.torch.prepare_model(model, move_to_device=True))
            return models[-1]
        job = PretrainJob.from_dict(config["job"])
        meta = train_job(job, config["storage"], ray.train.torch.get_device(), rank, world_size, wrap=wrap)
    finally:
        loop.ResidentData.shard = original_shard
    out = Path(config["out"])
    torch.save(unwrap(models[0]).state_dict(), out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "n_rows": len(meta["train_ids"])}))
    ray.train.report({"rank": rank})


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_two_workers_keep_identical_parameters_on_disjoint_halves(tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from impumae.data.synthetic import build_synthetic
    from impumae.data.cohort_view import load_cohort_arrays
    from impumae.engine.pretrain_jobs import PretrainJob

    cohort = str(build_synthetic(str(tmp_path / "tiny.zarr"), n_patients=120, seed=5, progress=False).url)
    model = dict(TINY, mlp_ratio=2.0)
    storage = str(tmp_path / "runs")
    ca = load_cohort_arrays(cohort, ("rna", "dna"))
    job = PretrainJob.for_subset(ca, ("rna", "dna"), 0, model, {"epochs": 2, "batch_size": 16, "lr": 1e-3}, seed=0)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        result = TorchTrainer(
            _recording_loop,
            train_loop_config={"job": job.to_dict(), "storage": storage, "out": str(tmp_path)},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="ddp-test", storage_path=str(tmp_path / "ray")),
        ).fit()
    finally:
        ray.shutdown()
    assert result.error is None, result.error

    params = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in params[0].items():
        assert torch.equal(value, params[1][name]), f"{name} differs between the ranks"
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    n_rows = seen[0]["n_rows"]
    assert len(seen[0]["seen"]) == len(seen[1]["seen"]) == 2  # one shard per epoch
    for epoch in range(2):
        a, b = set(seen[0]["seen"][epoch]), set(seen[1]["seen"][epoch])
        assert a | b == set(range(n_rows)), "together the ranks saw every training patient"
        padding = 2 * len(seen[0]["seen"][epoch]) - n_rows  # DistributedSampler-style padding (0 or 1)
        assert len(a & b) == padding and abs(len(a) - len(b)) <= 1
