"""Model families: what kinds of survival model a search can fit, one object per family.

A configuration's ``family`` (absent: :data:`DEFAULT`, impuTMAE) names a :class:`Family`
registered here. A family owns everything that depends on which model it is: its name and label,
whether it needs the pretrained MAE, which configuration keys are its settings, how it fits one
fold (a trial's fold or the refit), and how its fitted model becomes a predictor of the selected
model that predicts survival, is saved and is loaded again. The engine (trials, the search, the
holdout, nested CV), the report and the export ask the family; none of them tests a family's name
(as the kinds of :mod:`impumae.kinds` are asked, never named).

Built-in families (one module each): ``impumae`` (:mod:`impumae.families.mae`: the multimodal MAE,
fine-tuned), the scikit-survival families ``linear``, ``coxnet``, ``coxph``, ``rsf``, ``gbsa``
(:mod:`impumae.families.sksurv`) and ``ensemble`` (:mod:`impumae.families.ensemble`: the average
of other families' configurations; not a searched choice). A new family is a subclass of
:class:`Family` passed to :func:`register`, in its own module or in another package; for it to
exist in every process (Ray workers, the model loader, the commands) its module is declared as a
plugin in the entry-point group ``impumae.families`` or in ``IMPUMAE_PLUGINS``
(:mod:`impumae.plugins`): :func:`get` loads the declared plugins when a name is not registered.

This package sits below the export and the engine and above the training loops: a family's fit
needs the cohort arrays, the transforms and the loops; what only the engine knows (where the
pretrained MAE of a fold is cached) comes in through the :class:`FitContext` the engine passes.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from impumae.data.cohort_view import REFIT, CohortArrays, Population, population

if TYPE_CHECKING:
    from impumae.data.transforms import FoldTransforms
    from impumae.model import MultimodalMAE

DEFAULT = "impumae"   # the family of a configuration that names none
PARAM = "family"      # the configuration key (a searched choice), and the key of a conditional parameter's families


class ModelLoadError(ValueError):
    """A saved model that cannot be found or read; the message names the file and what is wrong."""


class FitContext(Protocol):
    """What a family's fit reads besides the configuration: the search's fixed settings
    (:class:`impumae.engine.trial.SearchContext` is one)."""
    cohort_url: str
    outer: dict | None          # nested CV's outer split (load_cohort_arrays), None: the stored split
    seed: int
    finetune: dict              # the space's fine-tuning defaults (FinetuneConfig fields; n_bins: every family's grid)
    transforms: dict            # the space's transforms: (TransformOptions fields)

    def pretrained_model(self, ca: CohortArrays, subset: tuple[str, ...], fold: int, pretrained: bool,
                         device) -> tuple[MultimodalMAE, FoldTransforms]:
        """The fold's pretrained MAE (fresh weights if not ``pretrained``) and the transforms of every
        modality of ``subset`` (for the families that need pretraining)."""


class FittedFold:
    """What every fitted fold of any family answers: the cohort ``rows`` it was fitted and validated
    on, its ``history`` (one row per epoch; val_* metrics), its ``grid`` and ``survival(rows)``
    ([len(rows), len(grid)] survival probabilities at ``grid``). Subclasses (dataclasses) set
    ``family``, ``cohort``, ``subset``, ``fold``, ``transforms``, ``train_rows``, ``val_rows``,
    ``history`` and ``grid``."""
    family: str
    cohort: CohortArrays
    train_rows: np.ndarray
    val_rows: np.ndarray
    history: list[dict]

    @property
    def train_ids(self) -> np.ndarray:
        return self.cohort.ids[self.train_rows]

    @property
    def val_ids(self) -> np.ndarray:
        return self.cohort.ids[self.val_rows]

    @property
    def train_time(self) -> np.ndarray:
        return self.cohort.time[self.train_rows]

    @property
    def train_event(self) -> np.ndarray:
        return self.cohort.event[self.train_rows]

    def without_cohort(self) -> FittedFold:
        """This fit for sending to another process: no cohort arrays (and its model on the CPU)."""
        return replace(self, cohort=None)

    def with_cohort(self, cohort: CohortArrays) -> FittedFold:
        """A fit sent by :meth:`without_cohort` joined again with its cohort arrays."""
        return replace(self, cohort=cohort)


def fold_populations(ca: CohortArrays, subset, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitting rows, validation rows) of a fold, the same for every family: its training /
    validation patients with the anchor modality; no validation rows for the refit, whose training
    rows are every non-holdout patient with the anchor modality."""
    train_rows = population(ca, subset, ca.train_indices(fold), Population.FINETUNE)
    val_rows = (np.zeros(0, np.int64) if fold == REFIT
                else population(ca, subset, ca.validation_indices(fold), Population.VALIDATE))
    return train_rows, val_rows


