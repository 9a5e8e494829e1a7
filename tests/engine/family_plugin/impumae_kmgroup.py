"""A model family written outside the package, against ``impumae.families.Family`` alone: ``kmgroup``.

Kaplan-Meier by risk group: a ridge regression of minus the log survival time of the training
deaths on the fold's baseline features gives every patient a risk score; the training patients are
cut into ``kmgroup_groups`` groups at its quantiles, and a patient's survival curve is the
Kaplan-Meier curve of the training patients in the group its score falls in, read at the fold's
grid. Its settings are ``kmgroup_alpha`` (the ridge penalty) and ``kmgroup_groups``. The fitted
model is plain numbers (coefficients, cut-points, curves), so the selected model saves it in its
state and needs no file beside it.

Importing this module registers the family. ``tests/engine/test_new_family.py`` declares it as a
plugin (``IMPUMAE_PLUGINS=impumae_kmgroup``, this folder on ``PYTHONPATH``), so Ray's workers and a
fresh interpreter loading the model know it without any change to the package.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge
from sksurv.nonparametric import kaplan_meier_estimator

from impumae import families
from impumae.data.baseline_features import baseline_features
from impumae.data.cohort_view import fit_transforms, load_cohort_arrays
from impumae.modalities import parse_subset
from impumae.survival.baselines import common_grid
from impumae.survival.metrics import evaluate

NAME = "kmgroup"
SETTINGS = {"alpha": 1.0, "groups": 3}


def features(cohort, subset, transforms, rows) -> np.ndarray:
    """The subset's baseline features (subset order) under the fold's transforms; a missing value is 0."""
    found = baseline_features(cohort, subset, transforms, rows)
    return np.nan_to_num(np.concatenate([found[m] for m in subset], axis=1).astype(np.float64))


@dataclass
class KmGroupModel:
    coef: np.ndarray
    intercept: float
    cuts: np.ndarray          # groups - 1 inner cut-points of the training scores
    curves: np.ndarray        # [groups, len(grid)] Kaplan-Meier survival of each group at the grid

    def survival(self, x: np.ndarray) -> np.ndarray:
        group = np.searchsorted(self.cuts, x @ self.coef + self.intercept, side="right")
        return self.curves[group]


def fit_model(x: np.ndarray, time: np.ndarray, event: np.ndarray, grid: np.ndarray, alpha: float,
              groups: int) -> KmGroupModel:
    deaths = event.astype(bool)
    ridge = Ridge(alpha=alpha).fit(x[deaths], -np.log(np.maximum(time[deaths], 1e-6)))
    score = ridge.predict(x)
    cuts = np.quantile(score, np.linspace(0, 1, groups + 1)[1:-1])
    group = np.searchsorted(cuts, score, side="right")
    curves = np.ones((groups, len(grid)))
    for g in range(groups):
        if (group == g).any():
            times, surv = kaplan_meier_estimator(event[group == g].astype(bool), time[group == g])
            at = np.searchsorted(times, grid, side="right") - 1      # the step curve at the grid
            curves[g] = np.where(at >= 0, surv[np.maximum(at, 0)], 1.0)
    return KmGroupModel(ridge.coef_.astype(np.float64), float(ridge.intercept_), cuts, curves)


@dataclass
class KmGroupFit(families.FittedFold):
    family: str
    cohort: object
    subset: tuple
    fold: int
    transforms: object
    model: KmGroupModel
    grid: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    history: list

    def survival(self, rows: np.ndarray) -> np.ndarray:
        return self.model.survival(features(self.cohort, self.subset, self.transforms, rows))


@dataclass
class KmGroupPredictor:
    model: KmGroupModel
    family: str = NAME
    fills_missing_tokenised: bool = True

    def survival(self, selected, view, rows: np.ndarray) -> np.ndarray:
        return self.model.survival(features(view, selected.subset, selected.transforms, rows))

    def decoder(self):
        return None

    def state(self) -> dict:
        m = self.model
        return {"coef": m.coef.tolist(), "intercept": m.intercept, "cuts": m.cuts.tolist(), "curves": m.curves.tolist()}

    def save_extra(self, directory: Path) -> None:
        """Nothing: the state holds the model."""


class KmGroupFamily(families.Family):
    name = NAME
    label = "Kaplan-Meier by risk group"

    def setting_name(self, key: str) -> str | None:
        setting = key.removeprefix(f"{NAME}_")
        return setting if key.startswith(f"{NAME}_") and setting in SETTINGS else None

    def check_parameter(self, name: str, where: str) -> None:
        if self.setting_name(name) is None:
            raise ValueError(f"{where}: a {NAME} parameter is {NAME}_<setting> for a setting of {sorted(SETTINGS)}")

    def fit(self, ctx, config: dict, fold: int, device, **overrides) -> KmGroupFit:
        settings = {**SETTINGS, **self.settings(config)}
        subset = parse_subset(config["subset"])
        ca = load_cohort_arrays(ctx.cohort_url, subset, ctx.outer)
        transforms = fit_transforms(ca, subset, ca.train_indices(fold), **ctx.transforms)
        train_rows, val_rows = families.fold_populations(ca, subset, fold)
        grid = common_grid(ca.time[train_rows], int(ctx.finetune.get("n_bins", 20)))
        model = fit_model(features(ca, subset, transforms, train_rows), ca.time[train_rows], ca.event[train_rows],
                          grid, float(settings["alpha"]), int(settings["groups"]))
        fit = KmGroupFit(NAME, ca, subset, fold, transforms, model, grid, train_rows, val_rows, [])
        row = {"epoch": 1}
        if len(val_rows):
            metrics = evaluate(fit.survival(val_rows), grid, ca.time[val_rows], ca.event[val_rows], fit.train_time,
                               fit.train_event)
            row.update({f"val_{k}": v for k, v in metrics.items()})
        fit.history = [row]
        return fit

    def predictor(self, fitted: KmGroupFit) -> KmGroupPredictor:
        return KmGroupPredictor(fitted.model)

    def load_predictor(self, state: dict, directory: Path) -> KmGroupPredictor:
        return KmGroupPredictor(KmGroupModel(np.asarray(state["coef"], np.float64), float(state["intercept"]),
                                             np.asarray(state["cuts"], np.float64),
                                             np.asarray(state["curves"], np.float64)))


FAMILY = families.register(KmGroupFamily())
