"""The real-cohort study: impuTMAE on tcga-gbmlgg-open with its real missingness, then the report.

    python experiments/study_gbmlgg.py          # the whole protocol: 5 folds, 8 trials, 30 pretraining epochs

On a 2-core CPU (docs/results-gbmlgg.md) the image-free subsets take ~40 min; the every-modality
subset is run on its own there, without decoder imputation, which would encode 10 imputed H&E
tiles for nearly every patient at every fine-tuning step:

    python experiments/study_gbmlgg.py --baseline-only clinical rna,dna,mutations,mri,wsi,clinical
    python experiments/study_gbmlgg.py --subsets clinical rna,dna,mutations,mri,wsi,clinical --ablation-subset '' \\
        --space search_spaces/default_without_decoder_imputation.yaml --experiment gbmlgg-study-every-modality

Protocol (one honest search per modality subset, all in one MLflow experiment):
1. the cohort store is built from ../shared/data if --cohort does not exist (the authors' holdout
   and folds: 218 holdout patients, 5 folds);
2. per subset: one MAE pretrained per (subset, fold) on that fold's training patients with any of
   the subset's tokenised modalities; Optuna + ASHA over the search space on validation folds;
   the best configuration refitted on every non-holdout patient and the holdout scored once;
3. the pretraining ablation (the paper's Table 3): the --ablation-subset searched again with
   ``pretrained: false`` (same space, same folds; the pretraining cache is reused);
4. `experiments/report.py` on the experiment (Table 1 with CoxPH/CoxNet/RSF beside impuTMAE,
   Table 3, imputation quality, Kaplan-Meier and calibration figures).

Subsets (anchor first): clinical; rna; rna+dnam; rna+mutations; rna+dnam+mutations+clinical; every
modality. ``clinical`` has no tokenised modality, so the MAE cannot run on it: it is reported with
the baselines only (--baseline-only).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUBSETS = ["clinical", "rna", "rna,dnam", "rna,mutations", "rna,dnam,mutations,clinical",
           "rna,dnam,mutations,mri,wsi,clinical"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", default="tcga_gbmlgg_open.zarr", help="the cohort store; built here if missing (default %(default)s)")
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="shared data folder for building the cohort")
    p.add_argument("--subsets", nargs="+", default=SUBSETS, help="modality subsets, anchor first (default: the six of the study)")
    p.add_argument("--baseline-only", nargs="*", default=["clinical"], metavar="SUBSET",
                   help="subsets reported with CoxPH/CoxNet/RSF only, no MAE search (default: clinical)")
    p.add_argument("--ablation-subset", default="rna,dnam,mutations,clinical",
                   help="subset searched again without pretraining (Table 3); '' to skip (default %(default)s)")
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "gbmlgg.yaml"), help="search space YAML")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--folds", type=int, default=None, help="validation folds (default: all 5)")
    p.add_argument("--pretrain-epochs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "local"))
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--storage", default=os.environ.get("IMPUMAE_STORAGE", "runs"))
    p.add_argument("--mlflow-uri", default=None)
    p.add_argument("--experiment", default="gbmlgg-study")
    p.add_argument("--out", default="reports/gbmlgg-study", help="report folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from impumae import storage
    from impumae.data.store import Cohort, summarize
    from impumae.engine.search import SearchOptions, run_search
    from impumae.engine.space import SearchSpace
    from impumae.evaluation.report import build_report
    from impumae.modalities import parse_subset

    if not storage.exists(args.cohort):
        from impumae.data.tcga_open import build_tcga_open
        print(f"building {args.cohort} from {args.shared}")
        build_tcga_open(args.shared, args.cohort)
    print(summarize(Cohort.open(args.cohort)))
    canonical = lambda s: ",".join(parse_subset(s))  # noqa: E731
    baseline_only = {canonical(s) for s in args.baseline_only}
    searched = [s for s in args.subsets if canonical(s) not in baseline_only]
    space = SearchSpace.load(args.space)
    common = dict(cohort=args.cohort, trials=args.trials, folds=args.folds, pretrain_epochs=args.pretrain_epochs,
                  epochs=args.epochs, address=args.address, gpus_per_trial=args.gpus_per_trial, workers=args.workers,
                  storage=args.storage, mlflow_uri=args.mlflow_uri, experiment=args.experiment, seed=args.seed,
                  n_boot=args.n_boot)
    for subset in searched:
        print(f"\n=== search: {subset} ===")
        run_search(SearchOptions(subsets=[subset], space=space, **common))
    if args.ablation_subset:
        print(f"\n=== ablation: {args.ablation_subset} without pretraining ===")
        no_pretraining = SearchSpace(model=space.model, pretrain=space.pretrain, finetune=space.finetune,
                                     transforms=space.transforms, search={**space.search, "pretrained": {"type": "categorical", "choices": [False]}},
                                     source=f"{space.source} + pretrained: false")
        run_search(SearchOptions(subsets=[args.ablation_subset], space=no_pretraining, **common))
    build_report(args.experiment, args.out, mlflow_uri=args.mlflow_uri, storage=args.storage,
                 extra_subsets=tuple(s for s in args.subsets if canonical(s) in baseline_only), cohort=args.cohort,
                 n_boot=args.n_boot, title="impuTMAE on TCGA GBM/LGG (open data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
