"""A validation-fold study of fine-tuning choices, without pretraining and without the holdout.

For each of the cohort's K folds: transforms fitted on the fold's training patients (the package's
``fit_transforms`` with ``--tabular-scaling``), a fresh seeded MAE, ``finetune`` with the fold's
validation patients (the package's loop), one validation row per epoch. The epoch is then chosen
ONCE for all folds, on the MEAN validation curve (by CS-score), and the mean validation metrics at
that epoch are printed: no per-fold peeking, and the holdout is never read.

    python experiments/validation_study.py --cohort /work/cohorts/gbmlgg.zarr --subset rna \\
        --tabular-scaling rank_gauss --linear-path --linear-l2 1.0 --km-init
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True)
    p.add_argument("--subset", default="rna")
    p.add_argument("--tabular-scaling", default="standard", choices=("standard", "clip", "rank_gauss"))
    p.add_argument("--clip", type=float, default=3.0)
    p.add_argument("--linear-path", action="store_true")
    p.add_argument("--linear-l2", type=float, default=0.0)
    p.add_argument("--linear-lr-mult", type=float, default=1.0, help="the linear path's lr as a multiple of --lr")
    p.add_argument("--linear-warm-start", action="store_true",
                   help="fit the linear path to convergence before the first epoch (FinetuneConfig.linear_warm_start)")
    p.add_argument("--km-init", action="store_true")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--imputation", default="drop")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from impumae.data.cohort_view import Population, fit_transforms, load_cohort_arrays, make_batchable, population
    from impumae.model import MAEConfig, MultimodalMAE
    from impumae.modalities import parse_subset
    from impumae.train.finetune_loop import FinetuneConfig, finetune

    torch.set_num_threads(1)
    subset = parse_subset(args.subset)
    ca = load_cohort_arrays(args.cohort, subset)
    options = {"tabular_scaling": args.tabular_scaling, "clip": args.clip}
    metrics = ("val_c_index", "val_ibs", "val_cs_score", "val_c_index_harrell")
    curves, started = [], time.perf_counter()
    for fold in range(ca.n_folds):
        train_idx = ca.train_indices(fold)
        transforms = fit_transforms(ca, subset, train_idx, **options)
        train = make_batchable(ca, subset, transforms, population(ca, subset, train_idx, Population.FINETUNE))
        val = make_batchable(ca, subset, transforms,
                             population(ca, subset, ca.validation_indices(fold), Population.VALIDATE))
        specs = {m: s.with_(patch=args.patch, depth=args.depth) for m, s in transforms.output_specs(ca.specs).items()
                 if s.tokenised}
        torch.manual_seed(args.seed + fold)
        mae = MultimodalMAE(specs, MAEConfig(width=args.width, heads=4, mlp_ratio=2.0, decoder_width=64,
                                             decoder_depth=1, decoder_heads=4, decoder_mlp=128))
        cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                             dropout=args.dropout, freeze="none", imputation=args.imputation, seed=args.seed + fold,
                             km_init=args.km_init, linear_path=args.linear_path, linear_l2=args.linear_l2,
                             linear_lr_mult=args.linear_lr_mult, linear_warm_start=args.linear_warm_start)
        result = finetune(mae, train, val, cfg)
        curves.append([[row[m] for m in metrics] for row in result.history])
    c = np.array(curves)                               # [fold, epoch, metric]
    mean = c.mean(axis=0)
    best = int(np.argmax(mean[:, 2]))
    print(json.dumps(vars(args)), f"{time.perf_counter() - started:.0f} s")
    print(f"  epoch {best + 1} (by the mean validation CS-score over {len(c)} folds): C {mean[best, 0]:.3f} "
          f"(sd {c[:, best, 0].std():.3f}) IBS {mean[best, 1]:.3f} CS {mean[best, 2]:.3f} Harrell {mean[best, 3]:.3f}")
    print("  mean C by epoch", np.round(mean[:, 0], 3).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
