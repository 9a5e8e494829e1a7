"""The selected model as a self-contained predictor: what the refit learnt, and nothing of the search's storage.

A :class:`SelectedModel` holds, for whatever family the search selected (``family``):

- the modality ``subset`` (anchor first), the store-level ``specs`` (kind, shape), ``value_types`` and,
  for the kinds with named features (tabular, clinical), the ``feature_names`` a new cohort is aligned
  to (:mod:`impumae.export.align`);
- the fold-fitted ``transforms`` of the refit (fitted on its training patients only);
- the time ``grid`` its survival curves are given at (the refit's bins' cuts), the training labels
  (``train_time``, ``train_event``: the censoring weights of the IBS on an external cohort) and
  ``risk_cuts``, the tertiles of the training patients' risk, so risk groups of new patients use the
  training cut-points;
- the family's predictor (:data:`FAMILIES`): ``impumae`` (the fine-tuned :class:`SurvivalModel`,
  saved as weights with the specs and configs that rebuild it) or an sksurv estimator over the same
  transformed features (:class:`SksurvPredictor`, pickled).

Every prediction goes through the engine's own path: the aligned cohort is a
:class:`~impumae.data.cohort_view.CohortArrays` and the impuTMAE tensors come from
:func:`~impumae.data.cohort_view.make_batchable`, exactly as the refit's holdout predictions do.

Saved as a directory: ``selected_model.pt`` (``torch.save`` of plain tensors, numbers, strings, lists
and dicts, read back with ``weights_only=True``) and, for a pickled family, ``estimator.pkl``.
"""
from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from impumae import plugins
from impumae.data.store import Cohort
from impumae.data.transforms import FoldTransforms
from impumae.family_names import ENSEMBLE, SKSURV_FAMILIES
from impumae.data.cohort_view import CohortArrays, make_batchable
from impumae.data.baseline_features import baseline_features
from impumae.modalities import ModalitySpec
from impumae.model import SurvivalModel
from impumae.model.survival import SurvivalConfig
from impumae.survival.baselines import on_grid, predict_baseline
from impumae.survival.metrics import survival_curve, survival_risk
from impumae.train import checkpoint
from impumae.train.finetune_loop import predict_logits

FORMAT = "impumae-selected-model"
FORMAT_VERSION = 1
STATE_FILE = "selected_model.pt"
ESTIMATOR_FILE = "estimator.pkl"
RISK_GROUPS = ("low", "middle", "high")


class ModelLoadError(ValueError):
    """A saved model that cannot be found or read; the message names the file and what is wrong."""


