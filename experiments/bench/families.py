"""Time per fold and validation scores of the scikit-survival model families, in process (no Ray).

Each scikit-survival family of :mod:`impumae.families.sksurv` (default settings) is fitted on each validation fold
of a cohort exactly as a search trial fits it (:func:`impumae.families.sksurv.fit_sksurv_fold`:
the fold's training patients with the anchor modality, the fold-fitted transforms, the common
grid) and scored on the fold's validation patients. Printed: per family, the wall-clock seconds
per fold (transforms + features + fit + scoring) and the mean ± SD over folds of the validation
C-index (Antolini) and CS-score. The holdout is never read.

With ``--impumae-space``, impuTMAE too, with that space's model, pretraining and fine-tuning
defaults (no searched value: FinetuneConfig's defaults for those): per fold the pretraining
seconds (in this process, into a temporary storage) and the fine-tuning seconds, and the mean
validation metrics at the epoch fixed from the mean curve over the folds (the search's rule).

    python experiments/bench/families.py --cohort /work/cohorts/gbmlgg.zarr --subset rna
    python experiments/bench/families.py --cohort ... --families "" --impumae-space search_spaces/default.yaml
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from impumae.data.cohort_view import load_cohort_arrays
from impumae.engine.curves import summarise_folds, validation_curve
from impumae.engine.mae_fold import finetune_config, fit_mae_fold
from impumae.engine.pretrain_jobs import PretrainJob, run_pretraining
from impumae.engine.space import SearchSpace
from impumae.families.sksurv import FAMILIES as SKSURV_FAMILIES, fit_sksurv_fold
from impumae.modalities import parse_subset


def bench_impumae(ca, subset, space: SearchSpace, folds: list[int]) -> dict:
    """Pretraining and fine-tuning seconds per fold, and the validation metrics at the fixed epoch."""
    pretrain_s, finetune_s, curves = [], [], []
    with tempfile.TemporaryDirectory() as storage:
        for fold in folds:
            job = PretrainJob.for_subset(ca, subset, fold, space.model, space.pretrain, 0, space.transforms)
            started = time.perf_counter()
            run_pretraining([job], storage, workers=0, echo=lambda *_: None)
            pretrain_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            fit = fit_mae_fold(ca, subset, fold, finetune_config(space.finetune, {}, seed=fold), storage_url=storage,
                           model=space.model, pretrain=space.pretrain, seed=0, transform_options=space.transforms)
            finetune_s.append(time.perf_counter() - started)
            curves.append(validation_curve(fit.history))
            print(f"impumae fold {fold}: pretraining {pretrain_s[-1]:.1f} s, fine-tuning {finetune_s[-1]:.1f} s "
                  f"({len(fit.history)} epochs)", flush=True)
    summary = summarise_folds(curves)
    out = {"pretrain_seconds_per_fold": float(np.mean(pretrain_s)),
           "finetune_seconds_per_fold": float(np.mean(finetune_s)),
           "fixed_epoch": summary["fixed_epoch"], "folds": folds,
           "val_c_index": [summary["mean_val_c_index"], summary["std_val_c_index"]],
           "val_cs_score": [summary["mean_val_cs_score"], summary["std_val_cs_score"]]}
    print(f"impumae {np.mean(pretrain_s):.1f} s pretraining + {np.mean(finetune_s):.1f} s fine-tuning per fold   "
          f"val C {out['val_c_index'][0]:.3f} ± {out['val_c_index'][1]:.3f}   val CS {out['val_cs_score'][0]:.3f} ± "
          f"{out['val_cs_score'][1]:.3f}   (epoch {summary['fixed_epoch']} of the mean curve, {len(folds)} folds)",
          flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--subset", default="rna")
    parser.add_argument("--families", default=",".join(f.name for f in SKSURV_FAMILIES))
    parser.add_argument("--transforms", default='{"tabular_scaling": "rank_gauss"}',
                        help="the space's transforms: options as JSON (default: default.yaml's)")
    parser.add_argument("--impumae-space", help="also impuTMAE with this space's defaults (pretraining per fold)")
    parser.add_argument("--impumae-folds", default="", help="comma-separated folds for impuTMAE (default: all)")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args(argv)
    subset = parse_subset(args.subset)
    ca = load_cohort_arrays(args.cohort, subset)
    options = json.loads(args.transforms)  # the sksurv families' (the impuTMAE space brings its own)
    out = {}
    for family in [f for f in args.families.split(",") if f]:
        seconds, fit_seconds, c_index, cs = [], [], [], []
        for fold in range(ca.n_folds):
            started = time.perf_counter()
            fit = fit_sksurv_fold(ca, subset, fold, family, seed=fold, transform_options=options)
            seconds.append(time.perf_counter() - started)
            fit_seconds.append(fit.history[0]["fit_seconds"])
            c_index.append(fit.history[0]["val_c_index"])
            cs.append(fit.history[0]["val_cs_score"])
        out[family] = {"seconds_per_fold": float(np.mean(seconds)), "fit_seconds": float(np.mean(fit_seconds)),
                       "val_c_index": [float(np.mean(c_index)), float(np.std(c_index))],
                       "val_cs_score": [float(np.mean(cs)), float(np.std(cs))], "n_train": int(len(fit.train_rows))}
        print(f"{family:<7} {np.mean(seconds):7.2f} s/fold (fit {np.mean(fit_seconds):6.2f} s)   "
              f"val C {np.mean(c_index):.3f} ± {np.std(c_index):.3f}   "
              f"val CS {np.mean(cs):.3f} ± {np.std(cs):.3f}   ({ca.n_folds} folds)", flush=True)
    if args.impumae_space:
        folds = [int(f) for f in args.impumae_folds.split(",") if f] or list(range(ca.n_folds))
        out["impumae"] = bench_impumae(ca, subset, SearchSpace.load(args.impumae_space), folds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
