"""Reference imputers of a missing tabular modality, the honest choice among them and the decoder,
and the provenance an imputed store records.

Every imputer here works in the model's input space (the fold-fitted transforms of a pretrained
MAE; ``impumae.evaluation.imputation_quality.transformed_values``) and is fitted on *training rows
only* (the MAE's own pretraining patients): ``fit(values, present, rows)`` reads nothing outside
``rows``. ``values`` is ``{modality: [N, F] float}`` (a missing row's content is ignored),
``present`` is ``{modality: bool [N]}``.

- ``mean``: the training mean of each target feature (over training patients who have it).
- ``ridge``: a multi-output ridge regression of the target modality on the patient's *other*
  modalities (``sklearn.linear_model.RidgeCV``: one penalty for all outputs, chosen by 5-fold CV on
  the training rows among ``RIDGE_ALPHAS``). A source modality the patient lacks is filled with its
  training mean and flagged by one indicator per source modality, so a patient with any of the
  sources can be imputed. Inputs are standardised on the training rows (``StandardScaler``).
- ``iterative``: scikit-learn's ``IterativeImputer`` (``BayesianRidge``, round-robin chained
  equations) on the concatenation [sources | target], fitted on every training row that has the
  target or a source (NaN where a modality is missing); the target block is set to NaN and filled.
  On more than ``ITERATIVE_MAX_FEATURES`` columns each feature is regressed on its
  ``ITERATIVE_NEAREST`` most correlated columns (``n_nearest_features``), for time.
- ``knn``: ``KNNImputer`` (5 neighbours, nan-Euclidean) on the same concatenation.

The choice (:func:`choose_imputers`) is made per modality from rows of
``imputation_quality`` computed on *validation folds* (fold checkpoints scored on their validation
patients; never the holdout or a refit): the method with the highest mean variance-weighted R^2 over
the folds, among ``CHOOSABLE``. The store then records, per imputed modality, which method filled it,
its validation R^2 (variance-weighted and per feature) and the folds it was chosen on
(:func:`imputation_provenance` reads it back).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (registers IterativeImputer)
from sklearn.impute import IterativeImputer, KNNImputer
from sklearn.linear_model import BayesianRidge, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REFERENCES = ("mean", "knn", "ridge", "iterative")
CHOOSABLE = ("decoder", "ridge", "knn", "mean")
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
RIDGE_INNER_FOLDS = 5
KNN_NEIGHBOURS = 5
ITERATIVE_MAX_ITER = 5
ITERATIVE_MAX_FEATURES = 200
ITERATIVE_NEAREST = 50
PROVENANCE_KEY = "imputers"
R2_GOOD = 0.3   # per-feature R^2 above which a feature counts as "well imputed" in the summaries


class ImputerError(ValueError):
    """A reference imputer cannot be fitted or applied as asked."""


def _block(values, present, m, rows) -> np.ndarray:
    block = np.asarray(values[m][rows], dtype=np.float64).reshape(len(rows), -1).copy()
    block[~np.asarray(present[m][rows], bool)] = np.nan
    return block


@dataclass
class ReferenceImputer:
    """Impute ``target`` from ``sources`` with ``method`` (one of ``REFERENCES``); see the module doc."""
    method: str
    target: str
    sources: tuple[str, ...]
    seed: int = 0
    fitted: object = None
    n_train: int = 0
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in REFERENCES:
            raise ImputerError(f"unknown reference imputer {self.method!r}; expected one of {REFERENCES}")
        self.sources = tuple(self.sources)
        if self.target in self.sources:
            raise ImputerError(f"the target modality {self.target!r} cannot be one of its own sources")
        if self.method != "mean" and not self.sources:
            raise ImputerError(f"{self.method} imputation of {self.target!r} needs at least one other modality")

    # -- fitting (training rows only) --------------------------------------------------------
    def fit(self, values, present, rows) -> "ReferenceImputer":
        rows = np.asarray(rows, dtype=np.int64)
        has_target = np.asarray(present[self.target], bool)[rows]
        has_source = (np.any([np.asarray(present[s], bool)[rows] for s in self.sources], axis=0)
                      if self.sources else np.ones(len(rows), bool))
        if self.method in ("mean", "ridge"):
            usable = rows[has_target & has_source] if self.method == "ridge" else rows[has_target]
            needed = 2 * RIDGE_INNER_FOLDS if self.method == "ridge" else 1
            if len(usable) < needed:
                raise ImputerError(f"{self.method} imputation of {self.target!r}: only {len(usable)} training "
                                   "patients have it" + (" and another modality" if self.method == "ridge" else ""))
            y = _block(values, present, self.target, usable)
            self.n_train = len(usable)
            if self.method == "mean":
                self.fitted = y.mean(0)
            else:
                model = make_pipeline(StandardScaler(), RidgeCV(
                    alphas=RIDGE_ALPHAS, cv=KFold(RIDGE_INNER_FOLDS, shuffle=True, random_state=self.seed)))
                model.fit(self._ridge_inputs(values, present, usable, fit=True), y)
                self.fitted = model
                self.info["alpha"] = float(model[-1].alpha_)
            return self
        usable = rows[has_target | has_source]
        if not has_target.any():
            raise ImputerError(f"{self.method} imputation of {self.target!r}: no training patient has it")
        x = self._joint(values, present, usable)
        self.n_train = len(usable)
        self.info = {"target_width": int(np.asarray(values[self.target][:1]).reshape(1, -1).shape[1])}
        if self.method == "knn":
            self.fitted = KNNImputer(n_neighbors=KNN_NEIGHBOURS, keep_empty_features=True).fit(x)
        else:
            nearest = ITERATIVE_NEAREST if x.shape[1] > ITERATIVE_MAX_FEATURES else None
            self.fitted = IterativeImputer(estimator=BayesianRidge(), max_iter=ITERATIVE_MAX_ITER,
                                           n_nearest_features=nearest, skip_complete=False,
                                           keep_empty_features=True, random_state=self.seed).fit(x)
            self.info.update({"n_nearest_features": nearest, "max_iter": ITERATIVE_MAX_ITER})
        return self

    def _ridge_inputs(self, values, present, rows, fit=False) -> np.ndarray:
        blocks, flags = [], []
        for s in self.sources:
            block = _block(values, present, s, rows)
            if fit:
                self.info.setdefault("source_means", {})[s] = np.nanmean(block, axis=0) if np.isfinite(block).any() \
                    else np.zeros(block.shape[1])
            means = self.info["source_means"][s]
            missing = ~np.isfinite(block)
            block[missing] = np.broadcast_to(means, block.shape)[missing]
            blocks.append(np.nan_to_num(block))
            flags.append(np.asarray(present[s], bool)[rows].astype(np.float64)[:, None])
        return np.concatenate(blocks + flags, axis=1)

    def _joint(self, values, present, rows, hide_target=False) -> np.ndarray:
        target = _block(values, present, self.target, rows)
        if hide_target:
            target[:] = np.nan
        return np.concatenate([_block(values, present, s, rows) for s in self.sources] + [target], axis=1)

    # -- applying ----------------------------------------------------------------------------
    def predict(self, values, present, rows) -> np.ndarray:
        """The target modality of ``rows`` imputed from their sources (their own target is never read)."""
        if self.fitted is None:
            raise ImputerError(f"the {self.method} imputer of {self.target!r} is not fitted")
        rows = np.asarray(rows, dtype=np.int64)
        if self.method == "mean":
            return np.broadcast_to(self.fitted, (len(rows), len(self.fitted))).copy()
        if self.method == "ridge":
            return self.fitted.predict(self._ridge_inputs(values, present, rows))
        filled = self.fitted.transform(self._joint(values, present, rows, hide_target=True))
        return filled[:, -self.info["target_width"]:]


def fit_linear_map(inputs: np.ndarray, targets: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """``(weight [T, F], bias [T], penalty)``: ``StandardScaler`` + ``RidgeCV`` (``RIDGE_ALPHAS``, 5-fold
    CV, one penalty for all outputs), as the ``ridge`` reference, folded into one affine map of the
    unscaled inputs (``inputs @ weight.T + bias`` = the pipeline's prediction). Used by the MAE's
    ``cross_linear="ridge"``."""
    inputs, targets = np.asarray(inputs, np.float64), np.asarray(targets, np.float64)
    if len(inputs) < 2 * RIDGE_INNER_FOLDS:
        raise ImputerError(f"a linear map needs at least {2 * RIDGE_INNER_FOLDS} training rows, got {len(inputs)}")
    model = make_pipeline(StandardScaler(), RidgeCV(
        alphas=RIDGE_ALPHAS, cv=KFold(RIDGE_INNER_FOLDS, shuffle=True, random_state=seed))).fit(inputs, targets)
    scaler, ridge = model
    coef = np.atleast_2d(ridge.coef_) / scaler.scale_
    bias = np.atleast_1d(ridge.intercept_) - coef @ scaler.mean_
    return coef, bias, float(ridge.alpha_)


def per_feature_r2(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """R^2 of each feature (``r2_score(..., multioutput="raw_values")``); NaN where the evaluated
    values of a feature do not vary (R^2 is undefined there)."""
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    if truth.shape[0] < 2:
        return np.full(truth.shape[1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = r2_score(truth, pred, multioutput="raw_values", force_finite=False)
    raw = np.where(np.var(truth, axis=0) > 0, raw, np.nan)
    return np.where(np.isfinite(raw), raw, np.nan)


def r2_summary(per_feature: np.ndarray) -> dict:
    """``r2_median`` and ``n_features_r2_above_0.3`` over the features with a defined R^2."""
    finite = per_feature[np.isfinite(per_feature)]
    return {"r2_median": float(np.median(finite)) if finite.size else float("nan"),
            f"n_features_r2_above_{R2_GOOD}": int((finite > R2_GOOD).sum()),
            "n_features_r2_defined": int(finite.size)}


# -- the choice on validation folds --------------------------------------------------------------
def choose_imputers(rows: list[dict], candidates=CHOOSABLE) -> dict[str, dict]:
    """Per modality, the method with the highest mean variance-weighted R^2 over validation folds.

    ``rows``: ``imputation_quality`` rows, each with ``fold`` (>= 0: a fold checkpoint scored on its
    validation patients) and ``modality``, ``method``, ``n_patients``, ``r2`` (and optionally
    ``r2_per_feature``). A row of the refit (fold -1, scored on the holdout) or without a fold is
    refused: the holdout never chooses anything. A method is compared only if it has a finite R^2 on
    every fold the modality was scored on. Returns ``{modality: {method, validation_r2,
    validation_r2_by_method, validation_r2_per_feature, folds, n_patients}}``.
    """
    if not rows:
        raise ImputerError("no validation rows to choose an imputer from")
    for r in rows:
        fold = r.get("fold")
        if fold is None or int(fold) < 0:
            raise ImputerError(f"row {r.get('modality')}/{r.get('method')} has fold {fold!r}: the imputer is "
                               "chosen on validation folds only (fold checkpoints), never on the holdout or a refit")
    out = {}
    for m in sorted({r["modality"] for r in rows}):
        mine = [r for r in rows if r["modality"] == m and r["method"] in candidates and int(r.get("n_patients", 0)) > 0]
        folds = sorted({int(r["fold"]) for r in mine})
        by_method = {}
        for method in candidates:
            scores = {int(r["fold"]): float(r["r2"]) for r in mine if r["method"] == method}
            if folds and set(scores) == set(folds) and all(math.isfinite(v) for v in scores.values()):
                by_method[method] = float(np.mean([scores[f] for f in folds]))
        if not by_method:
            continue
        best = max(by_method, key=lambda k: (by_method[k], -candidates.index(k)))
        per_feature = [np.asarray(r["r2_per_feature"], np.float64) for r in mine
                       if r["method"] == best and r.get("r2_per_feature") is not None]
        mean_pf = (np.nanmean(np.stack(per_feature), axis=0) if per_feature and
                   len({len(p) for p in per_feature}) == 1 else None)
        out[m] = {"method": best, "validation_r2": by_method[best], "validation_r2_by_method": by_method,
                  "validation_r2_per_feature": None if mean_pf is None else
                  [None if not np.isfinite(v) else float(v) for v in mean_pf],
                  "folds": folds, "n_patients": int(sum(int(r["n_patients"]) for r in mine if r["method"] == best))}
    return out


def unvalidated(modalities, method: str = "decoder", reason: str = "") -> dict[str, dict]:
    """The provenance of an imputation that no validation fold scored (``validation_r2`` None)."""
    return {m: {"method": method, "validation_r2": None, "validation_r2_by_method": {},
                "validation_r2_per_feature": None, "folds": [], "n_patients": 0, "note": reason}
            for m in modalities}


def decoder_provenance(modalities, cross_linear: str = "off") -> dict:
    """The provenance entry of a store whose ``modalities`` the decoder filled without a validation
    choice (``experiments/predict.py --imputed-out``): ``{"imputers": {m: unvalidated decoder}}``;
    ``cross_linear``: the MAE's ``MAEConfig.cross_linear`` (whether its decoder carries a linear map)."""
    note = "filled by the model's decoder; no validation choice recorded with the model"
    return {PROVENANCE_KEY: {m: {**entry, "forced": False, "decoder_cross_linear": cross_linear}
                             for m, entry in unvalidated(modalities, "decoder", note).items()}}


def imputation_provenance(cohort) -> dict[str, dict]:
    """``{modality: {method, validation_r2, ...}}`` recorded in an imputed store (empty for a store of
    measured values or one written before provenance was recorded)."""
    provenance = cohort.provenance if hasattr(cohort, "provenance") else dict(cohort)
    return dict(provenance.get(PROVENANCE_KEY) or {})


def describe_provenance(provenance: dict[str, dict]) -> list[str]:
    """One line per imputed modality of :func:`imputation_provenance`: which method filled it, whether
    it was forced, its validation R^2 (variance-weighted, the share of features above ``R2_GOOD``) and
    the folds, or that it was not validated."""
    lines = []
    for m, entry in sorted(provenance.items()):
        r2 = entry.get("validation_r2")
        text = f"{m}: imputed by {entry.get('method', '?')}" + (" (forced)" if entry.get("forced") else "")
        if r2 is None:
            text += ", not validated" + (f" ({entry['note']})" if entry.get("note") else "")
        else:
            per_feature = [v for v in (entry.get("validation_r2_per_feature") or []) if v is not None]
            good = (f", {sum(v > R2_GOOD for v in per_feature)}/{len(per_feature)} features above {R2_GOOD}"
                    if per_feature else "")
            text += f", validation R2 {float(r2):+.3f} over folds {entry.get('folds', [])}{good}"
        lines.append(text)
    return lines


# -- applying the choice to a cohort -------------------------------------------------------------
def fit_chosen(choice: dict[str, dict], modalities, values, present, train_rows, seed: int = 0
               ) -> dict[str, ReferenceImputer]:
    """The reference imputers a choice needs (every modality whose method is not ``decoder``),
    fitted on ``train_rows`` in the model's space, each from the other tabular ``modalities``."""
    fitted = {}
    for m, c in choice.items():
        if c["method"] == "decoder":
            continue
        sources = tuple(o for o in modalities if o != m)
        fitted[m] = ReferenceImputer(c["method"], m, sources, seed=seed).fit(values, present, train_rows)
    return fitted


def impute_with_references(fitted: dict[str, ReferenceImputer], values, present) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{modality: (rows, model-space values)} for the rows lacking each fitted imputer's target."""
    out = {}
    for m, imputer in fitted.items():
        rows = np.flatnonzero(~np.asarray(present[m], bool))
        out[m] = (rows, imputer.predict(values, present, rows) if len(rows) else np.zeros((0, values[m].shape[1])))
    return out
