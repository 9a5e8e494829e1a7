"""Pretrain the multimodal MAE of one (modality subset, fold) on that fold's training patients.

    python experiments/pretrain.py --subset rna,dna,mri --fold 0
    python experiments/pretrain.py --cohort cohort.zarr --subset rna,dna --fold refit --epochs 100

The MAE sees every training patient of the fold with at least one of the subset's tokenised
modalities (never a validation or holdout patient); ``--fold refit`` uses every non-holdout patient.
The checkpoint (model, specs, fold-fitted transforms, the ids of the patients it saw and the loss
history) goes to ``<storage>/pretrain/<key>/mae.pt``, where the key hashes everything that
determines the model, so experiments/finetune.py and experiments/cv_search.py reuse it. A
checkpoint that already exists is reported, not retrained.

``--workers 0`` (default) trains in this process; ``--workers N`` runs Ray Train's TorchTrainer
with N DDP workers (starts a local Ray).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SPACE = str(ROOT / "search_spaces" / "default.yaml")


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options that decide which pretrained MAE a (subset, fold) uses (shared with finetune.py)."""
    p.add_argument("--cohort", default=None, help="cohort store path or fsspec URL; default: the embedded "
                   "synthetic cohort (built and cached on first use)")
    p.add_argument("--subset", default="rna,dna,mri", help="modalities, comma-separated, anchor first (default %(default)s)")
    p.add_argument("--fold", default="0", help="validation fold whose training patients are used (0..K-1), "
                   "or 'refit' for every non-holdout patient (default %(default)s)")
    p.add_argument("--space", default=DEFAULT_SPACE, help="search space YAML; its model and pretrain sections "
                   "configure the MAE (default %(default)s)")
    p.add_argument("--storage", default=os.environ.get("IMPUMAE_STORAGE", "runs"),
                   help="where pretraining checkpoints live (default: $IMPUMAE_STORAGE or ./runs)")
    p.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")


def parse_fold(text: str) -> int:
    from impumae.engine.cohort_view import REFIT
    if str(text).strip().lower() == "refit":
        return REFIT
    try:
        fold = int(text)
    except ValueError:
        raise ValueError(f"--fold must be an integer or 'refit', got {text!r}") from None
    if fold < 0:
        raise ValueError(f"--fold must be >= 0 or 'refit', got {fold}")
    return fold


def resolve_cohort(cohort: str | None) -> str:
    """An absolute path or URL: the pretraining cache key includes a fingerprint of this string."""
    if cohort is None:
        from impumae.data.synthetic import default_cohort
        cohort = str(default_cohort().url)
        print(f"using the embedded synthetic cohort at {cohort}")
    if cohort.startswith("file://"):
        cohort = cohort[len("file://"):]
    return cohort if "://" in cohort else os.path.abspath(cohort)


def resolve_storage(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def make_job(cohort_url: str, subset_text: str, fold: int, space, pretrain_epochs: int | None, seed: int):
    """(job, cohort arrays, subset): the same PretrainJob that the search's ``pretrain_job`` builds."""
    from impumae.engine.cohort_view import load_cohort_arrays, split_subset
    from impumae.engine.pretrain_jobs import PretrainJob
    from impumae.data.store import Cohort
    from impumae.modalities import parse_subset

    subset = parse_subset(subset_text, known=Cohort.open(cohort_url).modalities)
    ca = load_cohort_arrays(cohort_url, subset)
    if fold >= 0 and fold >= ca.n_folds:
        raise ValueError(f"--fold {fold}: the cohort stores folds 0..{ca.n_folds - 1}")
    tokenised, _ = split_subset(subset, ca.specs)
    if not tokenised:
        raise ValueError(f"subset {subset_text!r} has no tokenised modality to pretrain")
    pretrain_cfg = {**space.pretrain, **({"epochs": pretrain_epochs} if pretrain_epochs else {})}
    job = PretrainJob(cohort_url, ca.fingerprint, tuple(tokenised), fold, dict(space.model), pretrain_cfg, seed)
    return job, ca, subset


def ensure_pretrained(job, storage: str, workers: int = 0, echo=print) -> dict:
    """Train ``job`` unless its checkpoint exists; returns the checkpoint's contents (read back)."""
    import torch
    from impumae.engine.pretrain_jobs import (_exists, checkpoint_url, format_losses, read_checkpoint, run_pretraining,
                                           train_job)

    url = checkpoint_url(storage, job)
    live = False
    if _exists(url):
        echo(f"checkpoint exists, not retraining: {url}")
    elif workers == 0:
        echo(f"pretraining {job.label} in this process ({job.pretrain.get('epochs')} epochs)")
        epochs = job.pretrain.get("epochs")

        def report(row: dict):
            echo(f"  epoch {row['epoch'] + 1:>4}/{epochs}  {format_losses(row)}", flush=True)

        train_job(job, storage, torch.device("cpu"), report=report)
        live = True
    else:
        from impumae.engine.search import init_ray
        init_ray("local")
        run_pretraining([job], storage, workers=workers, echo=echo)
    state = read_checkpoint(url)
    if not live:
        for row in state["history"]:
            echo(f"  epoch {row['epoch'] + 1:>4}/{len(state['history'])}  {format_losses(row)}")
    return state


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--epochs", type=int, default=None, help="override the space's pretrain.epochs")
    p.add_argument("--workers", type=int, default=0, help="0 = train in this process (default); N >= 1 = "
                   "Ray Train TorchTrainer with N DDP workers")
    args = p.parse_args(argv)
    if args.workers < 0:
        p.error("--workers must be >= 0")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    from impumae.engine.pretrain_jobs import checkpoint_url, format_losses
    from impumae.engine.space import SearchSpace

    try:
        fold = parse_fold(args.fold)
        space = SearchSpace.load(args.space)
        cohort = resolve_cohort(args.cohort)
        storage = resolve_storage(args.storage)
        job, ca, _ = make_job(cohort, args.subset, fold, space, args.epochs, args.seed)
        n_train = len(ca.train_indices(fold))
        print(f"cohort {cohort}\nsubset {','.join(job.modalities)} (tokenised), {job.label}: "
              f"{n_train} training patients in the fold")
        print(f"model {job.model}\npretrain {job.pretrain}")
        state = ensure_pretrained(job, storage, args.workers)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    history = state["history"]
    used = np.isin(ca.ids, np.asarray(state["train_ids"], dtype=str))
    per_modality = {m: int(ca.present[m][used].sum()) for m in job.modalities}
    print(f"patients used: {len(state['train_ids'])} (with at least one of {', '.join(job.modalities)}; "
          + ", ".join(f"{m} {n}" for m, n in per_modality.items()) + ")")
    if history:
        first, last = history[0], history[-1]
        print(f"first epoch loss: {format_losses(first)}")
        print(f"last epoch loss:  {format_losses(last)}  (epoch {last['epoch'] + 1})")
    print(f"checkpoint: {checkpoint_url(storage, job)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
