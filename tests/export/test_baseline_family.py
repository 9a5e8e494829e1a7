"""The other model families exported like impuTMAE: a scikit-survival family's refit (the search's own
``fit_sksurv_fold``) and an ensemble of impuTMAE with it, saved as a pyfunc model, loaded back, and
predicting a shuffled, partly missing cohort like the in-memory fits on aligned inputs."""
from __future__ import annotations

import numpy as np

from impumae.data.store import Cohort
from impumae.data.cohort_view import REFIT, CohortArrays, load_cohort_arrays
from impumae.families.ensemble import EnsembleFit
from impumae.families.sksurv import fit_sksurv_fold
from impumae.export.align import align_cohort
from impumae.export.mlflow_model import load_selected_model, save_pyfunc
from impumae.export.selected_model import SelectedModel
from impumae.export.predict import predict
from tests.export.conftest import SUBSET, external_store


def reference_view(tmp_path, kept) -> CohortArrays:
    """The external patients in the training layout, with the features the external store lacks set to NaN."""
    reference, _ = external_store(tmp_path / "reference.zarr", seed=21, shuffle=False)
    view = load_cohort_arrays(reference.url, SUBSET)
    lacking = ~np.isin(Cohort.open(reference.url).feature_names("rna"), kept["rna"])
    arrays = {**view.arrays, "rna": view.arrays["rna"].copy()}
    arrays["rna"][:, lacking] = np.nan
    return CohortArrays(**{**view.__dict__, "arrays": arrays})


def with_cohort(fit, view: CohortArrays):
    """The same fitted fold predicting another (aligned) cohort view."""
    fit.cohort = view
    return fit


def test_a_scikit_survival_family_round_trips_through_the_pyfunc_model(refit, tmp_path):
    fitted, *_ = refit
    coxnet = fit_sksurv_fold(fitted.cohort, SUBSET, REFIT, "coxnet", seed=0)
    save_pyfunc(SelectedModel.from_fit(coxnet), tmp_path / "coxnet-model")
    model = load_selected_model(str(tmp_path / "coxnet-model"))
    assert model.family == "coxnet"

    external, kept = external_store(tmp_path / "external.zarr", seed=21, drop={"rna": 0.15})
    view = reference_view(tmp_path, kept)
    expected = with_cohort(coxnet, view).survival(np.arange(len(view.ids)))
    got = predict(model, align_cohort(model, external)).surv
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert np.ptp(got[:, -1]) > 0   # not a constant curve


def test_an_ensemble_round_trips_with_each_member_saved_by_its_own_family(refit, tmp_path):
    fitted, *_ = refit
    rsf = fit_sksurv_fold(fitted.cohort, SUBSET, REFIT, "rsf", {"min_samples_leaf": 10}, seed=0,
                          n_bins=len(fitted.grid))  # the grid of the impuTMAE member (a tiny one: 8 bins)
    ensemble = EnsembleFit(members=[fitted, rsf], history=[])
    save_pyfunc(SelectedModel.from_fit(ensemble), tmp_path / "ensemble-model")
    model = load_selected_model(str(tmp_path / "ensemble-model"))
    assert model.family == "ensemble" and model.predictor.families == ["impumae", "rsf"]

    external, kept = external_store(tmp_path / "external.zarr", seed=21, drop={"rna": 0.15})
    view = reference_view(tmp_path, kept)
    rows = np.arange(len(view.ids))
    own = SelectedModel.from_fit(ensemble)   # in memory, on the aligned reference view
    expected = own.survival(view, rows)
    np.testing.assert_allclose(expected, np.mean([SelectedModel.from_fit(m).survival(view, rows) for m in (fitted, rsf)], 0))
    got = predict(model, align_cohort(model, external)).surv
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
