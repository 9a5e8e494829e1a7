"""The ``ensemble`` family: the mean of other families' configurations' survival curves.

Not a searched choice: the engine builds an ensemble's configuration after the trials
(``{"family": "ensemble", "subset": ..., "members": [{"trial_id", "config", "fixed_epoch"}, ...]}``:
the selection rule ``family_ensemble``, or ``--ensemble-top-k``: :mod:`impumae.engine.ensemble`).
On a fold every member is fitted by its own family as its trial fitted it (an epoch-wise family for
its fixed epoch, ``stop_after``: the model its trial scored at that epoch; a one-shot family once,
with the trial's seed); the members' survival curves on the shared grid are averaged
(:class:`EnsembleFit`). In the selected model each member is its own family's predictor, saved under
``member<i>/`` (:class:`EnsemblePredictor`), with the first member's transforms (the members'
transforms are the same fit: same training patients and options).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from impumae import families
from impumae.survival.metrics import evaluate

NAME = "ensemble"


@dataclass
class EnsembleFit(families.FittedFold):
    """The members' fits of one fold (the same rows and grid); its survival is their mean."""
    members: list
    history: list[dict]
    family = NAME

    @property
    def cohort(self):
        return self.members[0].cohort

    @property
    def subset(self):
        return self.members[0].subset

    @property
    def fold(self) -> int:
        return self.members[0].fold

    @property
    def transforms(self):
        return self.members[0].transforms

    @property
    def train_rows(self) -> np.ndarray:
        return self.members[0].train_rows

    @property
    def val_rows(self) -> np.ndarray:
        return self.members[0].val_rows

    @property
    def grid(self) -> np.ndarray:
        return self.members[0].grid

    def survival(self, rows: np.ndarray) -> np.ndarray:
        """The mean of the members' survival curves at :attr:`grid`."""
        return np.mean([m.survival(rows) for m in self.members], axis=0)

    def without_cohort(self) -> EnsembleFit:
        return replace(self, members=[m.without_cohort() for m in self.members])

    def with_cohort(self, cohort) -> EnsembleFit:
        return replace(self, members=[m.with_cohort(cohort) for m in self.members])


def fit_ensemble_fold(config: dict, fold: int, fit_member: Callable[[dict, int, int], families.FittedFold]) -> EnsembleFit:
    """Every member of ensemble ``config`` fitted on ``fold`` by ``fit_member(member_config, fold,
    fixed_epoch)``, and the validation metrics of their mean survival (one row, epoch 1)."""
    members = [fit_member(m["config"], fold, int(m["fixed_epoch"])) for m in config["members"]]
    first = members[0]
    for m in members[1:]:
        if not (np.array_equal(m.train_rows, first.train_rows) and np.array_equal(m.val_rows, first.val_rows)
                and np.allclose(m.grid, first.grid)):
            raise ValueError(f"ensemble members {[x['trial_id'] for x in config['members']]} were not fitted on the "
                             f"same patients and grid on fold {fold}; an ensemble needs one subset and one n_bins")
    fit = EnsembleFit(members=members, history=[])
    row = {"epoch": 1}
    if len(fit.val_rows):
        ca, rows = fit.cohort, fit.val_rows
        metrics = evaluate(fit.survival(rows), fit.grid, ca.time[rows], ca.event[rows], fit.train_time, fit.train_event)
        row.update({f"val_{k}": v for k, v in metrics.items()})
    fit.history = [row]
    return fit


@dataclass
class EnsemblePredictor:
    """An ensemble in the selected model: the mean of its members' survival curves on the shared
    grid; each member is its own family's predictor."""
    members: list
    families: list[str]
    family: str = NAME

    def survival(self, selected, view, rows: np.ndarray) -> np.ndarray:
        return np.mean([np.asarray(m.survival(selected, view, rows), np.float64) for m in self.members], axis=0)

    @property
    def fills_missing_tokenised(self) -> bool:
        return all(m.fills_missing_tokenised for m in self.members)

    def decoder(self) -> None:
        return None

    def state(self) -> dict:
        return {"members": [{"family": f, "state": m.state()} for f, m in zip(self.families, self.members)]}

    def save_extra(self, directory: Path) -> None:
        for i, member in enumerate(self.members):
            (directory / f"member{i}").mkdir(exist_ok=True)
            member.save_extra(directory / f"member{i}")


class EnsembleFamily(families.Family):
    name = NAME
    label = "Ensemble of the top configurations"
    searchable = False

    @staticmethod
    def member_families(config: dict) -> list[families.Family]:
        return [families.family_of(m["config"]) for m in config["members"]]

    def pretrains(self, config: dict) -> bool:
        return any(f.pretrains(m["config"]) for f, m in zip(self.member_families(config), config["members"]))

    def fit(self, ctx: families.FitContext, config: dict, fold: int, device, **overrides) -> EnsembleFit:
        """Each member fitted by its own family, for its fixed epoch (``stop_after``)."""
        return fit_ensemble_fold(config, fold, lambda member, f, epochs: families.family_of(member).fit(
            ctx, member, f, device, **{**overrides, "stop_after": epochs}))

    def predictor(self, fitted: EnsembleFit) -> EnsemblePredictor:
        names = [m.family for m in fitted.members]
        return EnsemblePredictor([families.get(f).predictor(m) for f, m in zip(names, fitted.members)], names)

    def load_predictor(self, state: dict, directory: Path) -> EnsemblePredictor:
        names = [m["family"] for m in state["members"]]
        return EnsemblePredictor([families.get(f).load_predictor(m["state"], directory / f"member{i}")
                                  for i, (f, m) in enumerate(zip(names, state["members"]))], names)


FAMILY = families.register(EnsembleFamily())