class Predictor(Protocol):
    """A family's fitted model inside the selected model (:class:`impumae.export.selected_model.SelectedModel`)."""
    family: str
    fills_missing_tokenised: bool    # a missing tokenised modality is filled in (imputed or the training means)

    def decoder(self) -> MultimodalMAE | None:
        """The MAE whose decoder writes a missing modality's values (impuTMAE), or None."""

    def survival(self, selected, view: CohortArrays, rows: np.ndarray) -> np.ndarray:
        """[len(rows), len(selected.grid)] survival of the aligned ``view``'s ``rows``."""

    def state(self) -> dict:
        """Plain values (tensors, numbers, strings, lists, dicts) saved in the model's state file."""

    def save_extra(self, directory: Path) -> None:
        """Files beside the state file (e.g. a pickled estimator)."""


class Family:
    """One model family. Subclasses set ``name`` and ``label`` and implement :meth:`fit`,
    :meth:`predictor` and :meth:`load_predictor`.

    - ``needs_pretraining``: its folds load the pretrained MAE of (subset, fold), so the search
      pretrains for it (the folds' jobs, and the refit's when it is refitted).
    - ``searchable``: a choice of the space's ``family`` parameter (the ensemble, built from other
      families' configurations after the trials, is not).
    """
    name: str = ""
    label: str = ""
    needs_pretraining: bool = False
    searchable: bool = True

    # ------------------------------------------------------------------ settings
    def setting_name(self, key: str) -> str | None:
        """The setting of this family's model that configuration ``key`` names, or None when it names
        none (a key the fit reads itself, such as impuTMAE's fine-tuning fields)."""
        return None

    def settings(self, config: dict) -> dict:
        """The model settings ``config`` sets (:meth:`setting_name` of each key)."""
        return {self.setting_name(k): v for k, v in config.items() if self.setting_name(k)}

    def check_parameter(self, name: str, where: str) -> None:
        """Raise ValueError (starting with ``where``) when a search parameter conditional on this family
        cannot be one of its settings."""

    def pretrains(self, config: dict) -> bool:
        """Whether fitting ``config`` (a configuration of this family) needs the pretrained MAE."""
        return self.needs_pretraining

    # ------------------------------------------------------------------ fitting
    def fit(self, ctx: FitContext, config: dict, fold: int, device, **overrides) -> FittedFold:
        """``config`` fitted on ``fold``'s training patients (``REFIT``: every non-holdout patient with
        the anchor modality), its validation patients scored in its history. ``overrides``:
        ``seed`` (default ``ctx.seed + fold``) and, for an epoch-wise family, ``stop_after`` and
        other fine-tuning fields."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the selected model
    def predictor(self, fitted: FittedFold) -> Predictor:
        """The fitted refit as the selected model's predictor (independent of the fit's device)."""
        raise NotImplementedError

    def load_predictor(self, state: dict, directory: Path) -> Predictor:
        """The predictor saved as ``state`` (:meth:`Predictor.state`) and files in ``directory``."""
        raise NotImplementedError


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make ``family`` known under ``family.name``; returns it. Registering the same object again is a no-op."""
    if not family.name:
        raise ValueError(f"{family!r} has no name")
    known = _REGISTRY.get(family.name)
    if known is not None and known is not family:
        raise ValueError(f"a model family named {family.name!r} is already registered ({type(known).__name__})")
    _REGISTRY[family.name] = family
    return family


def find(name: str) -> Family | None:
    """The family registered as ``name`` (the declared plugins loaded first when it is not), or None."""
    if name not in _REGISTRY:
        from impumae import plugins  # noqa: PLC0415 (only when a name is not registered)
        plugins.load_plugins()
    return _REGISTRY.get(name)


def get(name: str) -> Family:
    """The family registered as ``name``; ValueError naming the registered families otherwise. A name
    not registered yet loads the declared plugins first (:mod:`impumae.plugins`), so a family shipped
    as a plugin is known in every process."""
    family = find(name)
    if family is None:
        raise ValueError(f"unknown model family {name!r}; choose from {searchable_names()} (a family from "
                         "another package is found through its entry point in the group 'impumae.families' or "
                         "the IMPUMAE_PLUGINS environment variable: impumae.plugins)")
    return family


def names() -> tuple[str, ...]:
    """The registered families, built-in first, in registration order."""
    return tuple(_REGISTRY)


def searchable_names() -> tuple[str, ...]:
    """The families a search space may choose (``family: {type: categorical, choices: [...]}``)."""
    return tuple(n for n, f in _REGISTRY.items() if f.searchable)


def family_of(config: dict) -> Family:
    """The family of a configuration (:data:`DEFAULT` when it names none); an unknown one is an error."""
    name = str(config.get(PARAM, DEFAULT))
    try:
        return get(name)
    except ValueError as error:
        raise ValueError(f"configuration {config}: {error}") from None


def family_name(config: dict) -> str:
    """The name of a configuration's family (checked: :func:`family_of`)."""
    return family_of(config).name


def label(name: str) -> str:
    """A family's label for tables (its name when it is not known to this process)."""
    family = find(name)
    return family.label if family is not None else name


def order(names_: Any) -> list[str]:
    """Family names in registration order (unknown ones after, sorted)."""
    known = names()
    return sorted(names_, key=lambda f: (known.index(f) if f in known else len(known), f))


# The built-in families register themselves (imported last: they subclass Family).
from impumae.families import mae, sksurv, ensemble  # noqa: E402,F401
