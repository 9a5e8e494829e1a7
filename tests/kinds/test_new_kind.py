"""A new kind of modality, shipped as a plugin the way a user ships one, runs through the whole
method, in this process and in fresh ones.

``plane`` (``tests/kinds/plane_plugin/impumae_plane.py``: one 2-D single-channel image per patient,
square tokens, 2-D sin-cos positions, written against the ``impumae.kinds.Kind`` base class alone)
is a distribution of its own whose entry point in the group ``impumae.kinds`` names its module.
pip installs it into a directory of its own, put on the path as ``PYTHONPATH`` would; nothing here
imports the module or registers the kind: ``kinds.get("plane")`` finds it (``impumae.plugins``).
In this process, with a tabular modality beside it: written to a cohort store, loaded by the engine,
fold-transformed, pretrained (the engine's pretraining jobs), imputed and fine-tuned for survival
(the engine's one fold-fitting path). In fresh interpreters (every Ray worker, the MLflow model
loader and every command is one): the store reopened, a Ray-backed search with pretraining in Ray
tasks and trials in Tune's workers, and its registered model loaded and predicting.
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from impumae import kinds, plugins
from impumae.data.cohort_view import CohortArrays, fit_transforms, load_cohort_arrays, make_batchable, population
from impumae.data.store import CohortPlan, write_cohort
from impumae.engine.mae_fold import fit_mae_fold
from impumae.engine.pretrain_jobs import PretrainJob, load_pretrained, run_pretraining
from impumae.modalities import ModalitySpec
from impumae.model import MAEConfig, MultimodalMAE, SurvivalConfig, SurvivalModel
from impumae.train.finetune_loop import FinetuneConfig

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SOURCE = Path(__file__).parent / "plane_plugin"

TINY = dict(width=32, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64)


SUBSET = ("rna", "plane")  # rna first: the anchor modality of fine-tuning


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The plugin's distribution installed by pip into a directory of its own (its source copied
    first: setuptools writes build files beside the source)."""
    source = tmp_path_factory.mktemp("plane_source")
    shutil.copytree(PLUGIN_SOURCE, source, dirs_exist_ok=True)
    site = tmp_path_factory.mktemp("plane_site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (site / "impumae_plane.py").exists() and list(site.glob("impumae_plane-*.dist-info/entry_points.txt"))
    return site


@pytest.fixture(scope="module")
def plane(plugin_site) -> kinds.Kind:
    """The installed plugin on this process's path, as PYTHONPATH puts it: the kind is found by its
    entry point the first time its name is asked for."""
    sys.path.insert(0, str(plugin_site))
    importlib.invalidate_caches()
    try:
        assert "impumae_plane" in plugins.declared()
        yield kinds.get("plane")
    finally:
        sys.path.remove(str(plugin_site))


@pytest.fixture(scope="module")
def specs(plane) -> dict[str, ModalitySpec]:
    return {"rna": ModalitySpec("rna", "tabular", (12,), patch=3, depth=1),
            "plane": ModalitySpec("plane", "plane", (8, 8), patch=4, depth=1)}


def cohort(url: str, specs, n=60, seed=0) -> CohortArrays:
    """A cohort store of both modalities, driven by one latent per patient (so each predicts the
    other), ~25% missing; survival times shorter for a larger latent. Holdout: the last 12
    patients; 3 folds. Loaded back as the engine loads any cohort."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    rna = z @ rng.normal(size=(2, 12)) + 0.1 * rng.normal(size=(n, 12))
    yy, xx = np.mgrid[0:8, 0:8] / 7.0
    plane = 5.0 + z[:, :1, None] * yy + z[:, 1:, None] * xx + 0.05 * rng.normal(size=(n, 8, 8))
    present = {"rna": rng.random(n) > 0.25, "plane": rng.random(n) > 0.25}
    present["rna"][:3] = True                       # every fold has anchor patients
    holdout = np.arange(n) >= n - 12
    labels = pd.DataFrame({"time": rng.exponential(np.exp(-z[:, 0])), "event": (rng.random(n) < 0.7).astype(int),
                           "group": np.where(holdout, "test", "train"),
                           "fold": np.where(holdout, np.nan, np.arange(n) % 3)},
                          index=[f"P{i:03d}" for i in range(n)])
    plan = CohortPlan(labels=labels, specs=list(specs.values()), provenance={"source": "test_new_kind"})
    patients = ({"rna": rna[i].astype(np.float32) if present["rna"][i] else None,
                 "plane": plane[i].astype(np.float32) if present["plane"][i] else None} for i in range(n))
    stored = write_cohort(url, plan, patients, n_folds=3, progress=False)
    assert stored.specs["plane"].kind_object is kinds.get("plane") and stored.value_types["plane"] == "raw"
    return load_cohort_arrays(stored.url, SUBSET)


def test_the_spec_asks_the_kind_the_plugin_registered(plane, specs):
    assert type(plane).__module__ == "impumae_plane"  # loaded from the installed plugin, not from this file
    spec = specs["plane"]
    assert spec.kind_object is plane and "plane" in kinds.names()
    assert (spec.n_tokens, spec.patch_dim, spec.tokenised) == (4, 16, True)
    with pytest.raises(ValueError, match=r"plane shape \(8, 6\) must be \(H, W\)"):
        ModalitySpec("bad", "plane", (8, 6), patch=4)
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(type(plane)())
    # a spec and a model built on it copy and pickle with the one registered kind object
    assert pickle.loads(pickle.dumps(spec)).kind_object is plane
    assert copy.deepcopy(MultimodalMAE(specs, MAEConfig(**TINY))).kinds["plane"] is plane


def test_patches_keep_each_square_together_and_round_trip(plane, specs):
    spec = specs["plane"]
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 8, 8)
    patches = plane.patchify(spec, x)
    assert patches.shape == (2, 4, 16)
    assert torch.equal(patches[0, 1], x[0, :4, 4:].reshape(-1))  # token (0, 1): rows 0-3, columns 4-7
    assert torch.equal(plane.unpatchify(spec, patches), x)


def test_store_pretrain_impute_and_finetune_with_the_new_kind(plane, specs, tmp_path):
    ca = cohort(str(tmp_path / "plane.zarr"), specs)
    assert ca.arrays["plane"].shape == (60, 8, 8) and int(ca.holdout.sum()) == 12 and ca.n_folds == 3
    train_idx = ca.train_indices(0)
    transforms = fit_transforms(ca, SUBSET, train_idx)
    assert isinstance(transforms.transforms["plane"], plane.transform)
    train_plane = ca.arrays["plane"][train_idx[ca.present["plane"][train_idx]]]
    assert transforms.transforms["plane"].center == pytest.approx(float(train_plane.mean()), rel=1e-5)

    # pretraining: the engine's job for fold 0 (its training patients with either modality), in-process
    storage = str(tmp_path / "runs")
    pretrain_cfg = dict(epochs=8, batch_size=8, lr=3e-3, hide_modality_prob=0.25)
    job = PretrainJob.for_subset(ca, SUBSET, 0, TINY, pretrain_cfg, seed=0)
    meta = run_pretraining([job], storage, workers=0, echo=lambda line: None)[job.key]
    assert set(meta["train_ids"]) <= set(ca.ids[train_idx])
    losses = [h["loss"] for h in meta["history"]]
    assert set(meta["history"][0]) >= {"epoch", "loss", "loss_rna", "loss_plane"}
    assert all(np.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], [round(v, 3) for v in losses]
    mae = load_pretrained(job, storage).model
    assert mae.input_adapters["plane"].pos.shape == (4, 32)

    # imputation: the plane comes back in its own shape, present planes untouched
    rows = population(ca, SUBSET, train_idx, "pretrain")
    batch = make_batchable(ca, SUBSET, transforms, rows)
    present = {m: batch.present[m].clone() for m in SUBSET}
    present["plane"][:4] = False
    filled = mae.impute(batch.x, present)
    assert filled["plane"].shape == (len(rows), 8, 8) and torch.isfinite(filled["plane"]).all()
    assert torch.equal(filled["plane"][present["plane"]], batch.x["plane"][present["plane"]])
    assert not torch.equal(filled["plane"][:4], torch.zeros(4, 8, 8))
    back = transforms.inverse({"plane": filled["plane"].numpy()})["plane"]
    assert back.shape == (len(rows), 8, 8) and back.dtype == np.float32

    # fine-tuning and validation: the engine's one fold-fitting path, decoder imputation of missing planes
    fit = fit_mae_fold(ca, SUBSET, 0, FinetuneConfig(epochs=2, batch_size=8, lr=1e-3, n_bins=4, seed=0),
                   storage_url=storage, model=TINY, pretrain=pretrain_cfg, seed=0)
    assert not ca.present["plane"][fit.train_rows].all()  # some training patients lack the plane
    assert all(np.isfinite(h["train_loss"]) for h in fit.history)
    logits = fit.predict(fit.val_rows)
    assert logits.shape == (len(fit.val_rows), 4) and np.isfinite(logits).all()

    # the other ways to treat a missing plane use the kind's positions and encoder states too
    val = make_batchable(ca, SUBSET, fit.transforms, fit.val_rows)
    for imputation in ("mask_token", "drop"):
        model = SurvivalModel(copy.deepcopy(mae), SurvivalConfig(n_bins=4, imputation=imputation))
        model.eval()
        with torch.no_grad():
            out = model(val.x, val.present)
        assert out.shape == (len(val), 4) and torch.isfinite(out).all()
    assert plane.baseline_summary(batch.x["plane"].numpy()).shape == (len(rows), 2)


# ------------------------------------------------------------------------ fresh interpreters
REOPEN = textwrap.dedent("""
    import sys
    from impumae.data.cohort_view import load_cohort_arrays
    ca = load_cohort_arrays(sys.argv[1], ("rna", "plane"))
    print(type(ca.specs["plane"].kind_object).__module__, ca.arrays["plane"].shape)
""")


def _python(code_or_args, env_path: list[Path], cwd: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """A fresh interpreter that has impumae (installed) and ``env_path`` on its path, nothing registered."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", plugins.ENVIRONMENT_VARIABLE)}
    environment.update(PYTHONPATH=os.pathsep.join(map(str, env_path)), PYTHONUNBUFFERED="1", **env)
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def plane_store(plane, specs, tmp_path_factory) -> str:
    return cohort(str(tmp_path_factory.mktemp("store") / "plane.zarr"), specs).url


