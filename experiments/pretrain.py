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
import sys
from pathlib import Path

from impumae.engine.command_options import add_fold_arguments

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fold_arguments(p)
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

    from impumae import storage
    from impumae.data.cohort_view import parse_fold, resolve_cohort
    from impumae.engine.pretrain_jobs import checkpoint_url, ensure_pretrained, format_losses, job_for
    from impumae.engine.space import SearchSpace

    try:
        fold = parse_fold(args.fold)
        space = SearchSpace.load(args.space)
        cohort = resolve_cohort(args.cohort)
        storage_url = storage.resolve(args.storage)
        pretrain_cfg = {**space.pretrain, **({"epochs": args.epochs} if args.epochs else {})}
        job, ca, _ = job_for(cohort, args.subset, fold, space.model, pretrain_cfg, args.seed, space.transforms)
        n_train = len(ca.train_indices(fold))
        print(f"cohort {cohort}\nsubset {','.join(job.modalities)} (tokenised), {job.label}: "
              f"{n_train} training patients in the fold")
        print(f"model {job.model}\npretrain {job.pretrain}")
        state = ensure_pretrained(job, storage_url, args.workers)
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
    print(f"checkpoint: {checkpoint_url(storage_url, job.key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
