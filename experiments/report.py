"""Write the report of an MLflow experiment: Markdown + PNG figures, also logged to MLflow.

    python experiments/report.py --experiment impumae-rna_dna_mri --out reports/rna_dna_mri

Reads the experiment's holdout, trial and pretraining runs (tags written by cv_search.py), the
pretrained MAE checkpoints under --storage and the cohort the searches used, and writes
<out>/report.md with the paper's Table 1 (impuTMAE beside CoxPH, CoxNet and RSF on the same holdout),
the pretraining ablation (Table 3), the decoder's imputation quality against mean and kNN
imputation, Kaplan-Meier curves by predicted risk tertile and a calibration plot.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="MLflow experiment name (cv_search.py --experiment)")
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--out", default=None, help="output folder (default: reports/<experiment>)")
    p.add_argument("--storage", default=os.environ.get("IMPUMAE_STORAGE", "runs"),
                   help="the searches' --storage, where pretrained MAEs live (default: $IMPUMAE_STORAGE or ./runs)")
    p.add_argument("--extra-subsets", nargs="*", default=[], metavar="SUBSET",
                   help="subsets to report with baselines only (e.g. clinical, which the MAE cannot run on)")
    p.add_argument("--cohort", default=None, help="cohort for --extra-subsets (default: the searches' cohort)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the baselines' CIs (default %(default)s)")
    p.add_argument("--no-baselines", action="store_true", help="skip CoxPH / CoxNet / RSF")
    p.add_argument("--no-imputation", action="store_true", help="skip the imputation-quality section")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.add_argument("--title", default=None, help="the report's title")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from impumae.evaluation.report import BASELINES, build_report  # heavy imports after --help

    try:
        path = build_report(args.experiment, args.out or Path("reports") / args.experiment, mlflow_uri=args.mlflow_uri,
                            storage=args.storage, extra_subsets=tuple(args.extra_subsets), cohort=args.cohort,
                            n_boot=args.n_boot, baselines=() if args.no_baselines else BASELINES,
                            with_imputation=not args.no_imputation, log_to_mlflow=not args.no_mlflow, title=args.title)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
