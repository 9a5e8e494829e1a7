"""Pretraining jobs: one MAE per (modalities, fold, configuration), run with Ray Train, cached.

A ``PretrainJob`` names everything that determines a pretrained model (cohort fingerprint,
tokenised modalities, fold, model and pretraining configuration, seed, the options of the
fold-fitted transforms stored with it); its hash is the cache key.
The finished model lives at ``<storage>/pretrain/<key>/mae.pt`` with its fold-fitted transforms and
the ids of the patients it saw, so every trial that needs it reuses it and a crashed search does
not redo it. Pending jobs run in ONE ``TorchTrainer`` (launching a trainer costs ~30 s, so the
jobs share it) with DDP over ``workers``; inside a job, epoch checkpoints let a restarted worker
group continue where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from impumae import storage
from impumae.data.store import Cohort
from impumae.data.transforms import TransformOptions
from impumae.data.cohort_view import (REFIT, CohortArrays, Population, StreamedBatchable, fit_transforms,
                                        load_cohort_arrays, make_batchable, population, split_subset)
from impumae.model.mae import MAEConfig, MultimodalMAE
from impumae.modalities import parse_subset
from impumae.train import checkpoint
from impumae.train.pretrain_loop import (PretrainConfig, ResidentData, StreamedData, check_maskable,
                                         data_patch_means, pretrain, recon_vs_mean)

CACHE_VERSION = 2  # part of every job's key: bump when what a checkpoint holds changes meaning


@dataclass(frozen=True)
class PretrainJob:
    cohort_url: str
    cohort_fingerprint: str
    modalities: tuple[str, ...]
    fold: int                      # REFIT (-1) = every non-holdout patient
    model: dict
    pretrain: dict
    seed: int = 0
    transforms: dict = field(default_factory=dict)  # TransformOptions fields: how the stored transforms were fitted
    split: dict = field(default_factory=dict)       # {} = the stored split; else nested CV's outer split

    @property
    def key(self) -> str:
        named = {**asdict(self), "cohort_url": None, "cache_version": CACHE_VERSION}
        if TransformOptions.from_dict(self.transforms) == TransformOptions():
            del named["transforms"]  # the default (standard scaling): the key of jobs from before the option
        if not self.split:
            del named["split"]       # the stored split: the key of jobs from before nested CV
        payload = json.dumps(named, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        where = f" outer {self.split['repeat']}-{self.split['outer_fold']}" if self.split else ""
        return f"{'+'.join(self.modalities)}{where} {'refit' if self.fold == REFIT else f'fold {self.fold}'}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainJob":
        return cls(**{**d, "modalities": tuple(d["modalities"])})

    @classmethod
    def for_subset(cls, ca: CohortArrays, subset, fold: int, model: dict, pretrain: dict, seed: int,
                   transforms: dict | None = None) -> "PretrainJob":
        """The pretraining a (subset, fold) needs: its tokenised modalities, that fold's training
        patients; ``transforms``: the options of its fold-fitted transforms (None: the defaults)."""
        tokenised, _ = split_subset(subset, ca.specs)
        return cls(ca.url, ca.fingerprint, tuple(tokenised), fold, dict(model), dict(pretrain), seed,
                   TransformOptions.from_dict(transforms).to_dict(), dict(ca.split))


def checkpoint_url(storage_url: str, key: str) -> str:
    """Where the pretrained MAE of the job with ``key`` lives."""
    return storage.join(storage_url, "pretrain", key, "mae.pt")


def job_for(cohort_url: str, subset_text: str, fold: int, model: dict, pretrain: dict,
            seed: int, transforms: dict | None = None) -> tuple[PretrainJob, CohortArrays, tuple[str, ...]]:
    """(job, cohort arrays, subset) of a (subset, fold) named on a command line, checked against
    the cohort: the same job a search builds for that (subset, fold)."""
    subset = parse_subset(subset_text, known=Cohort.open(cohort_url).modalities)
    ca = load_cohort_arrays(cohort_url, subset)
    if fold >= 0 and fold >= ca.n_folds:
        raise ValueError(f"--fold {fold}: the cohort stores folds 0..{ca.n_folds - 1}")
    if not split_subset(subset, ca.specs)[0]:
        raise ValueError(f"subset {subset_text!r} has no tokenised modality to pretrain")
    return PretrainJob.for_subset(ca, subset, fold, model, pretrain, seed, transforms), ca, subset


def check_job(job: PretrainJob) -> None:
    """Refuse, before anything starts, a job whose modalities masked pretraining cannot learn from
    (too few tokens, nothing masked; see :func:`check_maskable`), from the store's specs."""
    check_maskable(Cohort.open(job.cohort_url).specs, job.modalities, PretrainConfig(**job.pretrain).mask_ratio)


