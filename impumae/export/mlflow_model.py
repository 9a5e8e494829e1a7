"""The selected model in MLflow: a pyfunc model, logged as a LoggedModel of a run and registered.

Everything goes through an explicit ``MlflowClient`` (the process-wide tracking URI is never set):
the pyfunc model is saved to a temporary directory (``mlflow.pyfunc.save_model``: the
:class:`SelectedModelPyfunc` wrapper, the :class:`~impumae.export.selected_model.SelectedModel` directory as
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
import importlib.metadata
import logging
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from impumae.export.align import (
    MISSING_WARN_FRACTION,
    FeatureAlignmentWarning,
    RequestError,
    RequestLayout,
    align_frame,
    column,
    request_columns,
)
from impumae.export.selected_model import ModelLoadError, SelectedModel
from impumae.export.predict import predict, prediction_columns, survival_column

ARTIFACT_KEY = "selected_model"
MODEL_NAME = "model"   # the LoggedModel's name: runs:/<run id>/model
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "scipy", "scikit-learn", "scikit-survival", "zarr")
SINGLE_THREAD_ROWS = 512  # requests of at most this many rows run on one torch thread (docs/benchmarks.md)
WHEELS = "wheels"   # in the model directory: the impumae wheel its requirements name


class SelectedModelPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: a table of patients in, the prediction table out (see the module docstring).
    A request the model cannot answer (:class:`~impumae.export.align.RequestError`) is an
    ``INVALID_PARAMETER_VALUE`` :class:`MlflowException` (HTTP 400 from ``mlflow models serve``) with
    its message; missing values in the answer are ``None`` (JSON ``null``)."""

    def load_context(self, context):
        self.selected = SelectedModel.load(context.artifacts[ARTIFACT_KEY])
        self.layout = RequestLayout(self.selected)   # once, not per request

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        try:
            with torch_threads(1 if len(model_input) <= SINGLE_THREAD_ROWS else None):
                return pd.DataFrame(json_ready(predict_columns(self.selected, model_input, self.layout)))
        except RequestError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` (None: unchanged) for a block, and autograd off
    (``inference_mode``). A small request is faster on one thread: the tiny model's matrix products are
    too small to share, and on a busy CPU each extra thread waits for a core (docs/benchmarks.md). The
    thread count is only set when it differs (setting it costs a little even when it does not change)."""
    import torch  # noqa: PLC0415

    before = torch.get_num_threads()
    change = n is not None and n != before
    if change:
        torch.set_num_threads(n)
    try:
        with torch.inference_mode():
            yield
    finally:
        if change:
            torch.set_num_threads(before)


def json_ready(columns: dict) -> dict:
    """``columns`` (``{name: values}``) with every NaN of a float column as ``None`` (JSON ``null``; bare
    ``NaN`` is not JSON)."""
    out = {}
    for name, values in columns.items():
        array = np.asarray(values) if not isinstance(values, list) else None
        if array is not None and array.dtype.kind == "f" and np.isnan(array).any():
            out[name] = [None if v != v else v for v in array.tolist()]   # noqa: PLR0124 (v != v: NaN)
        else:
            out[name] = values
    return out


def predict_frame(selected: SelectedModel, frame: pd.DataFrame, layout: RequestLayout | None = None) -> pd.DataFrame:
    """The prediction table of a serving-input table (what the pyfunc returns, before ``json_ready``),
    with what the request lacked: ``missing_fraction_<m>`` (of the model's features of a present
    modality without a value; NaN = the modality is absent and filled by the model), ``unknown_columns``
    (request columns that are no feature of the model, ignored) and ``warnings`` (per patient, a modality
    with more than 20% of its features missing, and the ignored columns). Refused (:class:`RequestError`):
    see :func:`~impumae.export.align.align_frame`."""
    return pd.DataFrame(predict_columns(selected, frame, layout))


def predict_columns(selected: SelectedModel, frame: pd.DataFrame, layout: RequestLayout | None = None) -> dict:
    """:func:`predict_frame`'s columns as ``{name: values}`` (the table is built once, by the caller)."""
    layout = layout or RequestLayout(selected)
    columns = request_columns(selected, frame, layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureAlignmentWarning)   # reported per patient in the answer
        aligned = align_frame(selected, frame, layout, columns)
    table = prediction_columns(selected, predict(selected, aligned, progress=False))
    n = len(aligned.view.ids)
    notes = [[] for _ in range(n)]
    for m, counts in aligned.missing_features.items():
        total = len(selected.feature_names[m])
        fraction = np.where(aligned.view.present[m], counts / total, np.nan)
        table[f"missing_fraction_{m}"] = fraction
        for i in np.flatnonzero(fraction > MISSING_WARN_FRACTION):
            notes[i].append(f"{m}: {counts[i]} of the model's {total} features have no value ({fraction[i]:.0%}); "
                            "filled with the training means")
    table["unknown_columns"] = [",".join(columns.unknown)] * n
    if columns.unknown:
        shown = ", ".join(columns.unknown[:5]) + (" ..." if len(columns.unknown) > 5 else "")
        for note in notes:
            note.append(f"{len(columns.unknown)} column(s) are no feature of the model and were ignored: {shown}")
    table["warnings"] = ["; ".join(n) for n in notes]
    return table


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
    """The output's columns only. No input schema: MLflow's enforcement of one drops every column it does
    not list (``patient_id``, a misspelt gene) before the model sees the request, so the model could
    neither pass ids through nor say what it ignored, and checking ~650 optional columns cost most of a
    one-row request's time. The expected columns are the input example's (every feature, at its
    training mean) and :func:`input_columns`."""
    outputs = [ColSpec("string", "patient_id"), ColSpec("double", "risk"), ColSpec("string", "risk_group"),
               ColSpec("double", "median_survival"),
               *[ColSpec("double", survival_column(float(t))) for t in selected.grid],
               ColSpec("string", "present_modalities"), ColSpec("string", "imputed_modalities"),
               *[ColSpec("long", f"missing_features_{m}") for m in selected.feature_names],
               *[ColSpec("double", f"missing_fraction_{m}", required=False) for m in selected.feature_names],
               ColSpec("string", "unknown_columns"), ColSpec("string", "warnings")]
    return ModelSignature(inputs=None, outputs=Schema(outputs))


def pinned_requirements(wheel: str | None = None) -> list[str]:
    """The model's pip requirements: impumae (``wheel``, a path inside the model directory, when the
    package was built from a source tree; else the installed version) and the installed versions of the
    libraries a prediction imports, so ``mlflow models serve --env-manager virtualenv`` rebuilds the
    environment that saved the model."""
    pins = [f"{dist}=={importlib.metadata.version(dist)}" for dist in REQUIREMENTS]
    return [wheel or f"impumae=={importlib.metadata.version('impumae')}", *pins]


def build_impumae_wheel(out_dir: Path) -> Path | None:
    """A wheel of the imported impumae package, built from its source tree (copied first, so the tree
    gets no build files) with pip; None when impumae is not imported from a source tree."""
    import impumae  # noqa: PLC0415

    root = Path(impumae.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        return None
    with tempfile.TemporaryDirectory() as d:
        source = Path(d) / "impumae-src"
        shutil.copytree(root / "impumae", source / "impumae", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md"):
            if (root / name).is_file():
                shutil.copy2(root / name, source / name)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                               "-q", "-w", str(out_dir), str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        logging.getLogger(__name__).warning("could not build an impumae wheel for the model (%s); its requirements "
                                            "name impumae by version", done.stderr.strip()[-500:])
        return None
    return next(out_dir.glob("impumae-*.whl"))


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
    """The pyfunc model directory at ``path`` (which must not exist), with impumae's wheel under
    ``wheels/`` (see :func:`pinned_requirements`)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as d, _quiet_pyfunc_logger():
        artifact = selected.save(Path(d) / ARTIFACT_KEY)
        wheel = build_impumae_wheel(Path(d) / WHEELS)
        requirement = f"{WHEELS}/{wheel.name}" if wheel else None
        mlflow.pyfunc.save_model(str(path), python_model=SelectedModelPyfunc(), artifacts={ARTIFACT_KEY: str(artifact)},
                                 signature=signature(selected), input_example=input_example(selected),
                                 pip_requirements=pinned_requirements(requirement), mlflow_model=mlflow_model)
        if wheel:
            (path / WHEELS).mkdir()
            shutil.copy2(wheel, path / WHEELS / wheel.name)
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
    if "://" not in model_uri and not model_uri.startswith(("models:/", "runs:/")):
        raise ModelLoadError(f"--model {model_uri}: no such model directory ({local.resolve()}), and not a "
                             "models:/NAME/VERSION or runs:/RUN_ID/model URI")
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_location(model_uri, tracking_uri),
                                                        tracking_uri=tracking_uri, registry_uri=tracking_uri))
    except MlflowException as e:
        raise ModelLoadError(f"--model {model_uri}: {e.message} (registry {tracking_uri})") from None
    except OSError as e:
        raise ModelLoadError(f"--model {model_uri}: cannot download it ({e})") from None


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
    """The :class:`SelectedModel` behind a pyfunc model URI or directory. A missing or unreadable model is a
    :class:`ModelLoadError` naming the file and what is wrong."""
    local = download(model_uri, tracking_uri)
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        raise ModelLoadError(f"{local}: no MLmodel file; not an MLflow model directory")
    try:
        flavor = Model.load(str(mlmodel)).flavors["python_function"]
    except Exception as e:  # noqa: BLE001 (YAML, missing keys: all mean the same to the user)
        raise ModelLoadError(f"{mlmodel}: cannot read it as an MLflow model ({type(e).__name__}: {e})") from None
    try:
        return mlflow.pyfunc.load_model(str(local)).unwrap_python_model().selected
    except Exception as e:  # noqa: BLE001
        cause = e
        while not isinstance(cause, ModelLoadError) and (cause.__cause__ or cause.__context__) is not None:
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ModelLoadError):
            raise ModelLoadError(str(cause)) from None
        if isinstance(cause, (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ModuleNotFoundError)):
            where = local / str(flavor.get("python_model", "python_model.pkl"))
            raise ModelLoadError(f"{where}: cannot unpickle the model wrapper ({type(cause).__name__}: {cause})") from None
        raise ModelLoadError(f"{local}: MLflow cannot load the model ({type(e).__name__}: {e})") from None


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
