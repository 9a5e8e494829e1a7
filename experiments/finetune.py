"""Fine-tune the pretrained MAE of one (modality subset, fold) for survival and score it on the fold.

    python experiments/finetune.py --subset rna,dna,mri --fold 0 --lr 1e-3 --epochs 20 --baselines

Uses the fold's pretrained MAE (the one experiments/pretrain.py writes for the same --cohort,
--subset, --fold, --space, --pretrain-epochs, --seed and --storage; it is pretrained here, in this
process, if missing). Fine-tunes on the fold's training patients that have the anchor modality (the
first of the subset), scores the fold's validation patients with the anchor modality after every
epoch, and prints:

- a per-epoch table (the fold's validation curve): training loss, validation C-index (Antolini,
  time-dependent, and Harrell's C of the model's risk), IBS and CS-score;
- the validation metrics at the last epoch trained (``--epochs``, or ``--stop-after`` epochs of an
  ``--epochs``-long schedule: give the fixed epoch a search chose from its mean curve over folds),
  an epoch fixed before looking at this fold, and beside them the metrics at this fold's own best
  epoch: a peek at the validation patients, optimistic by construction (the search never uses it);
- the oracle C-index: Harrell's C of the cohort's ``true_risk`` (the log-hazard a synthetic cohort's
  times were drawn from) on the same validation patients, and the ratio fine-tuned / oracle;
- with ``--baselines``: CoxPH, CoxNet, RSF (early fusion) and late-fusion CoxPH
  (``impumae.survival.baselines.run_baselines``) fitted on the same training patients and scored
  on the same validation patients. Their features are the subset's tabular and clinical modalities
  after the same fold-fitted transforms (a missing modality = NaN, mean-imputed by the baseline on
  its training patients). MRI volumes and WSI tiles are NOT given to the baselines (a 4,096-voxel
  or 9,216-pixel raw block is not a Cox covariate), so the baselines see less than the MAE does;
- the imputation quality of the pretrained decoder (``impumae.evaluation.imputation_quality``): for each
  tokenised modality, on the fold's validation patients that have it and another modality, the
  modality is hidden from the model and the decoder's reconstruction is compared with the real
  values (R^2, MSE) next to the training-fold mean and kNN imputers.

The holdout split is never touched.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from impumae.engine.command_options import add_fold_arguments

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fold_arguments(p)
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="override the space's pretrain.epochs (selects / trains that pretrained MAE)")
    ft = p.add_argument_group("fine-tuning (defaults: the space's finetune section, then FinetuneConfig)")
    ft.add_argument("--lr", type=float, default=None)
    ft.add_argument("--epochs", type=int, default=None, help="length of the cosine learning-rate schedule")
    ft.add_argument("--stop-after", type=int, default=None,
                    help="train only the first N epochs of that schedule (a search's fixed epoch)")
    ft.add_argument("--dropout", type=float, default=None)
    ft.add_argument("--imputation", choices=("decoder", "mask_token", "drop"), default=None,
                    help="what a missing modality becomes at fine-tuning")
    ft.add_argument("--freeze", default=None, help="encoder freezing policy (paper, none, ...)")
    ft.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--baselines", action="store_true", help="also fit and score the classical baselines")
    p.add_argument("--no-imputation-quality", action="store_true", help="skip the decoder imputation R^2 table")
    return p.parse_args(argv)


def fmt(value: float, digits: int = 4) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from impumae import storage
    from impumae.data.store import Cohort
    from impumae.data.cohort_view import REFIT, parse_fold, resolve_cohort
    from impumae.engine.curves import at_epoch, fixed_epoch, peek_metrics, validation_curve
    from impumae.engine.mae_fold import finetune_config, fit_mae_fold
    from impumae.families import fold_populations
    from impumae.engine.pretrain_jobs import checkpoint_url, ensure_pretrained, job_for
    from impumae.engine.space import SearchSpace
    from impumae.survival.metrics import concordance_harrell

    try:
        fold = parse_fold(args.fold)
        if fold == REFIT:
            raise ValueError("this command scores a validation fold: give --fold 0..K-1 "
                             "(the final refit is experiments/cv_search.py's job)")
        space = SearchSpace.load(args.space)
        cohort = resolve_cohort(args.cohort)
        storage_url = storage.resolve(args.storage)
        pretrain_cfg = {**space.pretrain, **({"epochs": args.pretrain_epochs} if args.pretrain_epochs else {})}
        job, ca, subset = job_for(cohort, args.subset, fold, space.model, pretrain_cfg, args.seed, space.transforms)
        print(f"cohort {cohort}\nsubset {','.join(subset)} (anchor {subset[0]}), fold {fold}")
        state = ensure_pretrained(job, storage_url, workers=0)
        print(f"pretrained MAE: {checkpoint_url(storage_url, job.key)} ({len(state['history'])} epochs, "
              f"{len(state['train_ids'])} patients)")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    device = torch.device("cpu")
    ft_train, ft_val = fold_populations(ca, subset, fold)
    overrides = {k: v for k, v in (("lr", args.lr), ("epochs", args.epochs), ("dropout", args.dropout),
                                   ("imputation", args.imputation), ("freeze", args.freeze),
                                   ("batch_size", args.batch_size), ("stop_after", args.stop_after)) if v is not None}
    cfg = finetune_config(space.finetune, overrides, seed=args.seed + fold)
    print(f"fine-tuning: {len(ft_train)} training / {len(ft_val)} validation patients with {subset[0]} "
          f"(events {int(ca.event[ft_train].sum())} / {int(ca.event[ft_val].sum())})")
    stop = f" (stop after {cfg.stop_after})" if cfg.stop_after else ""
    print(f"config: lr {cfg.lr:g}, epochs {cfg.epochs}{stop}, dropout {cfg.dropout:g}, imputation {cfg.imputation}, "
          f"freeze {cfg.freeze}, batch {cfg.batch_size}, weight decay {cfg.weight_decay:g}, seed {cfg.seed}, "
          f"km_init {cfg.km_init}, linear path {cfg.linear_path} (L2 {cfg.linear_l2:g}); transforms {job.transforms}")
    print(f"\n{'epoch':>5} {'train_loss':>10} {'val_C_td':>9} {'val_C_harrell':>13} {'val_IBS':>8} {'val_CS':>7}")

    def progress(row: dict):
        print(f"{row['epoch']:>5} {row['train_loss']:>10.4f} {fmt(row.get('val_c_index')):>9} "
              f"{fmt(row.get('val_c_index_harrell')):>13} {fmt(row.get('val_ibs')):>8} "
              f"{fmt(row.get('val_cs_score')):>7}", flush=True)

    fit = fit_mae_fold(ca, subset, fold, cfg, storage_url=storage_url, model=job.model, pretrain=job.pretrain,
                   seed=job.seed, device=device, progress=progress, transform_options=job.transforms)
    curve = validation_curve(fit.history)
    last_epoch = len(fit.history)
    honest = at_epoch(curve, last_epoch)
    peek = peek_metrics(curve)

    def metrics_line(m: dict) -> str:
        return (f"C-index (Antolini) {fmt(m['val_c_index'])}, Harrell's C {fmt(m['val_c_index_harrell'])}, "
                f"IBS {fmt(m['val_ibs'])}, CS-score {fmt(m['val_cs_score'])}")

    print(f"\nat epoch {last_epoch} (the last trained, fixed in advance):  {metrics_line(honest)}")
    print(f"at epoch {fixed_epoch(curve)} (this fold's best, a peek):    {metrics_line(peek)}")
    print(f"optimism of the peek: C-index {fmt(peek['val_c_index'] - honest['val_c_index'], 3)}, "
          f"CS-score {fmt(peek['val_cs_score'] - honest['val_cs_score'], 3)}")

    labels = Cohort.open(cohort).labels
    if "true_risk" in labels.columns:
        true_risk = labels["true_risk"].to_numpy(np.float64)[ft_val]
        oracle = concordance_harrell(true_risk, ca.time[ft_val], ca.event[ft_val])
        print(f"oracle C-index (Harrell's C of true_risk on the same {len(ft_val)} validation patients): {fmt(oracle)}")
        print(f"ratio fine-tuned / oracle (epoch {last_epoch}): Harrell {fmt(honest['val_c_index_harrell'] / oracle, 3)}, "
              f"Antolini {fmt(honest['val_c_index'] / oracle, 3)}")
    else:
        print("oracle C-index: the cohort has no true_risk (only synthetic cohorts do)")

    if args.baselines:
        from impumae.data.baseline_features import baseline_features
        from impumae.survival.baselines import run_baselines
        rows = np.concatenate([ft_train, ft_val])
        features = baseline_features(ca, subset, fit.transforms, rows)
        print(f"\nbaselines on the same patients ({len(ft_train)} train / {len(ft_val)} validation); features: "
              + ", ".join(f"{m} ({v.shape[1]})" for m, v in features.items()))
        scores = run_baselines(features, ca.time[rows], ca.event[rows], np.arange(len(ft_train)),
                               np.arange(len(ft_train), len(rows)), seed=args.seed)
        print(f"{'model':<20} {'C_td':>7} {'C_harrell':>9} {'IBS':>7} {'CS':>7}")
        print(f"{f'impuTMAE (epoch {last_epoch})':<20} {fmt(honest['val_c_index']):>7} "
              f"{fmt(honest['val_c_index_harrell']):>9} {fmt(honest['val_ibs']):>7} {fmt(honest['val_cs_score']):>7}")
        for name, s in scores.items():
            print(f"{name:<20} {fmt(s['c_index']):>7} {fmt(s['c_index_harrell']):>9} {fmt(s['ibs']):>7} "
                  f"{fmt(s['cs_score']):>7}")

    if not args.no_imputation_quality:
        from impumae.evaluation.imputation_quality import imputation_quality
        rows = imputation_quality(job, storage_url, cohort_url=cohort, device=device)
        print(f"\nimputation quality of the pretrained decoder on fold {fold}'s validation patients "
              f"(modality hidden from the model; model-input space):")
        print(f"{'modality':<9} {'n':>4} {'R2_decoder':>10} {'R2_mean':>8} {'R2_knn':>7} {'MSE_decoder':>11} {'MSE_mean':>9}")
        by = {(r["modality"], r["method"]): r for r in rows}
        for m in job.modalities:
            d, mean, knn = by[(m, "decoder")], by[(m, "mean")], by[(m, "knn")]
            print(f"{m:<9} {d['n_patients']:>4} {fmt(d['r2']):>10} {fmt(mean['r2']):>8} {fmt(knn['r2']):>7} "
                  f"{fmt(d['mse']):>11} {fmt(mean['mse']):>9}" + (f"  ({d['note']})" if d.get("note") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
