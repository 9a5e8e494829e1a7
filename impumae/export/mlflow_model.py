"""The selected model in MLflow: a pyfunc model, logged as a LoggedModel of a run and registered.

Everything goes through an explicit ``MlflowClient`` (the process-wide tracking URI is never set):
the pyfunc model is saved to a temporary directory (``mlflow.pyfunc.save_model``: the
:class:`SelectedModelPyfunc` wrapper, the :class:`~impumae.export.model.SelectedModel` directory as
its artifact, a signature and an input example), uploaded as the artifacts of an MLflow 3
LoggedModel named ``model`` whose source run is the run that produced it (the holdout run of a
search), and registered as a new version of ``NAME``. ``runs:/<run id>/model``,
``models:/<model id>`` and ``models:/NAME/VERSION`` all load it; so does a local directory.

The pyfunc's input: a pandas DataFrame, one row per patient, columns ``<modality>/<feature>`` for
the modalities with named features (tabular, clinical), NaN = missing, a modality without a value
= absent (filled by the model); an optional ``patient_id`` column. Volumes and images cannot be sent
as columns: they are absent (imputed) in a served request; ``experiments/predict.py --cohort``
predicts from a cohort store with every kind. Output: one row per patient, ``risk``,
``risk_group``, ``median_survival``, ``survival_at_<t>`` for every time of the model's grid, the
present and imputed modalities and the missing-feature counts (:func:`prediction_table`).
Loading needs the ``impumae`` package importable, not the search's storage.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from impumae.export.align import align_frame, column
from impumae.export.selected_model import SelectedModel
from impumae.export.predict import predict, prediction_table, survival_column

ARTIFACT_KEY = "selected_model"
MODEL_NAME = "model"   # the LoggedModel's name: runs:/<run id>/model
REQUIREMENTS = ("torch", "numpy", "pandas", "scikit-survival", "zarr")


class SelectedModelPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: a table of patients in, the prediction table out (see the module docstring)."""

    def load_context(self, context):
        self.selected = SelectedModel.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return predict_frame(self.selected, model_input)


def predict_frame(selected: SelectedModel, frame: pd.DataFrame) -> pd.DataFrame:
    """The prediction table of a serving-input table (what the pyfunc returns)."""
    return prediction_table(selected, predict(selected, align_frame(selected, frame), progress=False))


def input_columns(selected: SelectedModel) -> list[str]:
    return [column(m, f) for m in selected.subset if m in selected.feature_names for f in selected.feature_names[m]]


def input_example(selected: SelectedModel) -> pd.DataFrame:
    """One made-up patient: every named feature at its training mean (the inverse transform of the
    model-space zero), so no training patient's data travels with the model."""
    row = {}
    for m in selected.subset:
        if m not in selected.feature_names:
            continue
        transform = selected.transforms.transforms[m]
        width = transform.output_spec(selected.specs[m]).shape[0]
        values = transform.inverse(np.zeros((1, width), np.float32))[0]
        row.update({column(m, f): float(v) for f, v in zip(selected.feature_names[m], values)})
    return pd.DataFrame([row])


def signature(selected: SelectedModel) -> ModelSignature:
    """Every feature column optional (a new cohort may lack some); the output's columns."""
    inputs = Schema([ColSpec("double", name, required=False) for name in input_columns(selected)])
    outputs = [ColSpec("string", "patient_id"), ColSpec("double", "risk"), ColSpec("string", "risk_group"),
               ColSpec("double", "median_survival"),
               *[ColSpec("double", survival_column(float(t))) for t in selected.grid],
               ColSpec("string", "present_modalities"), ColSpec("string", "imputed_modalities"),
               *[ColSpec("long", f"missing_features_{m}") for m in selected.feature_names]]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


@contextlib.contextmanager
def _quiet_pyfunc_logger():
    """MLflow's pyfunc logger below ERROR while a model is saved: it warns on every save that a
    Python object is serialised with CloudPickle (ours is a stateless class; the model itself is in
    its artifacts, read back with ``weights_only``) and announces the input example's validation,
    three console lines per search that nobody acts on."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def save_pyfunc(selected: SelectedModel, path: str | Path, mlflow_model: Model | None = None) -> Path:
    """The pyfunc model directory at ``path`` (which must not exist)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as d, _quiet_pyfunc_logger():
        artifact = selected.save(Path(d) / ARTIFACT_KEY)
        mlflow.pyfunc.save_model(str(path), python_model=SelectedModelPyfunc(), artifacts={ARTIFACT_KEY: str(artifact)},
                                 signature=signature(selected), input_example=input_example(selected),
                                 pip_requirements=[f"mlflow=={mlflow.__version__}", *REQUIREMENTS],
                                 mlflow_model=mlflow_model)
    return path


