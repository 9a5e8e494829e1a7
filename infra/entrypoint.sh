#!/usr/bin/env bash
# The one cluster entrypoint of impumae.
#
# Every way of running the cross-validated search on a cluster goes through this file: the KubeRay
# RayJob (infra/k8s/rayjob.yaml), `ray job submit` on a Ray cluster launcher cluster
# (infra/ray/submit.sh, infra/ray/README.md) and the local two-node cluster test. It takes its
# settings from the environment and passes every argument on to experiments/cv_search.py:
#
#   IMPUMAE_COHORT       (required) the zarr cohort store: a path or an fsspec URL (s3://, gs://)
#   IMPUMAE_STORAGE      (required) Ray run storage and checkpoints: a path or s3:// / gs:// URL
#   MLFLOW_TRACKING_URI  (required) the MLflow tracking server, e.g. http://mlflow.impumae:5000
#   IMPUMAE_EXPERIMENT   (optional) MLflow experiment name, default "impumae"
#   RAY_ADDRESS          (optional) default "auto" (inside a Ray job Ray sets it for you)
#   IMPUMAE_PYTHON       (optional) the Python interpreter, default "python"
#
# Credentials are never arguments: MLflow reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
# (or ~/.mlflow/credentials), fsspec reads AWS_* / GOOGLE_APPLICATION_CREDENTIALS or the node's
# cloud identity.
#
# Example:  bash infra/entrypoint.sh --subsets rna,dna rna,dna,mri --trials 64 --folds 5
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

: "${IMPUMAE_COHORT:?set IMPUMAE_COHORT to the cohort store (a path, or an s3:// or gs:// URL)}"
: "${IMPUMAE_STORAGE:?set IMPUMAE_STORAGE to the Ray run storage (a path, or an s3:// or gs:// URL)}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to the MLflow tracking server (e.g. http://mlflow:5000)}"

python_bin="${IMPUMAE_PYTHON:-python}"

# What runs, for the job log (the MLflow URI is left out: it may carry credentials).
echo "impumae entrypoint: ray=${RAY_ADDRESS:-auto} cohort=${IMPUMAE_COHORT}" \
     "storage=${IMPUMAE_STORAGE} experiment=${IMPUMAE_EXPERIMENT:-impumae} args: $*" >&2

exec "$python_bin" experiments/cv_search.py \
    --address "${RAY_ADDRESS:-auto}" \
    --cohort "$IMPUMAE_COHORT" \
    --storage "$IMPUMAE_STORAGE" \
    --mlflow-uri "$MLFLOW_TRACKING_URI" \
    --experiment "${IMPUMAE_EXPERIMENT:-impumae}" \
    "$@"
