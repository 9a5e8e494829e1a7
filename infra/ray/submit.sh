#!/usr/bin/env bash
# Submit the impumae search to a running Ray cluster (Ray cluster launcher, or any Ray cluster whose
# job API you can reach) as `bash infra/entrypoint.sh ...`, the same command as the KubeRay RayJob.
#
#   bash infra/ray/submit.sh [ray job submit options] -- [cv_search options]
#   bash infra/ray/submit.sh --no-wait -- --subsets rna,dna rna,dna,mri --trials 64 --folds 5
#
# Reads from your environment (nothing is written to a file):
#   IMPUMAE_COHORT, IMPUMAE_STORAGE, MLFLOW_TRACKING_URI  (required), IMPUMAE_EXPERIMENT (optional)
#       -> passed to the job as runtime_env env_vars, so the driver and every Ray worker see them.
#   RAY_API_SERVER_ADDRESS  the job API, default http://127.0.0.1:8265 (the `ray dashboard` tunnel)
#   RAY_AUTH_MODE           default "token"; the token is read from ~/.ray/auth_token (or
#                           RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)
# Secrets are NOT sent this way (a job's runtime_env is visible in the dashboard): the MLflow
# password reaches the nodes as ~/.mlflow/credentials (file_mounts), S3/GCS access comes from the
# nodes' cloud identity.
#
# The working directory uploaded with the job is this checkout (code only; see the excludes), so
# the job runs the code you have here on top of the dependencies baked into the image.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

: "${IMPUMAE_COHORT:?set IMPUMAE_COHORT (e.g. s3://your-bucket/impumae/cohorts/tcga-gbmlgg.zarr)}"
: "${IMPUMAE_STORAGE:?set IMPUMAE_STORAGE (e.g. s3://your-bucket/impumae/runs)}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI (e.g. https://mlflow.example.org)}"

case "$MLFLOW_TRACKING_URI" in
  *://*@*) echo "submit.sh: MLFLOW_TRACKING_URI contains user info; put credentials in ~/.mlflow/credentials instead" >&2; exit 2 ;;
esac

# Split the arguments: before "--" for `ray job submit`, after it for cv_search.py. Without "--",
# everything goes to cv_search.py.
submit_opts=()
search_args=("$@")
for i in $(seq 1 $#); do
  if [[ "${!i}" == "--" ]]; then
    submit_opts=("${@:1:i-1}")
    search_args=("${@:i+1}")
    break
  fi
done

runtime_env="$(python3 - <<'PY'
import json
import os

names = ("IMPUMAE_COHORT", "IMPUMAE_STORAGE", "MLFLOW_TRACKING_URI", "IMPUMAE_EXPERIMENT")
print(json.dumps({
    "env_vars": {n: os.environ[n] for n in names if os.environ.get(n)},
    "excludes": [".git", ".venv", "**/__pycache__", "**/*.zarr", "mlruns", "mlflow.db",
                 "mlartifacts", "runs", "outputs", ".pytest_cache", "experiments/bench/results"],
}))
PY
)"

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

exec "${RAY_CLI:-ray}" job submit \
    --address "${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:8265}" \
    --working-dir "$root" \
    --runtime-env-json "$runtime_env" \
    ${submit_opts[@]+"${submit_opts[@]}"} \
    -- bash infra/entrypoint.sh ${search_args[@]+"${search_args[@]}"}
