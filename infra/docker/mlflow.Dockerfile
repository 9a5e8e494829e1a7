# syntax=docker/dockerfile:1
#
# The MLflow tracking server for a cluster: the same MLflow as the engine (3.17.2), with basic
# authentication (Flask-WTF), the PostgreSQL driver and the S3 / GCS clients for the artifact store.
# It needs no files from the repository:
#
#   docker build -f infra/docker/mlflow.Dockerfile -t REGISTRY/impumae-mlflow:3.17.2 infra/docker
#
# Configuration comes from the environment and the command line (see infra/k8s/mlflow.yaml).
FROM python:3.11-slim-bookworm

ARG MLFLOW_VERSION=3.17.2

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary>=2.9,<3" "boto3>=1.34,<2" \
        "google-cloud-storage>=2.10,<4" \
 && useradd --create-home --uid 1000 mlflow \
 && python -c "import mlflow, flask_wtf, psycopg2, boto3; from google.cloud import storage; print('mlflow', mlflow.__version__)"

USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--help"]