def log_selected_model(client: MlflowClient, selected: SelectedModel, run_id: str, register: str | None,
                       tags: dict | None = None) -> dict:
    """Log ``selected`` as the LoggedModel ``model`` of run ``run_id`` and register it as a new
    version of ``register`` (created if needed; None = log only). Returns the references:
    ``model_id``, ``model_uri`` (``models:/NAME/VERSION`` when registered, else ``runs:/ID/model``),
    ``runs_uri``, ``registered_name``, ``version``, ``source_run_id``."""
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        params={"family": selected.family, "subset": ",".join(selected.subset)},
                                        tags={k: str(v) for k, v in (tags or {}).items()}, model_type="impumae-survival")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    selected.info.update({"model_id": logged.model_id, "source_run_id": run_id})
    with tempfile.TemporaryDirectory() as d:
        local = save_pyfunc(selected, Path(d) / "model",
                            Model(artifact_path=logged.artifact_location, run_id=run_id, model_id=logged.model_id))
        client.log_model_artifacts(logged.model_id, str(local))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    refs = {"model_id": logged.model_id, "runs_uri": f"runs:/{run_id}/{MODEL_NAME}", "source_run_id": run_id,
            "model_uri": f"runs:/{run_id}/{MODEL_NAME}", "registered_name": None, "version": None}
    if register:
        try:
            client.create_registered_model(register)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # the source is the LoggedModel's artifact location, not models:/<model id>: MLflow 3.17's
        # SQL registry resolves the latter with a default client (the global tracking URI)
        version = client.create_model_version(register, logged.artifact_location, run_id=run_id,
                                              model_id=logged.model_id, tags={"family": selected.family})
        refs.update({"registered_name": register, "version": str(version.version),
                     "model_uri": f"models:/{register}/{version.version}"})
    return refs


def download(model_uri: str, tracking_uri: str | None = None) -> Path:
    """A local directory holding the pyfunc model at ``model_uri`` (``models:/NAME/VERSION``,
    ``models:/NAME@ALIAS``, ``models:/<model id>``, ``runs:/ID/model``, or a path)."""
    local = Path(model_uri)
    if local.exists():
        return local
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_location(model_uri, tracking_uri),
                                                    tracking_uri=tracking_uri, registry_uri=tracking_uri))


def artifact_location(model_uri: str, tracking_uri: str | None = None) -> str:
    """Where the artifacts of a ``models:/`` or ``runs:/`` model URI are, resolved with this
    ``tracking_uri``'s client (MLflow 3.17 resolves them with a default client, i.e. the global
    tracking URI, which this package never sets). Any other URI is returned as it is."""
    client = MlflowClient(tracking_uri=tracking_uri)
    if model_uri.startswith("models:/m-"):
        return client.get_logged_model(model_uri[len("models:/"):].split("/")[0]).artifact_location
    if model_uri.startswith("models:/"):
        version = model_version(client, model_uri)
        return client.get_model_version_download_uri(version.name, version.version)
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri[len("runs:/"):].partition("/")
        name = path.split("/")[0] or MODEL_NAME
        experiment_id = client.get_run(run_id).info.experiment_id
        for logged in client.search_logged_models([experiment_id], filter_string=f"name = '{name}'"):
            if logged.source_run_id == run_id:
                return logged.artifact_location
    return model_uri


def model_version(client: MlflowClient, model_uri: str):
    """The registered model version of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    path = model_uri[len("models:/"):]
    if "@" in path:
        name, alias = path.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = path.partition("/")
    if not version.isdigit():
        raise ValueError(f"{model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return client.get_model_version(name, version)


def load_selected_model(model_uri: str, tracking_uri: str | None = None) -> SelectedModel:
    """The :class:`SelectedModel` behind a pyfunc model URI or directory."""
    return mlflow.pyfunc.load_model(str(download(model_uri, tracking_uri))).unwrap_python_model().selected


def model_reference(client: MlflowClient, model_uri: str) -> dict:
    """What an external-validation run is linked to: the URI and, for ``models:/NAME/VERSION`` or
    ``runs:/ID/model``, the registered name, version, LoggedModel id and source run."""
    ref = {"model_uri": model_uri}
    if model_uri.startswith("models:/") and not model_uri.startswith("models:/m-"):
        mv = model_version(client, model_uri)
        ref.update({"registered_name": mv.name, "version": str(mv.version), "model_id": mv.model_id or "",
                    "source_run_id": mv.run_id or ""})
    elif model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/"):].split("/")[0]
        ref["source_run_id"] = run_id
        experiment_id = client.get_run(run_id).info.experiment_id
        found = [m for m in client.search_logged_models([experiment_id], filter_string=f"name = '{MODEL_NAME}'")
                 if m.source_run_id == run_id]
        if found:
            ref["model_id"] = found[0].model_id
    return ref


def export_refit(fitted, client: MlflowClient, run_id: str, register: str | None, info: dict | None = None) -> dict:
    """The search's one call after the refit: the refit (any family) as a :class:`SelectedModel`,
    logged as the LoggedModel ``model`` of ``run_id`` (the holdout run) and registered as a new
    version of ``register``. Returns :func:`log_selected_model`'s references."""
    selected = SelectedModel.from_fit(fitted, info)
    return log_selected_model(client, selected, run_id, register, tags={"subset": ",".join(selected.subset)})