def test_a_fresh_interpreter_reopens_the_store_with_the_plugin_declared(plane_store, plugin_site, tmp_path):
    # not declared: the symptom
    bare = _python([*("-c", REOPEN), plane_store], [], tmp_path)
    assert bare.returncode != 0 and "unknown kind 'plane'" in bare.stderr
    # installed (entry point in the group impumae.kinds)
    installed = _python([*("-c", REOPEN), plane_store], [plugin_site], tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert installed.stdout.split() == ["impumae_plane", "(60,", "8,", "8)"]
    # only importable (no distribution), named by IMPUMAE_PLUGINS
    module_only = tmp_path / "module_only"
    module_only.mkdir()
    shutil.copy(PLUGIN_SOURCE / "impumae_plane.py", module_only)
    named = _python([*("-c", REOPEN), plane_store], [module_only], tmp_path, IMPUMAE_PLUGINS="impumae_plane")
    assert named.returncode == 0, named.stderr[-3000:]
    assert named.stdout.split()[0] == "impumae_plane"


SEARCH_SPACE = """
model: {width: 32, heads: 2, mlp_ratio: 2.0, decoder_width: 32, decoder_depth: 1, decoder_heads: 2, decoder_mlp: 64}
pretrain: {epochs: 2, batch_size: 16, lr: 1.0e-3}
finetune: {epochs: 2, batch_size: 16, n_bins: 4}
search:
  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
"""

PREDICT = textwrap.dedent("""
    import sys
    import numpy as np
    from impumae.data.store import Cohort
    from impumae.export.align import align_cohort
    from impumae.export.mlflow_model import load_selected_model
    from impumae.export.predict import predict
    model = load_selected_model(sys.argv[1], sys.argv[2])
    prediction = predict(model, align_cohort(model, Cohort.open(sys.argv[3])))
    print(type(model.specs["plane"].kind_object).__module__, prediction.surv.shape, bool(np.isfinite(prediction.surv).all()))
""")


@pytest.mark.slow
@pytest.mark.ray
def test_a_ray_search_and_its_registered_model_know_the_plugin_kind(plane_store, plugin_site, tmp_path):
    """`experiments/cv_search.py` in a fresh interpreter: its local Ray's workers (pretraining in a Ray
    task per model, `--workers 1`; trials in Tune's workers) reopen the store and rebuild the specs;
    then the registered model is loaded through MLflow in another fresh interpreter and predicts."""
    (tmp_path / "space.yaml").write_text(SEARCH_SPACE)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    search = _python([str(ROOT / "experiments" / "cv_search.py"), "--cohort", plane_store, "--subset", "rna,plane",
                      "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--folds", "2", "--workers", "1",
                      "--cpus-per-trial", "1", "--storage", str(tmp_path / "runs"), "--mlflow-uri", uri,
                      "--experiment", "plane-search", "--register", "plane-model", "--n-boot", "20"],
                     [plugin_site], tmp_path, timeout=900)
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    assert "selected model: models:/plane-model/1" in search.stdout
    summary = json.loads(next((tmp_path / "runs").glob("plane-search-*/summary.json")).read_text())
    assert summary["trials"][0]["folds_done"] == 2
    loaded = _python([*("-c", PREDICT), "models:/plane-model/1", uri, plane_store], [plugin_site], tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split()[0] == "impumae_plane" and loaded.stdout.split()[-1] == "True"