# ----------------------------------------------------------------------------- families
@dataclass
class ImpumaePredictor:
    """impuTMAE: the fine-tuned survival model (its MAE's decoder imputes missing modalities)."""
    model: SurvivalModel
    family: str = "impumae"

    @classmethod
    def from_fit(cls, fitted) -> ImpumaePredictor:
        """A CPU copy of the fitted model (the fitted fold keeps its own, on its device)."""
        return cls(copy.deepcopy(checkpoint.unwrap(fitted.model)).cpu().eval())

    def survival(self, selected: SelectedModel, view: CohortArrays, rows: np.ndarray) -> np.ndarray:
        batch = make_batchable(view, selected.subset, selected.transforms, rows)
        return survival_curve(predict_logits(self.model, batch))

    @property
    def fills_missing_tokenised(self) -> bool:
        """Whether a missing pretrained modality is filled in (decoder imputation), not left out."""
        return self.model.cfg.imputation == "decoder"

    def state(self) -> dict:
        fields = checkpoint.model_fields(self.model.mae)
        return {"specs": fields["specs"], "mae_config": fields["mae_config"],
                "survival_config": self.model.cfg.to_dict(),
                "weights": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def save_extra(self, directory: Path) -> None:
        """Nothing beside the state: the weights are in it."""

    @classmethod
    def load(cls, state: dict, directory: Path) -> ImpumaePredictor:
        with torch.random.fork_rng(devices=[]):  # the fresh weights are overwritten; the caller's RNG is untouched
            mae = checkpoint.build_mae(state, load_weights=False)
            model = SurvivalModel(mae, SurvivalConfig(**state["survival_config"]))
        model.load_state_dict(state["weights"])
        return cls(model.eval())


@dataclass
class SksurvPredictor:
    """A baseline family: an sksurv estimator (or pipeline) fitted on the concatenated
    :func:`baseline_features` of the subset (in subset order) under the same fold-fitted transforms.
    Its fitted fold exposes it as ``fitted.estimator``."""
    estimator: Any
    family: str
    fills_missing_tokenised: bool = True   # a missing modality's features are the training means

    @classmethod
    def from_fit(cls, fitted) -> SksurvPredictor:
        return cls(fitted.estimator, fitted.family)

    def survival(self, selected: SelectedModel, view: CohortArrays, rows: np.ndarray) -> np.ndarray:
        """The estimator's step functions read at the grid, as the fitted fold reads them
        (:func:`impumae.survival.baselines.on_grid`)."""
        features = baseline_features(view, selected.subset, selected.transforms, rows)
        x = np.concatenate([features[m] for m in selected.subset], axis=1)
        return on_grid(predict_baseline(self.estimator, x), selected.grid).surv

    def state(self) -> dict:
        return {}

    def save_extra(self, directory: Path) -> None:
        (directory / ESTIMATOR_FILE).write_bytes(pickle.dumps(self.estimator))

    @classmethod
    def load(cls, state: dict, directory: Path, family: str = "") -> SksurvPredictor:
        path = directory / ESTIMATOR_FILE
        try:
            return cls(pickle.loads(path.read_bytes()), family)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{path}: cannot unpickle the {family} estimator ({type(e).__name__}: {e})") from None


@dataclass
class EnsemblePredictor:
    """An ensemble of the top configurations (:mod:`impumae.engine.ensemble`): the mean of its
    members' survival curves on the shared grid; each member is exported by its own family."""
    members: list
    families: list[str]
    family: str = "ensemble"

    @classmethod
    def from_fit(cls, fitted) -> EnsemblePredictor:
        families = [m.family for m in fitted.members]
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"no exporter for ensemble member family {unknown}; known: {sorted(FAMILIES)}")
        return cls([FAMILIES[f].from_fit(m) for f, m in zip(families, fitted.members)], families)

    def survival(self, selected: SelectedModel, view: CohortArrays, rows: np.ndarray) -> np.ndarray:
        return np.mean([np.asarray(m.survival(selected, view, rows), np.float64) for m in self.members], axis=0)

    @property
    def fills_missing_tokenised(self) -> bool:
        return all(m.fills_missing_tokenised for m in self.members)

    def state(self) -> dict:
        return {"members": [{"family": f, "state": m.state()} for f, m in zip(self.families, self.members)]}

    def save_extra(self, directory: Path) -> None:
        for i, member in enumerate(self.members):
            (directory / f"member{i}").mkdir(exist_ok=True)
            member.save_extra(directory / f"member{i}")

    @classmethod
    def load(cls, state: dict, directory: Path, family: str = "ensemble") -> EnsemblePredictor:
        families = [m["family"] for m in state["members"]]
        return cls([FAMILIES[f].load(m["state"], directory / f"member{i}", f)
                    for i, (f, m) in enumerate(zip(families, state["members"]))], families)


@dataclass
class Family:
    """How one model family is exported: from a fitted fold, and back from a saved directory."""
    from_fit: Callable[[Any], Any]
    load: Callable[[dict, Path, str], Any]


FAMILIES: dict[str, Family] = {
    "impumae": Family(ImpumaePredictor.from_fit, lambda state, directory, family: ImpumaePredictor.load(state, directory)),
}


def register_sksurv_family(name: str) -> None:
    """Export fitted folds of family ``name`` as :class:`SksurvPredictor` (their ``estimator``)."""
    FAMILIES[name] = Family(SksurvPredictor.from_fit, lambda state, directory, family: SksurvPredictor.load(state, directory, family))


for _name in SKSURV_FAMILIES:
    register_sksurv_family(_name)
FAMILIES[ENSEMBLE] = Family(EnsemblePredictor.from_fit, EnsemblePredictor.load)




