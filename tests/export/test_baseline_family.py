"""A baseline family exported like impuTMAE: a stand-in fitted fold holding an sksurv CoxNet fitted on
the refit's transformed features (what the model-families work will provide), saved as a pyfunc model,
loaded back, and predicting a shuffled, partly missing cohort like the in-memory estimator."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.pipeline import make_pipeline
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.util import Surv

from impumae.data.store import Cohort
from impumae.engine.cohort_view import CohortArrays, load_cohort_arrays
from impumae.evaluation.baseline_features import baseline_features
from impumae.export.align import align_cohort
from impumae.export.mlflow_model import load_selected_model, save_pyfunc
from impumae.export.model import SelectedModel
from impumae.export.predict import predict
from impumae.survival.baselines import make_preprocessor
from impumae.survival.metrics import interpolate_survival
from tests.export.conftest import SUBSET, external_store


@dataclass
class CoxnetFit:
    """The fitted-fold surface every family exposes, for a CoxNet over the transformed features."""
    cohort: CohortArrays
    subset: tuple
    transforms: object
    grid: np.ndarray
    train_rows: np.ndarray
    estimator: object
    family: str = "coxnet"

    @property
    def train_time(self):
        return self.cohort.time[self.train_rows]

    @property
    def train_event(self):
        return self.cohort.event[self.train_rows]

    def survival(self, rows, cohort=None):
        view = self.cohort if cohort is None else cohort
        x = np.concatenate(list(baseline_features(view, self.subset, self.transforms, rows).values()), axis=1)
        functions = self.estimator.predict_survival_function(x)
        steps = np.stack([f(functions[0].x) for f in functions])
        return interpolate_survival(steps, functions[0].x, self.grid, "step")


def test_a_coxnet_family_round_trips_through_the_pyfunc_model(refit, tmp_path):
    fitted, *_ = refit
    rows = fitted.train_rows
    x = np.concatenate(list(baseline_features(fitted.cohort, SUBSET, fitted.transforms, rows).values()), axis=1)
    # the report's baselines' pipeline: mean imputation of missing modalities, scaling, then the model
    estimator = make_pipeline(make_preprocessor(x.shape[1]),
                              CoxnetSurvivalAnalysis(l1_ratio=0.5, alpha_min_ratio=0.1, fit_baseline_model=True))
    estimator.fit(x, Surv.from_arrays(fitted.train_event.astype(bool), fitted.train_time))
    stand_in = CoxnetFit(fitted.cohort, SUBSET, fitted.transforms, fitted.grid, rows, estimator)

    save_pyfunc(SelectedModel.from_fit(stand_in), tmp_path / "coxnet-model")
    model = load_selected_model(str(tmp_path / "coxnet-model"))
    assert model.family == "coxnet"

    external, kept = external_store(tmp_path / "external.zarr", seed=21, drop={"rna": 0.15})
    reference, _ = external_store(tmp_path / "reference.zarr", seed=21, shuffle=False)
    view = load_cohort_arrays(reference.url, SUBSET)
    lacking = ~np.isin(Cohort.open(reference.url).feature_names("rna"), kept["rna"])
    arrays = {**view.arrays, "rna": view.arrays["rna"].copy()}
    arrays["rna"][:, lacking] = np.nan
    expected = stand_in.survival(np.arange(len(view.ids)), CohortArrays(**{**view.__dict__, "arrays": arrays}))
    got = predict(model, align_cohort(model, external)).surv
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert np.ptp(got[:, -1]) > 0   # not a constant curve
