"""Predict survival for new patients with a selected (registered) model; validate it when labels exist.

    python experiments/predict.py --model models:/impumae-rna_dna_mri/1 --cohort new.zarr --out predictions.parquet
    python experiments/predict.py --model models:/impumae-rna_dna_mri/1 --modality rna=new_rna.csv \
        --modality clinical=new_clinical.csv --out predictions.csv

``--model``: ``models:/NAME/VERSION`` (or ``models:/NAME@ALIAS``), ``runs:/RUN_ID/model`` or a local
pyfunc model directory; the registry is the one at ``--mlflow-uri``. The patients come from a cohort
store (``--cohort``, every kind of modality; labels optional) or from tidy feature tables
(``--modality NAME=PATH``, one row per patient, the patient id in the first column, as
``build_cohort.py tables`` reads them; their values are taken to be of the model's value type). The
modalities are matched to the model's by name and the genes/probes/clinical columns by feature name,
in any order: a feature the source lacks is filled as the fold-fitted transforms fill any missing
value (the training mean) and counted per patient (``missing_features_<modality>``); more than 20% of a
modality's features missing gives a warning; no feature in common, or a modality of another kind,
value type or shape, is refused with a message naming the modality.

The output table (one row per patient; Parquet for ``.parquet``/``.pq``, CSV for ``.csv``/``.csv.gz``, TSV
for ``.tsv``): ``risk`` (minus the restricted mean survival time; higher = worse), ``risk_group``
(low/middle/high by the training patients' risk tertiles), ``median_survival`` (empty when the curve
stays above 0.5 over the model's time grid), ``survival_at_<t>`` for each of ``--times`` (default: the
model's grid; each in (0, last grid time], or past it with ``--extrapolate``, marked ``_extrapolated``),
``present_modalities``, ``imputed_modalities`` (what the model filled in), the missing-feature counts,
and ``time``/``event`` when the patients are labelled.

Labelled patients (a store with ``labels/time`` and ``labels/event``, or ``--labels`` with tables) are
validated unless ``--no-validate``: the holdout's metrics with bootstrap 95% CIs, Kaplan-Meier curves
by risk group at the training cut-points and a calibration plot, logged to MLflow as an
``external_validation`` run linked to the model version (and written beside ``--out``); labels without
a single death are not validated. ``--imputed-out STORE`` (impuTMAE models, ``--cohort`` only) writes a
new store with the cohort's missing modalities filled by the model's decoder; the source store is never
modified. Every option is checked before any work; errors (exit 2) name the file, option or modality.
"""
from __future__ import annotations

import argparse
import gzip
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


OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv", ".tsv": "tsv"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/NAME/VERSION, runs:/RUN_ID/model or a model directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--cohort", help="the cohort store to predict (path or fsspec URL; labels optional); only read")
    source.add_argument("--modality", action="append", default=None, metavar="NAME=PATH",
                        help="a feature table of modality NAME (CSV, TSV or parquet; one row per patient, the id in the "
                             "first column; repeat per modality), values of the model's value type")
    p.add_argument("--labels", default=None, metavar="PATH", help="with --modality: a labels table (patient_id, time, "
                   "event) labelling every patient, to validate the model on them")
    p.add_argument("--time-unit", choices=("years", "months", "days"), default="years",
                   help="unit of the --labels time column (default: %(default)s)")
    p.add_argument("--matrix-id-column", default=None, help="patient id column of the --modality tables "
                   "(default: their first column)")
    p.add_argument("--out", required=True, help="the prediction table to write: .parquet, .csv (.csv.gz) or .tsv")
    p.add_argument("--times", type=float, nargs="+", default=None, metavar="YEARS",
                   help="times (years, > 0) of the survival columns (default: the model's time grid)")
    p.add_argument("--extrapolate", action="store_true", help="allow --times past the model's last grid time: their "
                   "columns hold the curve's last value and are named survival_at_<t>_extrapolated (default: refused)")
    p.add_argument("--imputed-out", default=None, metavar="STORE",
                   help="also write a new store with the missing modalities filled by the model's decoder (--cohort only)")
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


def output_format(path: str) -> str:
    """The table format of ``--out`` from its suffix."""
    name = path.lower()
    for suffix, kind in sorted(OUTPUT_FORMATS.items(), key=lambda item: -len(item[0])):
        if name.endswith(suffix):
            return kind
    raise ValueError(f"--out {path}: unknown table format; end it in {', '.join(OUTPUT_FORMATS)}")


def table_bytes(table, kind: str, path: str) -> bytes:
    if kind == "parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        return buffer.getvalue()
    text = table.to_csv(index=False, sep="," if kind == "csv" else "\t").encode()
    return gzip.compress(text) if path.lower().endswith(".gz") else text


def check_options(args) -> str:
    """Everything checkable before the model is loaded; returns the output format."""
    from impumae import storage

    kind = output_format(args.out)
    if args.labels and not args.modality:
        raise ValueError("--labels goes with --modality tables; a cohort store carries its own labels")
    if args.imputed_out:
        if not args.cohort:
            raise ValueError("--imputed-out needs --cohort: the imputed store is a copy of a source store")
        if storage.exists(args.imputed_out) and not args.overwrite:
            raise ValueError(f"--imputed-out {args.imputed_out} already exists; pass --overwrite to replace it")
    if args.n_boot < 1:
        raise ValueError(f"--n-boot {args.n_boot}: must be >= 1")
    return kind