# ----------------------------------------------------------------------------- the selected model
@dataclass
class SelectedModel:
    family: str
    subset: tuple[str, ...]
    specs: dict[str, ModalitySpec]          # store-level specs (what a cohort stores), per modality of subset
    value_types: dict[str, str]
    feature_names: dict[str, list[str]]     # kinds with named features only
    transforms: FoldTransforms
    grid: np.ndarray
    train_time: np.ndarray
    train_event: np.ndarray
    risk_cuts: np.ndarray                   # training risk tertiles (2 inner cut-points)
    predictor: Any
    info: dict = field(default_factory=dict)  # search, configuration, refit epochs, ...

    @classmethod
    def from_fit(cls, fitted, info: dict | None = None) -> SelectedModel:
        """The selected model of a fitted refit (any family exposing the fitted-fold surface)."""
        family = fitted.family
        if family not in FAMILIES:
            plugins.load_plugins()  # a family shipped as a plugin registers its exporter (impumae.plugins)
        if family not in FAMILIES:
            raise ValueError(f"no exporter for model family {family!r}; known: {sorted(FAMILIES)}")
        ca = fitted.cohort
        subset = tuple(fitted.subset)
        cohort = Cohort.open(ca.url)
        specs = {m: ca.specs[m] for m in subset}
        names = {m: [str(n) for n in cohort.feature_names(m)] for m in subset if specs[m].kind_object.has_feature_names}
        selected = cls(family=family, subset=subset, specs=specs, value_types={m: ca.value_types[m] for m in subset},
                       feature_names=names, transforms=fitted.transforms, grid=np.asarray(fitted.grid, np.float64),
                       train_time=np.asarray(fitted.train_time, np.float64),
                       train_event=np.asarray(fitted.train_event, np.int64), risk_cuts=np.zeros(0),
                       predictor=FAMILIES[family].from_fit(fitted), info=dict(info or {}))
        train_risk = selected.risk(np.asarray(fitted.survival(fitted.train_rows)))
        selected.risk_cuts = np.quantile(train_risk, [1 / 3, 2 / 3])
        return selected

    # ------------------------------------------------------------------ prediction
    def survival(self, view: CohortArrays, rows: np.ndarray | None = None) -> np.ndarray:
        """Survival [len(rows), len(grid)] of the patients ``rows`` of an aligned cohort view."""
        rows = np.arange(len(view.ids)) if rows is None else np.asarray(rows)
        return np.asarray(self.predictor.survival(self, view, rows), np.float64)

    def risk(self, surv: np.ndarray) -> np.ndarray:
        """Higher = worse: minus the restricted mean survival time over the grid (the holdout's risk)."""
        return survival_risk(surv, self.grid)

    def risk_group(self, risk: np.ndarray) -> np.ndarray:
        """``low``/``middle``/``high`` by the training patients' risk tertiles."""
        return np.asarray(RISK_GROUPS)[np.searchsorted(self.risk_cuts, risk, side="right")]

    @property
    def fills_missing_tokenised(self) -> bool:
        return bool(self.predictor.fills_missing_tokenised)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "family": self.family, "subset": list(self.subset),
                "store_specs": {m: s.to_dict() for m, s in self.specs.items()}, "value_types": dict(self.value_types),
                "feature_names": {m: list(n) for m, n in self.feature_names.items()},
                "transforms": self.transforms.to_dict(), "grid": self.grid.tolist(),
                "train_time": self.train_time.tolist(), "train_event": self.train_event.tolist(),
                "risk_cuts": self.risk_cuts.tolist(), "info": _plain(self.info),
                "predictor": self.predictor.state()}

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        checkpoint.save(str(directory / STATE_FILE), self.state())
        self.predictor.save_extra(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SelectedModel:
        directory = Path(directory)
        path = directory / STATE_FILE
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file; the model directory is incomplete")
        try:
            state = checkpoint.load(str(path))
        except Exception as e:  # noqa: BLE001 (torch's errors of a damaged file say nothing of the file)
            raise ModelLoadError(f"{path}: cannot read the model state, the file is truncated or corrupted "
                                 f"({type(e).__name__}: {e})") from None
        if state.get("format") != FORMAT:
            raise ModelLoadError(f"{path} does not hold an impumae selected model (format {state.get('format')!r})")
        family = state["family"]
        if family not in FAMILIES:
            plugins.load_plugins()  # a family shipped as a plugin registers its exporter (impumae.plugins)
        if family not in FAMILIES:
            raise ValueError(f"{directory}: model family {family!r} is not known to this impumae; known: {sorted(FAMILIES)}")
        return cls(family=family, subset=tuple(state["subset"]),
                   specs={m: ModalitySpec.from_dict(d) for m, d in state["store_specs"].items()},
                   value_types=dict(state["value_types"]),
                   feature_names={m: list(n) for m, n in state["feature_names"].items()},
                   transforms=FoldTransforms.from_dict(state["transforms"]), grid=np.asarray(state["grid"], np.float64),
                   train_time=np.asarray(state["train_time"], np.float64),
                   train_event=np.asarray(state["train_event"], np.int64),
                   risk_cuts=np.asarray(state["risk_cuts"], np.float64),
                   predictor=FAMILIES[family].load(state["predictor"], directory, family), info=dict(state["info"]))


def _plain(value):
    """``value`` as plain JSON-like types (what a weights-only checkpoint may hold)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
