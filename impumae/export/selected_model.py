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
- the family's predictor, made, saved and loaded by the family (:mod:`impumae.families`:
  :meth:`~impumae.families.Family.predictor`, :meth:`~impumae.families.Family.load_predictor`):
  ``impumae``, the fine-tuned survival model saved as weights with the specs and configs that rebuild
  it; a scikit-survival family, its estimator over the same transformed features, pickled; an
  ensemble, each member by its own family.

Every prediction goes through the engine's own path: the aligned cohort is a
:class:`~impumae.data.cohort_view.CohortArrays` and the impuTMAE tensors come from
:func:`~impumae.data.cohort_view.make_batchable`, exactly as the refit's holdout predictions do.

Saved as a directory: ``selected_model.pt`` (``torch.save`` of plain tensors, numbers, strings, lists
and dicts, read back with ``weights_only=True``) and the files the family's predictor saves beside it
(a scikit-survival family: ``estimator.pkl``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from impumae import families as model_families
from impumae.data.store import Cohort
from impumae.data.transforms import FoldTransforms
from impumae.data.cohort_view import CohortArrays
from impumae.families import ModelLoadError  # noqa: F401 (re-exported: the export's error for a model it cannot read)
from impumae.modalities import ModalitySpec
from impumae.survival.metrics import survival_risk
from impumae.train import checkpoint

FORMAT = "impumae-selected-model"
FORMAT_VERSION = 1
STATE_FILE = "selected_model.pt"
ESTIMATOR_FILE = "estimator.pkl"
RISK_GROUPS = ("low", "middle", "high")


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
        family = model_families.get(fitted.family)   # a family shipped as a plugin is found (impumae.plugins)
        ca = fitted.cohort
        subset = tuple(fitted.subset)
        cohort = Cohort.open(ca.url)
        specs = {m: ca.specs[m] for m in subset}
        names = {m: [str(n) for n in cohort.feature_names(m)] for m in subset if specs[m].kind_object.has_feature_names}
        selected = cls(family=family.name, subset=subset, specs=specs, value_types={m: ca.value_types[m] for m in subset},
                       feature_names=names, transforms=fitted.transforms, grid=np.asarray(fitted.grid, np.float64),
                       train_time=np.asarray(fitted.train_time, np.float64),
                       train_event=np.asarray(fitted.train_event, np.int64), risk_cuts=np.zeros(0),
                       predictor=family.predictor(fitted), info=dict(info or {}))
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
        try:
            family = model_families.get(state["family"])   # a family shipped as a plugin is found (impumae.plugins)
        except ValueError as error:
            raise ValueError(f"{directory}: {error}") from None
        return cls(family=family.name, subset=tuple(state["subset"]),
                   specs={m: ModalitySpec.from_dict(d) for m, d in state["store_specs"].items()},
                   value_types=dict(state["value_types"]),
                   feature_names={m: list(n) for m, n in state["feature_names"].items()},
                   transforms=FoldTransforms.from_dict(state["transforms"]), grid=np.asarray(state["grid"], np.float64),
                   train_time=np.asarray(state["train_time"], np.float64),
                   train_event=np.asarray(state["train_event"], np.int64),
                   risk_cuts=np.asarray(state["risk_cuts"], np.float64),
                   predictor=family.load_predictor(state["predictor"], directory), info=dict(state["info"]))


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