def read_source(args):
    """(cohort or None, {modality: feature table}, labels or None) from --cohort or --modality/--labels."""
    from impumae.data.store import Cohort
    from impumae.data.tables import _pairs, read_labels, read_matrix
    from impumae.modalities import canonical

    if args.cohort:
        return Cohort.open(args.cohort), None, None
    paths = {canonical(name): path for name, path in _pairs(args.modality, "--modality").items()}
    if len(paths) != len(args.modality):
        raise ValueError(f"--modality names a modality twice (aliases resolved): {args.modality}")
    matrices = {name: read_matrix(path, args.matrix_id_column) for name, path in paths.items()}
    labels = read_labels(args.labels, time_unit=args.time_unit) if args.labels else None
    return None, (matrices, paths), labels


def main(argv=None) -> int:
    args = parse_args(argv)
    from mlflow.exceptions import MlflowException

    from impumae import storage
    from impumae.data.store import CohortError
    from impumae.engine.tracking import resolve_uri
    from impumae.export.align import AlignmentError, align_cohort, align_matrices
    from impumae.export.mlflow_model import load_selected_model
    from impumae.export.predict import check_times, cohort_imputation_lines, predict, prediction_table, write_imputed

    uri = resolve_uri(args.mlflow_uri)
    try:
        kind = check_options(args)
        cohort, tables, labels = read_source(args)
        model = load_selected_model(args.model, uri)
        times = check_times(model, args.times, args.extrapolate) if args.times else None
        if args.imputed_out and model.predictor.decoder() is None:
            raise ValueError(f"--imputed-out: a {model.family} model has no decoder; only impuTMAE models impute modalities")
        print(f"model {args.model}: {model.family}, modalities {list(model.subset)}, {len(model.grid)} grid times "
              f"up to {model.grid[-1]:.2f} years")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cohort is not None:
                aligned, where = align_cohort(model, cohort), f"cohort {cohort.url}"
            else:
                matrices, paths = tables
                aligned, where = align_matrices(model, matrices, paths, labels), "tables " + ", ".join(paths.values())
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        for line in cohort_imputation_lines(cohort):  # an imputed source store says what filled it
            print(line)
        print(f"{where}: {len(aligned.view.ids)} patients{'' if aligned.has_labels else ' (no labels)'}; features found: "
              + ", ".join(f"{m} {found}/{total}" for m, (found, total) in aligned.feature_overlap.items())
              + (f"; not given: {aligned.absent_modalities}" if aligned.absent_modalities else ""))
        prediction = predict(model, aligned, progress=True if args.progress else None)
        table = prediction_table(model, prediction, times)
        storage.write_bytes(args.out, table_bytes(table, kind, args.out))
        print(f"wrote {args.out}: {len(table)} patients; risk groups "
              + ", ".join(f"{g} {n}" for g, n in table["risk_group"].value_counts().items()))

        if args.imputed_out:
            imputed, not_stored = write_imputed(model, aligned, cohort, args.imputed_out, overwrite=args.overwrite,
                                                progress=len(cohort) >= 2000 or args.progress)
            print(f"wrote {imputed.url}: missing modalities filled by the decoder"
                  + (f"; {not_stored} are not modalities of the source store and were not written" if not_stored else ""))

        events = int(aligned.view.event.sum()) if aligned.has_labels else 0
        if args.no_validate:
            pass
        elif not aligned.has_labels:
            print("no labels (time, event): predictions only, no external validation")
        elif events == 0:
            print("the labels record no death: nothing to validate against; no external-validation run logged")
        else:
            validate(args, uri, model, prediction, cohort.url if cohort is not None else args.labels)
    except (ValueError, FileNotFoundError, CohortError, AlignmentError, MlflowException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def validate(args, uri: str, model, prediction, source: str) -> None:
    """External validation: metrics, an MLflow run linked to the model, figures beside --out."""
    from mlflow.tracking import MlflowClient

    from impumae import storage
    from impumae.export.mlflow_model import model_reference
    from impumae.export.external_validation import external_metrics, format_results, log_external_validation, validation_figures

    client = MlflowClient(tracking_uri=uri)
    results = external_metrics(model, prediction, n_boot=args.n_boot, seed=args.seed)
    print("external validation:\n" + format_results(results))
    reference = model_reference(client, args.model) if not Path(args.model).exists() else {"model_uri": args.model}
    experiment_id = None
    if args.experiment:
        found = client.get_experiment_by_name(args.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(args.experiment)
    run_id = log_external_validation(client, model, reference, prediction, results, source,
                                     args.n_boot, args.seed, experiment_id)
    out_dir = Path(storage.resolve(args.out)).parent if "://" not in args.out else None
    if out_dir is not None:
        stem = Path(args.out).name.split(".")[0]
        with tempfile.TemporaryDirectory() as d:
            figures = validation_figures(model, prediction, Path(d), title=Path(source).name)
            for key in ("km", "calibration"):
                path = Path(figures[key])
                storage.write_bytes(str(out_dir / f"{stem}_{path.name}"), path.read_bytes())
        storage.write_bytes(str(out_dir / f"{stem}_external_validation.json"), json.dumps(results, indent=1).encode())
    print(f"external-validation run {run_id} in MLflow {uri}")


if __name__ == "__main__":
    sys.exit(main())
