"""Imputation quality on validation folds: the decoder against mean, kNN, ridge and IterativeImputer.

    python experiments/bench/imputation.py --cohort cohorts/gbmlgg.zarr --subset rna,mutations --fold 0 \
        --out rows.json [--fold 0 1 2 3 4] [--epochs 100] [--set hide_modality_prob=0.5] [--model decoder_width=64]

For each fold K: the MAE of (subset, fold K) is pretrained on fold K's training patients with the
space's ``model:``/``pretrain:`` settings (overridden by ``--model``/``--set``/``--epochs``) unless
its checkpoint is cached under ``--storage`` (the same key a search uses, so a search's checkpoints
are reused); then every tokenised modality is hidden in turn from fold K's *validation* patients who
have it and another of the subset's modalities, and imputed by the decoder and by the references,
which are fitted on the MAE's own pretraining patients (``impumae.evaluation.imputation_quality``).

``--out`` gets a JSON list: one row per (fold, hidden modality, method) with ``modality``,
``method``, ``n_patients``, ``r2`` (variance-weighted), ``r2_median`` and
``n_features_r2_above_0.3`` (per-feature R^2), ``mse``, ``fold``, ``subset``, ``pretrain_epochs``,
the checkpoint key and, unless ``--no-per-feature``, ``r2_per_feature``. Over several folds it also
prints the mean per (modality, method) and the imputer :func:`choose_imputers` would choose.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    from pretrain_settings import space_settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True, help="cohort store (path or fsspec URL)")
    p.add_argument("--subset", required=True, help="modalities, comma-separated (e.g. rna,mutations)")
    p.add_argument("--fold", type=int, nargs="+", required=True, help="validation fold(s) 0..K-1 (never the refit)")
    p.add_argument("--out", required=True, help="JSON file for the rows")
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "gbmlgg.yaml"))
    p.add_argument("--storage", default="runs", help="where pretraining checkpoints are cached (default runs)")
    p.add_argument("--epochs", type=int, default=None, help="override the space's pretrain.epochs")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="pretrain: overrides")
    p.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE", help="model: overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=None,
                   help="score only these of decoder, mean, knn, ridge, iterative (default: all)")
    p.add_argument("--no-per-feature", action="store_true", help="leave r2_per_feature out of --out")
    args = p.parse_args(argv)

    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # IterativeImputer's max_iter, by design
    from impumae.engine.pretrain_jobs import ensure_pretrained, job_for
    from impumae.evaluation.imputation_quality import METHODS, imputation_quality
    from impumae.train.imputers import choose_imputers

    if any(k < 0 for k in args.fold):
        print("error: --fold takes validation folds (>= 0); the holdout is never used here", file=sys.stderr)
        return 2
    space, model, pretrain = space_settings(args)
    rows = []
    for fold in args.fold:
        try:
            job, _, _ = job_for(args.cohort, args.subset, fold, model, pretrain, args.seed, space.transforms)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        start = time.perf_counter()
        ensure_pretrained(job, args.storage, workers=0, echo=lambda *a, **k: None)
        pretrained_s = time.perf_counter() - start
        start = time.perf_counter()
        for row in imputation_quality(job, args.storage, methods=tuple(args.methods or METHODS)):
            if args.no_per_feature:
                row.pop("r2_per_feature", None)
            rows.append({"subset": args.subset, "pretrain_epochs": pretrain.get("epochs"), "key": job.key, **row})
            r = rows[-1]
            print(f"fold {fold} {r['modality']:<10} {r['method']:<9} n={r['n_patients']:<4} R2 {r['r2']:+.3f}"
                  + (f"  median {r['r2_median']:+.3f}  >0.3: {r['n_features_r2_above_0.3']}" if "r2_median" in r else "")
                  + (f"  ({r['note']})" if r.get("note") else ""), flush=True)
        print(f"fold {fold}: pretraining {pretrained_s:.0f} s (0 = cached), scoring {time.perf_counter() - start:.0f} s",
              flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1, default=float))
    if len(args.fold) > 1:
        print("mean over folds (variance-weighted R2):")
        for key in sorted({(r["modality"], r["method"]) for r in rows}):
            scores = [r["r2"] for r in rows if (r["modality"], r["method"]) == key and math.isfinite(r["r2"])]
            if scores:
                print(f"  {key[0]:<10} {key[1]:<9} {sum(scores) / len(scores):+.3f} over {len(scores)} folds")
        for m, c in choose_imputers([r for r in rows if r.get("n_patients")]).items():
            print(f"  chosen for {m}: {c['method']} (validation R2 {c['validation_r2']:+.3f})")
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
