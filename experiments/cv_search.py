"""Cross-validated impuTMAE search with an honest holdout: the command users run.

    python experiments/cv_search.py --subset rna,dna,mri

With no other flag it uses the embedded synthetic cohort (built and cached on first use), a local
Ray, MLflow in ./mlflow.db and a search sized for minutes on a laptop CPU. It pretrains one MAE per
(subset, fold) on that fold's training patients, searches the YAML space with Optuna over the
validation folds (each configuration's epoch fixed where its mean validation curve over the folds
peaks; ASHA stops weak configurations early), refits the best configuration on every non-holdout
patient for that epoch and scores the holdout split once, with bootstrap 95% CIs, under the paper's
two conditions. Compare runs with:  mlflow ui --backend-store-uri sqlite:///mlflow.db
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Ray folds lines that look alike across workers ("[repeated 12x across cluster]"); the progress
# lines of pretraining jobs running at once differ only in their numbers. Read when Ray is imported.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# (Tune's snapshot warning and MLflow's download bars: impumae.engine.console sets their defaults)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to search")
    what.add_argument("--subset", default=None, help="one modality subset, comma-separated, anchor first "
                      "(e.g. rna,dna,mri); default rna,dna,mri")
    what.add_argument("--subsets", nargs="+", default=None, metavar="SUBSET",
                      help="several subsets in one search (the subset becomes a searched parameter), "
                           "e.g. --subsets rna rna,dna rna,dna,mri")
    what.add_argument("--cohort", default=None, help="cohort store path or fsspec URL (s3://, gs://, file://); "
                      "default: the embedded synthetic cohort, built and cached on first use")
    what.add_argument("--space", default=str(ROOT / "search_spaces" / "default.yaml"),
                      help="search space YAML (model, pretrain, finetune and search sections); default %(default)s")
    size = p.add_argument_group("search size")
    size.add_argument("--trials", type=int, default=4, help="configurations to try (default %(default)s)")
    size.add_argument("--folds", type=int, default=None, help="validation folds to use, the first K of the "
                      "cohort's stored folds (default: all of them)")
    size.add_argument("--pretrain-epochs", type=int, default=None, help="override the space's pretrain.epochs")
    size.add_argument("--epochs", type=int, default=None, help="override the space's finetune.epochs: the schedule's length; "
                      "each configuration's epoch is then fixed from its mean validation curve")
    size.add_argument("--outer-folds", type=int, default=None, metavar="K",
                      help="nested cross-validation: K outer folds over all patients, the whole search (pretraining, "
                           "search, refit) inside each; every patient gets one out-of-fold prediction (default: none, "
                           "the single stored holdout)")
    size.add_argument("--repeats", type=int, default=1, help="nested CV: repeats of the outer folds, reshuffled "
                      "(default %(default)s)")
    size.add_argument("--concurrent-outer", type=int, default=None, metavar="N",
                      help="nested CV: outer folds run at once (default: as many as the cluster has CPUs for one "
                           "trial each)")
    size.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the holdout CIs (default %(default)s)")
    size.add_argument("--ensemble-top-k", type=int, default=0, metavar="K",
                      help="also score the average of the K best configurations on the validation folds, and "
                           "select it if it beats the best one (default: off)")
    size.add_argument("--selection", choices=("best", "one_se", "family_ensemble"), default="family_ensemble",  # selection.RULES, DEFAULT_RULE
                      help="how the model is picked from the trials on the validation folds: 'best' (highest mean "
                           "CS-score), 'one_se' (one-standard-error rule across families), 'family_ensemble' (the "
                           "average of each family's best configuration); docs/results-gbmlgg.md has the nested-CV "
                           "numbers that chose the default (default %(default)s)")
    compute = p.add_argument_group("where it runs")
    compute.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "local"),
                         help="Ray cluster: 'local' (start one here), 'auto' (the cluster this machine belongs to), "
                              "or HOST:PORT / ray://HOST:10001 (default: $RAY_ADDRESS or local)")
    compute.add_argument("--gpus-per-trial", type=float, default=0.0,
                         help="GPUs per trial; fractions pack trials onto one GPU, e.g. 0.25 (default 0). "
                              "Non-zero also puts pretraining workers on GPUs")
    compute.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default %(default)s)")
    compute.add_argument("--workers", type=int, default=1, help="pretraining workers per model: 1 = each model in a Ray "
                         "task of its own, models concurrently; >= 2 = Ray Train DDP over that many workers (default %(default)s)")
    compute.add_argument("--storage", default=os.environ.get("IMPUMAE_STORAGE", "runs"),
                         help="where Ray Tune results, pretraining checkpoints and the audit trail go: "
                              "a path or s3://bucket/prefix (default: $IMPUMAE_STORAGE or ./runs)")
    track = p.add_argument_group("tracking and resuming")
    track.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    track.add_argument("--experiment", default=None, help="MLflow experiment and search name (default: impumae-<subsets>)")
    track.add_argument("--register", default=None, metavar="NAME", help="register the selected model in MLflow's "
                       "Model Registry under NAME (default: the experiment name); use it with experiments/predict.py "
                       "--model models:/NAME/VERSION (nested CV's outer-fold models are logged, not registered)")
    track.add_argument("--resume", action="store_true", help="continue the latest interrupted search (with --outer-folds: "
                       "nested run) of this "
                       "experiment: finished trials are kept, unfinished ones continue from their last fold")
    track.add_argument("--max-failures", type=int, default=2, help="retries of a trial that raises (default %(default)s)")
    track.add_argument("--seed", type=int, default=0, help="seed for the sampler, pretraining and fine-tuning (default %(default)s)")
    args = p.parse_args(argv)
    if args.subset and args.subsets:
        p.error("give --subset or --subsets, not both")
    args.subsets = args.subsets or [args.subset or "rna,dna,mri"]
    if args.trials < 1:
        p.error("--trials must be at least 1")
    if args.outer_folds is not None and args.outer_folds < 2:
        p.error("--outer-folds must be at least 2")
    if args.outer_folds is None and (args.repeats != 1 or args.concurrent_outer is not None):
        p.error("--repeats and --concurrent-outer need --outer-folds")
    if args.experiment is None:
        args.experiment = "impumae-" + "+".join(s.replace(",", "_") for s in args.subsets)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from impumae.data.cohort_view import resolve_cohort  # heavy imports after --help
    from impumae.engine.nested import run_nested
    from impumae.engine.search import SearchOptions, run_search
    from impumae.engine.space import SearchSpace

    try:
        space = SearchSpace.load(args.space)
        cohort = resolve_cohort(args.cohort)
        opts = SearchOptions(
            cohort=cohort, subsets=args.subsets, space=space, trials=args.trials, folds=args.folds,
            pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, address=args.address,
            gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial, workers=args.workers,
            storage=args.storage, mlflow_uri=args.mlflow_uri, experiment=args.experiment, resume=args.resume,
            seed=args.seed, max_failures=args.max_failures, n_boot=args.n_boot, register=args.register,
            ensemble_top_k=args.ensemble_top_k, selection=args.selection)
        if args.outer_folds:
            summary = run_nested(opts, args.outer_folds, args.repeats, args.concurrent_outer)
            results = f"{summary['nested_dir']}/nested_summary.json"
        else:
            summary = run_search(opts)
            results = f"{summary['search_dir']}/summary.json"
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.outer_folds:
        model_uri = summary["holdout"]["model"]["model_uri"]
        print(f"\nselected model: {model_uri}  (predict: experiments/predict.py --model {model_uri} "
              f"--cohort NEW.zarr --out predictions.parquet)")
    print(f"\nresults: {results}; MLflow experiment {summary['experiment']!r} at "
          f"{summary['mlflow_uri']}\ncompare runs:  mlflow ui --backend-store-uri {summary['mlflow_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
