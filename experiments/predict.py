"""Predict survival for new patients with a selected (registered) model; validate it externally.

    python experiments/predict.py --model models:/impumae-rna_dna_mri/1 --cohort new.zarr --out predictions.parquet

``--model``: ``models:/NAME/VERSION`` (or ``models:/NAME@ALIAS``), ``runs:/RUN_ID/model`` or a local
pyfunc model directory; the registry is the one at ``--mlflow-uri``. The cohort's modalities are
matched to the model's by name and its genes/probes/clinical columns by feature name, in any order:
a feature the cohort lacks is filled as the fold-fitted transforms fill any missing value (the
training mean) and counted per patient (``missing_features_<modality>``); more than 20% of a
modality's features missing gives a warning; no feature in common, or a modality of another kind,
value type or shape, is refused with a message naming the modality.

The output table (parquet, one row per patient): ``risk`` (minus the restricted mean survival time;
higher = worse), ``risk_group`` (low/middle/high by the training patients' risk tertiles),
``median_survival`` (NaN when the curve stays above 0.5 over the model's time grid),
``survival_at_<t>`` for each of ``--times`` (default: the model's grid), ``present_modalities``,
``imputed_modalities`` (what the model filled in), the missing-feature counts, and ``time``/``event``.

The cohort's labels (a store always has them) are used for external validation unless
``--no-validate``: the holdout's metrics with bootstrap 95% CIs, Kaplan-Meier curves by risk group at
the training cut-points and a calibration plot, logged to MLflow as an ``external_validation`` run
linked to the model version (and written beside ``--out``). ``--imputed-out STORE`` writes a new store
with the cohort's missing modalities filled by the model's decoder; the source store is never modified.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# MLflow draws a progress bar for every artifact download (the model is fetched once)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/NAME/VERSION, runs:/RUN_ID/model or a model directory")
    p.add_argument("--cohort", required=True, help="the cohort store to predict (path or fsspec URL); only read")
    p.add_argument("--out", required=True, help="the prediction table to write (.parquet)")
    p.add_argument("--times", type=float, nargs="+", default=None, metavar="YEARS",
                   help="times (years) of the survival columns (default: the model's time grid)")
    p.add_argument("--imputed-out", default=None, metavar="STORE",
                   help="also write a new store with the missing modalities filled by the model's decoder")
    p.add_argument("--overwrite", action="store_true", help="replace --imputed-out if it exists")
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking/registry URI "
                   "(default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-validate", action="store_true", help="predict only: no external validation")
    p.add_argument("--experiment", default=None, help="MLflow experiment of the validation run "
                   "(default: the experiment of the run that produced the model)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    p.add_argument("--progress", action="store_true", help="a progress bar whatever the cohort's size "
                   "(shown anyway from 2000 patients)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from impumae import storage
    from impumae.data.store import Cohort, CohortError
    from impumae.engine.tracking import resolve_uri
    from impumae.export.align import AlignmentError, align_cohort
    from impumae.export.mlflow_model import load_selected_model, model_reference
    from impumae.export.predict import predict, prediction_table, write_imputed
    from impumae.export.external_validation import (
        external_metrics,
        format_results,
        log_external_validation,
        validation_figures,
    )

    uri = resolve_uri(args.mlflow_uri)
    try:
        model = load_selected_model(args.model, uri)
        cohort = Cohort.open(args.cohort)
        print(f"model {args.model}: {model.family}, modalities {list(model.subset)}, {len(model.grid)} grid times "
              f"up to {model.grid[-1]:.2f} years")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            aligned = align_cohort(model, cohort)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        print(f"cohort {cohort.url}: {len(cohort)} patients; features found: "
              + ", ".join(f"{m} {found}/{total}" for m, (found, total) in aligned.feature_overlap.items())
              + (f"; not in the cohort: {aligned.absent_modalities}" if aligned.absent_modalities else ""))
        prediction = predict(model, aligned, progress=True if args.progress else None)
        table = prediction_table(model, prediction, args.times)
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        storage.write_bytes(args.out, buffer.getvalue())
        print(f"wrote {args.out}: {len(table)} patients; risk groups "
              + ", ".join(f"{g} {n}" for g, n in table["risk_group"].value_counts().items()))

        if args.imputed_out:
            imputed, not_stored = write_imputed(model, aligned, cohort, args.imputed_out, overwrite=args.overwrite,
                                                progress=len(cohort) >= 2000 or args.progress)
            print(f"wrote {imputed.url}: missing modalities filled by the decoder"
                  + (f"; {not_stored} are not modalities of the source store and were not written" if not_stored else ""))

        if not args.no_validate:
            client = MlflowClient(tracking_uri=uri)
            results = external_metrics(model, prediction, n_boot=args.n_boot, seed=args.seed)
            print("external validation:\n" + format_results(results))
            reference = model_reference(client, args.model) if not Path(args.model).exists() else {"model_uri": args.model}
            experiment_id = None
            if args.experiment:
                found = client.get_experiment_by_name(args.experiment)
                experiment_id = found.experiment_id if found else client.create_experiment(args.experiment)
            run_id = log_external_validation(client, model, reference, prediction, results, cohort.url,
                                             args.n_boot, args.seed, experiment_id)
            out_dir = Path(storage.resolve(args.out)).parent if "://" not in args.out else None
            if out_dir is not None:
                stem = Path(args.out).stem
                with tempfile.TemporaryDirectory() as d:
                    figures = validation_figures(model, prediction, Path(d), title=Path(cohort.url).name)
                    for key in ("km", "calibration"):
                        path = Path(figures[key])
                        storage.write_bytes(str(out_dir / f"{stem}_{path.name}"), path.read_bytes())
                storage.write_bytes(str(out_dir / f"{stem}_external_validation.json"),
                                    json.dumps(results, indent=1).encode())
            print(f"external-validation run {run_id} in MLflow {uri}")
    except (ValueError, FileNotFoundError, CohortError, AlignmentError, MlflowException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