def train_job(job: PretrainJob, storage_url: str, device, rank: int = 0, world_size: int = 1,
              wrap=None, report=None) -> dict:
    """Run one pretraining job in this process (one DDP rank of it when ``world_size`` > 1)."""
    ca = load_cohort_arrays(job.cohort_url, job.modalities, job.split)
    train_idx = ca.train_indices(job.fold)
    rows = population(ca, job.modalities, train_idx, Population.PRETRAIN)
    transforms = fit_transforms(ca, job.modalities, train_idx, **job.transforms)
    batch = make_batchable(ca, job.modalities, transforms, rows, "cpu")
    data = StreamedData(batch, device) if isinstance(batch, StreamedBatchable) else ResidentData(batch.x, batch.present, device=device)
    specs = transforms.output_specs(ca.specs)
    cfg = PretrainConfig(**{**job.pretrain, "seed": job.seed})
    check_maskable(specs, job.modalities, cfg.mask_ratio)  # after the fold's feature filter
    torch.manual_seed(job.seed)
    model = MultimodalMAE(specs, MAEConfig.from_dict(job.model)).to(device)
    model = wrap(model) if wrap is not None else model
    # epoch checkpoints only on a local disk (one upload per epoch to an object store costs more than it saves)
    folder = storage.Location(storage_url)
    resume_url = folder.child("pretrain", job.key, "resume.pt").url if folder.is_local else None
    timer = {"start": time.perf_counter(), "epochs": 0, "ends": []}

    def on_epoch_end(epoch: int, losses: dict):
        timer["epochs"] += 1
        timer["ends"].append(time.perf_counter())
        if report is not None:
            report({"job": job.key, "label": job.label, "epoch": epoch, **losses})

    history = pretrain(model, data, cfg, checkpoint_path=resume_url, resume=True, on_epoch_end=on_epoch_end,
                       rank=rank, world_size=world_size,
                       evaluate=reconstruction_evaluator(job, ca, transforms, model, data, device) if rank == 0 else None,
                       evaluate_every=progress_every(cfg.epochs))
    seconds = time.perf_counter() - timer["start"]
    samples_per_s = len(data) * timer["epochs"] / seconds if timer["epochs"] and seconds > 0 else 0.0
    ends = timer["ends"]  # after the first epoch: the steady rate, without start-up and warm-up
    steady = len(data) * (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else 0.0
    meta = {"train_ids": [str(i) for i in ca.ids[rows]], "history": history, "samples_per_s": samples_per_s,
            "steady_samples_per_s": steady}
    if rank == 0:
        checkpoint.save_pretrained(checkpoint_url(storage_url, job.key), model, transforms, job.to_dict(),
                                   meta["train_ids"], history, samples_per_s, steady)
        if resume_url:
            storage.Location(resume_url).remove()
    return meta


RECON_VS_MEAN = "recon_vs_mean"              # validation patients of the fold
RECON_VS_MEAN_TRAIN = "recon_vs_mean_train"  # the refit's training patients (it has no validation patients)


def reconstruction_evaluator(job: PretrainJob, ca: CohortArrays, transforms, model, data: ResidentData, device):
    """``evaluate(epoch) -> {recon_vs_mean_<m>: value}`` for :func:`pretrain`: the fold's validation
    patients with any of the job's modalities (never holdout), scored against the training patients'
    mean patches. The refit has no validation patients: its training patients, as ``recon_vs_mean_train_<m>``."""
    if job.fold == REFIT:
        rows, prefix = ca.train_indices(job.fold), RECON_VS_MEAN_TRAIN
    else:
        rows, prefix = ca.validation_indices(job.fold), RECON_VS_MEAN
    rows = population(ca, job.modalities, rows, Population.PRETRAIN)
    if len(rows) == 0:
        return None
    scored = make_batchable(ca, job.modalities, transforms, rows, device)
    means = data_patch_means(model, data)
    mask_ratio = float(job.pretrain.get("mask_ratio", PretrainConfig.mask_ratio))

    def evaluate(epoch: int) -> dict:
        scores = recon_vs_mean(model, scored.x, scored.present, means, mask_ratio, seed=job.seed)
        return {f"{prefix}_{m}": v for m, v in scores.items()}
    return evaluate


def format_losses(row: dict) -> str:
    """``loss 1.2345  loss_rna 0.6  ...  recon_vs_mean rna 0.74 dna 0.80`` from a pretraining epoch's metrics."""
    parts = [f"loss {row['loss']:.4f}"] + [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("loss_")]
    scores: dict[str, list[str]] = {}
    for key, value in row.items():
        prefix = next((p for p in (RECON_VS_MEAN_TRAIN, RECON_VS_MEAN) if key.startswith(p + "_")), None)
        if prefix is not None:
            scores.setdefault(prefix, []).append(f"{key[len(prefix) + 1:]} {value:.2f}")
    parts += [f"{prefix} {' '.join(values)}" for prefix, values in scores.items()]
    return "  ".join(parts)


def progress_every(epochs: int, lines: int = 10) -> int:
    """Epochs between progress lines (and reconstruction evaluations): about ``lines`` per job."""
    return max(1, epochs // lines)


def epoch_progress(job: PretrainJob, echo=print, lines: int = 10):
    """A per-epoch callback that prints about ``lines`` progress lines per job (and the last epoch)."""
    epochs = int(job.pretrain.get("epochs", PretrainConfig.epochs))
    every = progress_every(epochs, lines)
    start = time.perf_counter()

    def show(row: dict) -> None:
        done = row["epoch"] + 1
        if done % every == 0 or done == epochs:
            echo(f"  pretrain {job.label}: epoch {done:>3}/{epochs}  {format_losses(row)}  "
                 f"({time.perf_counter() - start:.0f} s)")
    return show


def _write_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def worker_loop(config: dict):
    """Ray Train's train_loop_per_worker: every worker runs every pending job as one DDP rank."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    for job_dict in config["jobs"]:
        job = PretrainJob.from_dict(job_dict)
        if storage.exists(checkpoint_url(config["storage"], job.key)):
            continue
        wrap = (lambda m: ray.train.torch.prepare_model(m, move_to_device=True)) if world_size > 1 else None
        # sys.stdout, not print: Train's patched print in a worker tees to stdout *and* logs, printing twice
        live = config.get("live", True)
        show = epoch_progress(job, _write_line) if rank == 0 and live else (lambda row: None)

        # Progress goes to stdout per epoch; ray.train.report only once per job. Train V2's report
        # puts into a queue of size 1 that the controller drains every health check (2 s), so a
        # report per epoch held every epoch after the first for up to 2 s (0.16x the in-process speed).
        meta = train_job(job, config["storage"], device, rank, world_size, wrap=wrap, report=show)
        ray.train.report({"job": job.key, "label": job.label, "samples_per_s": meta["samples_per_s"],
                          **(meta["history"][-1] if meta["history"] else {})})


def task_loop(job_dict: dict, storage_url: str, use_gpu: bool, threads: int, live: bool = True) -> None:
    """One whole pretraining job in a Ray task: one process, no DDP (``workers=1``); progress lines on the
    worker's stdout when ``live``, none otherwise (the driver prints the job's :func:`summary_line`)."""
    torch.set_num_threads(max(1, threads))
    job = PretrainJob.from_dict(job_dict)
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    train_job(job, storage_url, device, report=epoch_progress(job, _write_line) if live else None)


def live_progress(jobs: list[PretrainJob]) -> bool:
    """Whether the jobs print progress lines while they train. Not those of nested CV's outer folds: the
    outer folds run at once and the lines of a Ray worker cannot carry the driver's outer-fold label (Ray
    prefixes them with the worker's pid), so there the driver prints one :func:`summary_line` per job
    through the search's (labelled) ``echo`` instead (issue #24: 200 of a nested run's 707 lines were
    unlabelled progress lines)."""
    return not any(job.split for job in jobs)


def summary_line(job: PretrainJob, state: dict) -> str:
    """The one line of a finished job (``state``: its checkpoint's payload): its last epoch, as the last
    progress line shows it, and its training time (patients x epochs / the samples per second it recorded)."""
    epochs = int(job.pretrain.get("epochs", PretrainConfig.epochs))
    history, rate = state["history"], state.get("samples_per_s") or 0.0
    last = f"  {format_losses(history[-1])}" if history else ""
    took = f"  ({len(state['train_ids']) * len(history) / rate:.0f} s)" if rate > 0 else ""
    return f"  pretrain {job.label}: epoch {len(history):>3}/{epochs}{last}{took}"


def run_pretraining(jobs: list[PretrainJob], storage_url: str, workers: int = 1, use_gpu: bool = False,
                    cpus_per_worker: float | None = None, echo=print) -> dict[str, dict]:
    """Make sure every job's checkpoint exists; returns ``{job.key: meta}`` (ids, history, ...).

    ``workers`` = 0 runs pending jobs one after another in this process (debugging, tiny tests);
    ``workers`` = 1 runs each job in a Ray task of its own, as many at once as the cluster has room
    for (one job needs no DDP, and a task starts in about a second where a ``TorchTrainer`` takes
    30-45 s); ``workers`` >= 2 runs the jobs as DDP ranks of one Ray Train ``TorchTrainer``.
    """
    unique = list({job.key: job for job in jobs}.values())
    pending = [job for job in unique if not storage.exists(checkpoint_url(storage_url, job.key))]
    for job in pending:
        check_job(job)
    if pending:
        how = {0: "in this process", 1: "one Ray task per model, concurrently"}.get(
            workers, f"{workers} Ray Train DDP workers per model")
        live = live_progress(pending)
        echo(f"pretraining {len(pending)} model(s) ({', '.join(j.label for j in pending)}) "
             f"{how}{' on GPU' if use_gpu else ''}{'' if live else '; one line per model when it ends'}")
        if workers == 0:
            device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
            for job in pending:
                train_job(job, storage_url, device, report=epoch_progress(job, echo) if live else None)
        elif workers == 1:
            _run_ray_tasks(pending, storage_url, use_gpu, cpus_per_worker or 1.0, live)
        else:
            _run_torch_trainer(pending, storage_url, workers, use_gpu, cpus_per_worker, live)
    metas = {}
    for job in unique:
        state = checkpoint.load_pretrained_state(checkpoint_url(storage_url, job.key))
        metas[job.key] = {"train_ids": state["train_ids"], "history": state["history"],
                          "samples_per_s": state.get("samples_per_s", 0.0), "cached": job not in pending}
        if job in pending and not live:
            echo(summary_line(job, state))
    return metas


def _run_ray_tasks(pending: list[PretrainJob], storage_url: str, use_gpu: bool, cpus_per_job: float,
                   live: bool = True) -> None:
    """Every pending job in a Ray task of its own, concurrently as resources allow. A task that dies
    is retried (twice) and resumes from its last epoch checkpoint (on a local disk)."""
    import ray

    run = ray.remote(num_cpus=cpus_per_job, num_gpus=1 if use_gpu else 0, max_retries=2)(task_loop)
    threads = max(1, int(cpus_per_job))
    ray.get([run.remote(job.to_dict(), storage_url, use_gpu, threads, live) for job in pending])


def _run_torch_trainer(pending: list[PretrainJob], storage_url: str, workers: int, use_gpu: bool,
                       cpus_per_worker: float | None, live: bool = True):
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    import ray
    cpus = cpus_per_worker or max(0.5, min(1.0, ray.cluster_resources().get("CPU", 1) / max(1, workers) - 0.25))
    name = "pretrain-" + hashlib.sha256("".join(j.key for j in pending).encode()).hexdigest()[:12]
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"jobs": [j.to_dict() for j in pending], "storage": storage_url, "live": live},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        # WARNING: Train's INFO lines (one per epoch report) would bury the progress we print ourselves
        run_config=RunConfig(name=name, storage_path=storage.resolve(storage_url), failure_config=FailureConfig(max_failures=2),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"pretraining failed: {result.error}")


def load_pretrained(job: PretrainJob, storage_url: str, device="cpu", load_weights: bool = True) -> checkpoint.PretrainedMAE:
    """The MAE of ``job`` and the transforms it was trained with (fresh weights, seeded by the job,
    when not ``load_weights``: the no-pretraining ablation)."""
    url = checkpoint_url(storage_url, job.key)
    if not storage.exists(url):
        raise FileNotFoundError(f"no pretrained model for {job.label} at {url}; run the pretraining first")
    return checkpoint.load_pretrained(url, device, load_weights=load_weights, seed=job.seed)


def ensure_pretrained(job: PretrainJob, storage_url: str, workers: int = 0, echo=print) -> dict:
    """Train ``job`` unless its checkpoint exists (in this process with ``workers=0``, else with Ray
    Train); prints the loss per epoch; returns the checkpoint's payload."""
    url = checkpoint_url(storage_url, job.key)
    live = False
    if storage.exists(url):
        echo(f"checkpoint exists, not retraining: {url}")
    elif workers == 0:
        check_job(job)
        epochs = job.pretrain.get("epochs")
        echo(f"pretraining {job.label} in this process ({epochs} epochs)")

        def report(row: dict):
            echo(f"  epoch {row['epoch'] + 1:>4}/{epochs}  {format_losses(row)}", flush=True)

        train_job(job, storage_url, torch.device("cpu"), report=report)
        live = True
    else:
        from impumae.engine.runtime import init_ray  # noqa: PLC0415 (Ray only when asked for)
        init_ray("local")
        run_pretraining([job], storage_url, workers=workers, echo=echo)
    state = checkpoint.load_pretrained_state(url)
    if not live:
        for row in state["history"]:
            echo(f"  epoch {row['epoch'] + 1:>4}/{len(state['history'])}  {format_losses(row)}")
    return state
