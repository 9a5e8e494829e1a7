"""fit_mae_fold on a tiny synthetic cohort (no Ray): who each stage sees, the refit, result shapes."""
import numpy as np
import pytest
import torch

from impumae.data.synthetic import build_synthetic
from impumae.data.cohort_view import REFIT, load_cohort_arrays
from impumae.engine.curves import FOLD_METRICS, validation_curve
from impumae.engine.mae_fold import finetune_config, fit_mae_fold
from impumae.families import fold_populations
from impumae.engine.pretrain_jobs import PretrainJob, run_pretraining

SUBSET = ("rna", "dna", "clinical")
MODEL = {"width": 32, "heads": 2, "mlp_ratio": 2, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2,
         "decoder_mlp": 64}
PRETRAIN = {"epochs": 1, "batch_size": 32, "lr": 1e-3}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fold")
    url = str(build_synthetic(str(root / "cohort.zarr"), n_patients=120, seed=1, progress=False).url)
    ca = load_cohort_arrays(url, SUBSET)
    storage = str(root / "runs")
    run_pretraining([PretrainJob.for_subset(ca, SUBSET, f, MODEL, PRETRAIN, 0) for f in (0, REFIT)], storage,
                    workers=0, echo=lambda *_: None)
    return ca, storage


def fit(ca, storage, fold, **config):
    cfg = finetune_config({"epochs": 2, "batch_size": 32, "n_bins": 8}, config, seed=fold)
    return fit_mae_fold(ca, SUBSET, fold, cfg, storage_url=storage, model=MODEL, pretrain=PRETRAIN, seed=0,
                    pretrained=bool(config.get("pretrained", True)))


def test_a_fold_trains_on_its_training_patients_and_validates_on_its_validation_fold(pretrained):
    ca, storage = pretrained
    result = fit(ca, storage, 0)
    holdout = set(ca.ids[ca.holdout_indices()])
    validation = set(ca.ids[ca.validation_indices(0)])
    train, val = set(result.train_ids), set(result.val_ids)
    assert train and val and not train & val
    assert not (train | val) & holdout
    assert val <= validation and not train & validation
    assert ca.present["rna"][result.train_rows].all() and ca.present["rna"][result.val_rows].all()  # the anchor
    assert len(result.history) == 2 and {"train_loss", "val_cs_score"} <= set(result.history[0])
    curve = validation_curve(result.history)  # the validation metrics after each epoch
    assert set(curve) == set(FOLD_METRICS) and all(len(v) == 2 and np.isfinite(v).all() for v in curve.values())
    assert [row["val_cs_score"] for row in result.history] == list(curve["val_cs_score"])
    logits = result.predict(result.val_rows)
    assert logits.shape == (len(result.val_rows), 8) and np.isfinite(logits).all()
    assert set(result.transforms.transforms) == set(SUBSET)  # clinical fitted here, beside the pretrained ones


def test_the_refit_uses_every_non_holdout_patient_with_the_anchor_and_no_validation(pretrained):
    ca, storage = pretrained
    result = fit(ca, storage, REFIT)
    non_holdout = np.flatnonzero(~ca.holdout)
    expected = non_holdout[ca.present["rna"][non_holdout]]
    np.testing.assert_array_equal(result.train_rows, expected)
    assert len(result.val_rows) == 0 and len(result.history) == 2
    assert all(np.isnan(v).all() for v in validation_curve(result.history).values())
    assert set(result.history[0]) == {"epoch", "train_loss"}
    hold = ca.holdout_indices()
    assert result.predict(hold).shape == (len(hold), 8)
    np.testing.assert_array_equal(result.train_time, ca.time[expected])
    # the refit at a fixed epoch: the first epochs of the same schedule (what holdout.score_holdout fits)
    assert fit(ca, storage, REFIT, stop_after=1).history == result.history[:1]


def test_fold_populations_match_what_fit_fold_uses_and_fitting_is_seeded(pretrained):
    ca, storage = pretrained
    train_rows, val_rows = fold_populations(ca, SUBSET, 0)
    first, again = fit(ca, storage, 0), fit(ca, storage, 0)
    np.testing.assert_array_equal(first.train_rows, train_rows)
    np.testing.assert_array_equal(first.val_rows, val_rows)
    assert first.history == again.history
    np.testing.assert_array_equal(first.predict(val_rows), again.predict(val_rows))


def test_loading_and_fitting_leave_the_global_rng_alone(pretrained):
    ca, storage = pretrained
    from impumae.engine.mae_fold import model_and_transforms
    job = PretrainJob.for_subset(ca, SUBSET, 0, MODEL, PRETRAIN, 0)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    model_and_transforms(ca, SUBSET, job, storage, pretrained=False)
    fit(ca, storage, 0)
    assert torch.equal(torch.rand(3), expected)


def test_without_pretraining_the_encoders_are_not_frozen():
    assert finetune_config({"freeze": "paper"}, {"pretrained": False}).freeze == "none"
    assert finetune_config({"freeze": "paper"}, {"pretrained": True}).freeze == "paper"


def test_the_refit_in_a_ray_task_is_the_refit_in_process(pretrained, tmp_path):
    """fit_refit runs the refit in a Ray task with a trial's resources when Ray is up (nested CV's
    concurrent outer folds then fit in parallel processes) and joins the driver's cohort arrays
    again: the same fit as in this process, impuTMAE and a scikit-survival family in an ensemble."""
    import ray

    from impumae.engine.trial import SearchContext, fit_refit
    ca, storage = pretrained
    subset = ",".join(SUBSET)
    ctx = SearchContext(cohort_url=ca.url, n_folds=2, storage=storage, search_dir=str(tmp_path / "s"), model=MODEL,
                        pretrain=PRETRAIN, finetune={"epochs": 2, "batch_size": 32, "n_bins": 8})
    impumae = {"subset": subset, "lr": 1e-3}
    ensemble = {"family": "ensemble", "subset": subset, "members": [
        {"trial_id": "a", "config": impumae, "fixed_epoch": 1},
        {"trial_id": "b", "config": {"family": "rsf", "rsf_min_samples_leaf": 10, "subset": subset}, "fixed_epoch": 1}]}
    here = [fit_refit(ctx, impumae, 1), fit_refit(ctx, ensemble, 1, {"cpu": 1.0})]  # Ray is not up: in process
    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        there = [fit_refit(ctx, impumae, 1, {"cpu": 1.0}), fit_refit(ctx, ensemble, 1, {"cpu": 1.0})]
    finally:
        ray.shutdown()
    hold = ca.holdout_indices()
    for a, b in zip(here, there):
        assert b.cohort is ca  # the driver's arrays, not a copy sent back
        np.testing.assert_array_equal(a.train_rows, b.train_rows)
        np.testing.assert_allclose(a.survival(hold), b.survival(hold), rtol=1e-5)  # float sums in other threads
        assert len(a.history) == len(b.history)
        assert all(ra == pytest.approx(rb, rel=1e-5) for ra, rb in zip(a.history, b.history))
    assert there[0].device == torch.device("cpu")
