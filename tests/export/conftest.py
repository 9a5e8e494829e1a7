"""A tiny refit (no Ray), registered in a temporary SQLite MLflow, and external cohorts built from other
patients with the features shuffled and partly missing."""
from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from impumae.data.store import write_cohort
from impumae.data.synthetic import build_synthetic, synthetic_plan
from impumae.data.cohort_view import REFIT, load_cohort_arrays
from impumae.engine.mae_fold import finetune_config, fit_mae_fold
from impumae.engine.pretrain_jobs import PretrainJob, run_pretraining
from impumae.export.mlflow_model import log_selected_model
from impumae.export.selected_model import SelectedModel

SUBSET = ("rna", "dna", "clinical")
MODEL = {"width": 32, "heads": 2, "mlp_ratio": 2, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2,
         "decoder_mlp": 64}
PRETRAIN = {"epochs": 1, "batch_size": 32, "lr": 1e-3}
REGISTERED = "tiny-impumae"


def external_store(path, seed: int, n_patients: int = 60, drop: dict | None = None, shuffle: bool = True,
                   specs: dict | None = None, value_types: dict | None = None):
    """A synthetic cohort of other patients (ids ``EXT-...``); per modality in ``drop`` that fraction of
    its features left out, and (``shuffle``) every named-feature modality's columns in a random order.
    Returns the store and ``{modality: kept feature names in the stored order}``."""
    plan, patients = synthetic_plan(n_patients, "tiny", seed)
    rng = np.random.default_rng(seed)
    orders = {}
    for m, names in plan.feature_names.items():
        keep = rng.permutation(len(names)) if shuffle else np.arange(len(names))
        n_keep = len(names) - int(round((drop or {}).get(m, 0.0) * len(names)))
        orders[m] = np.sort(keep[:n_keep]) if not shuffle else keep[:n_keep]
    plan.feature_names = {m: [plan.feature_names[m][j] for j in orders[m]] for m in plan.feature_names}
    plan.specs = [s.with_(shape=(len(orders[s.name]),)) if s.name in orders else s for s in plan.specs]
    if specs:
        plan.specs = [specs.get(s.name, s) for s in plan.specs]
    if value_types:
        plan.value_types = {**plan.value_types, **value_types}
    plan.labels = plan.labels.rename(index=lambda i: f"EXT-{i}")

    def reordered():
        for patient in patients:
            yield {m: (v[orders[m]] if m in orders and v is not None else v) for m, v in patient.items()}

    cohort = write_cohort(str(path), plan, reordered(), progress=False)
    return cohort, {m: plan.feature_names[m] for m in orders}


@pytest.fixture(scope="session")
def refit(tmp_path_factory):
    """(the fitted refit, its SelectedModel, the MLflow URI, the references of the registered version)."""
    root = tmp_path_factory.mktemp("export")
    url = str(build_synthetic(str(root / "cohort.zarr"), n_patients=120, seed=1, progress=False).url)
    ca = load_cohort_arrays(url, SUBSET)
    storage = str(root / "runs")
    run_pretraining([PretrainJob.for_subset(ca, SUBSET, REFIT, MODEL, PRETRAIN, 0)], storage, workers=0,
                    echo=lambda *_: None)
    cfg = finetune_config({"epochs": 2, "batch_size": 32, "n_bins": 8}, {}, seed=0)
    fitted = fit_mae_fold(ca, SUBSET, REFIT, cfg, storage_url=storage, model=MODEL, pretrain=PRETRAIN, seed=0)
    selected = SelectedModel.from_fit(fitted, info={"search": "tiny"})
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tiny", artifact_location=(root / "mlartifacts").as_uri())
    run = client.create_run(experiment, run_name="holdout", tags={"kind": "holdout"}).info.run_id
    refs = log_selected_model(client, selected, run, REGISTERED)
    client.set_terminated(run)
    return fitted, selected, uri, refs, root
