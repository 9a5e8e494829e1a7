"""Ray Train's worker loop reports once per pretraining job, not once per epoch.

Train V2's ``ray.train.report`` puts into a queue of size 1 that the controller drains every
health check (2 s): a report per epoch held each epoch for up to 2 s (the main command's
pretraining ran at 0.16x the in-process speed). Progress still reaches stdout every epoch."""
import types

import torch

from impumae.data.synthetic import build_synthetic
from impumae.engine import pretrain_jobs
from impumae.data.cohort_view import load_cohort_arrays
from impumae.engine.pretrain_jobs import PretrainJob


def test_worker_loop_reports_once_per_job_and_prints_every_epoch(tmp_path, monkeypatch, capsys):
    import ray.train
    import ray.train.torch

    cohort = str(build_synthetic(str(tmp_path / "tiny.zarr"), n_patients=60, seed=1, progress=False).url)
    model = dict(width=32, heads=2, mlp_ratio=2.0, decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64)
    storage = str(tmp_path / "runs")
    ca = load_cohort_arrays(cohort, ("rna", "dna"))
    jobs = [PretrainJob.for_subset(ca, ("rna", "dna"), fold, model, {"epochs": 4, "batch_size": 16}, seed=0)
            for fold in (0, 1)]

    reports = []
    context = types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kw: reports.append(metrics))
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    pretrain_jobs.worker_loop({"jobs": [j.to_dict() for j in jobs], "storage": storage})

    assert [r["job"] for r in reports] == [j.key for j in jobs]      # one report per job
    assert all(r["epoch"] == 3 and r["samples_per_s"] > 0 for r in reports)
    out = capsys.readouterr().out
    assert out.count("epoch ") == 8                                   # 4 progress lines per job
