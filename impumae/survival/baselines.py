"""Classical survival baselines (scikit-survival) scored with the same metrics as impuTMAE.

Models (``BASELINES``):

* ``"coxph"``: `CoxPHSurvivalAnalysis` (Efron ties) with a small ridge penalty (alpha 0.1) for
  stability; when a block has more features than 32, or than one per 10 training deaths
  (`coxph_components`), it is reduced by PCA to that many components first (a Newton step on
  thousands of genes is neither feasible nor sensible, and more features than the deaths support
  diverge).
* ``"coxnet"``: `CoxnetSurvivalAnalysis` elastic net (l1_ratio 0.5, ``fit_baseline_model=True``);
  the penalty is chosen on the training patients only, by 3-fold inner cross-validation of
  Harrell's C-index along the regularisation path.
* ``"rsf"``: `RandomSurvivalForest` (100 trees, min_samples_leaf 15, max_features "sqrt",
  n_jobs 1, seeded).

Two more models serve as families of the search (`impumae.families.sksurv`), where their
hyperparameters are searched on the validation folds:

* ``"linear"``: `CoxnetSurvivalAnalysis` elastic net at ONE penalty given as a fraction of the
  data's own largest penalty (``alpha_ratio``: the path runs from the penalty that zeroes every
  coefficient down to ``alpha_ratio`` times it, warm-started, and the model predicts at its end),
  with ``l1_ratio``; no inner cross-validation: the search chooses the penalty, as it chooses
  impuTMAE's learning rate.
* ``"gbsa"``: `GradientBoostingSurvivalAnalysis` (Cox partial likelihood loss, 100 trees of depth
  3, learning rate 0.1, max_features "sqrt", seeded).

``fit_baseline(..., params=...)`` overrides a model's settings (``MODEL_PARAMS`` names the ones
each model accepts and their defaults).

Every model sits behind the same preprocessing, fitted on the training patients only (a sklearn
`Pipeline`): mean imputation of NaN, standardisation, optional PCA. A prediction carries the
model's risk score and its survival step functions at the model's own time points
(``unique_times_``).

**One time grid for every family.** To be scored, a baseline's curves are read at the same
grid as impuTMAE's (`common_grid`: the 20 `TimeBins` cuts of the training times, from 0 to the
largest training time) and interpolated linearly between grid points, exactly as impuTMAE's
curves are. Scored on its own step function instead, a Cox model's curve is flat at 1 until the
first training death, so a validation patient who dies earlier is tied with everyone and
Antolini's C counts all of their pairs as discordant: on one GBM/LGG fold (two such deaths)
CoxNet scored Antolini 0.728 against Harrell 0.816. On the common grid the two agree (0.816), as
they should for a proportional-hazards model, and every family meets the same tie rules.

`run_baselines` scores early fusion (all modality blocks concatenated; a missing block is NaN and
mean-imputed) and `late_fusion` (one model per modality on the patients that have it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sksurv.ensemble import GradientBoostingSurvivalAnalysis, RandomSurvivalForest
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from impumae.survival.bins import TimeBins, check_labels
from impumae.survival.metrics import evaluate, interpolate_survival

BASELINES = ("coxph", "coxnet", "rsf")      # the report's comparison
COX_MODELS = ("coxph", "coxnet", "linear")  # linear predictors with a Breslow baseline (StableBreslow)
MODELS = (*BASELINES, "linear", "gbsa")     # every model fit_baseline knows
COXPH_RIDGE_ALPHA = 0.1
COXPH_MAX_FEATURES = 32          # above this, PCA to this many components before CoxPH
COXPH_EVENTS_PER_FEATURE = 10    # and at most one feature per 10 training deaths
COXNET_L1_RATIO = 0.5
COXNET_N_ALPHAS = 30
COXNET_ALPHA_MIN_RATIO = 0.01
COXNET_INNER_FOLDS = 3
RSF_N_ESTIMATORS = 100
RSF_MIN_SAMPLES_LEAF = 15
GRID_BINS = 20                   # the common grid: impuTMAE's time bins
# the settings each model accepts through fit_baseline(params=...), with their defaults
MODEL_PARAMS = {
    "coxph": {},
    "coxnet": {"l1_ratio": COXNET_L1_RATIO, "unpenalized_clinical": True},
    "rsf": {"n_estimators": RSF_N_ESTIMATORS, "min_samples_leaf": RSF_MIN_SAMPLES_LEAF, "max_features": "sqrt",
            "max_depth": None},
    "linear": {"l1_ratio": COXNET_L1_RATIO, "alpha_ratio": 0.05, "n_alphas": 20, "unpenalized_clinical": True},
    "gbsa": {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3, "subsample": 1.0, "max_features": "sqrt",
             "min_samples_leaf": 1},
}


@dataclass
class BaselinePrediction:
    """Predictions for the evaluated patients: ``risk`` [N] (higher = earlier death) and survival
    ``surv`` [N, G] at ``surv_times`` [G] (right-continuous steps)."""

    risk: np.ndarray
    surv: np.ndarray
    surv_times: np.ndarray


def common_grid(train_time: Any, n_bins: int = GRID_BINS) -> np.ndarray:
    """The grid every family's survival curves are scored on: the training times' `TimeBins` cuts."""
    return TimeBins(n_bins).fit(train_time).cuts


def on_grid(pred: BaselinePrediction, grid: np.ndarray) -> BaselinePrediction:
    """The prediction's step functions read at ``grid`` (exact: they are right-continuous steps)."""
    return BaselinePrediction(risk=pred.risk, surv=interpolate_survival(pred.surv, pred.surv_times, grid, "step"),
                              surv_times=np.asarray(grid, dtype=np.float64))


def make_preprocessor(n_features: int, pca_components: int | None = None) -> Pipeline:
    """Mean imputation -> standardisation [-> PCA if the data have more columns than
    ``pca_components``]; fit it on training patients only."""
    steps = [("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler())]
    if pca_components is not None and n_features > pca_components:
        steps.append(("pca", PCA(n_components=pca_components, random_state=0)))
    return Pipeline(steps)


def coxph_components(event_train: np.ndarray) -> int:
    """How many features CoxPH may use: at most ``COXPH_MAX_FEATURES`` and one per
    ``COXPH_EVENTS_PER_FEATURE`` training deaths (the usual events-per-variable rule). With more, a
    small training set is nearly separable, the ridge of 0.1 does not hold the coefficients, the
    risk scores reach exp(40) and the survival curves overflow to NaN (seen on 60-patient folds)."""
    return int(max(1, min(COXPH_MAX_FEATURES, int(np.sum(event_train)) // COXPH_EVENTS_PER_FEATURE)))


def _survival_target(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    return Surv.from_arrays(event=event.astype(bool), time=time)


def model_params(name: str, params: Mapping[str, Any] | None = None) -> dict:
    """Model ``name``'s settings: its defaults (`MODEL_PARAMS`) updated by ``params``; an unknown
    model or setting is an error naming it."""
    if name not in MODEL_PARAMS:
        raise ValueError(f"unknown baseline {name!r}; choose from {MODELS}")
    unknown = set(params or {}) - set(MODEL_PARAMS[name])
    if unknown:
        raise ValueError(f"baseline {name!r} has no setting(s) {sorted(unknown)}; it accepts {sorted(MODEL_PARAMS[name])}")
    return {**MODEL_PARAMS[name], **(params or {})}


def _choose_coxnet_alpha(X: np.ndarray, y: np.ndarray, event: np.ndarray, alphas: np.ndarray,
                         seed: int, l1_ratio: float = COXNET_L1_RATIO, penalty_factor=None) -> float:
    """The alpha of the path with the best mean Harrell C over inner folds of the training data."""
    folds = StratifiedKFold(n_splits=COXNET_INNER_FOLDS, shuffle=True, random_state=seed)
    scores = np.zeros((COXNET_INNER_FOLDS, alphas.shape[0]))
    for k, (inner_train, inner_val) in enumerate(folds.split(X, event)):
        prep = make_preprocessor(X.shape[1]).fit(X[inner_train])
        model = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=alphas, penalty_factor=penalty_factor).fit(
            prep.transform(X[inner_train]), y[inner_train])
        X_val = prep.transform(X[inner_val])
        y_val = y[inner_val]
        for a, alpha in enumerate(alphas):
            risk = model.predict(X_val, alpha=alpha)
            if y_val["event"].any():
                scores[k, a] = concordance_index_censored(y_val["event"], y_val["time"], risk)[0]
            else:
                scores[k, a] = 0.5
    return float(alphas[int(np.argmax(scores.mean(axis=0)))])


def _fit_coxnet(X: np.ndarray, y: np.ndarray, event: np.ndarray, seed: int, l1_ratio: float,
                penalty_factor=None) -> Pipeline:
    path = Pipeline([("prep", make_preprocessor(X.shape[1])),
                     ("model", CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, n_alphas=COXNET_N_ALPHAS,
                                                      alpha_min_ratio=COXNET_ALPHA_MIN_RATIO,
                                                      penalty_factor=penalty_factor))]).fit(X, y)
    alphas = path[-1].alphas_
    best = _choose_coxnet_alpha(X, y, event, alphas, seed, l1_ratio, penalty_factor)
    # refit the path down to the chosen alpha (warm starts keep it stable); the model then
    # predicts at its last alpha, which is the chosen one
    chosen_path = alphas[alphas >= best]
    return Pipeline([("prep", make_preprocessor(X.shape[1])),
                     ("model", CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=chosen_path,
                                                      penalty_factor=penalty_factor,
                                                      fit_baseline_model=True))]).fit(X, y)


def _model(name: str, params: dict, seed: int, penalty_factor=None):
    """The unfitted estimator of ``name`` (all but coxnet, whose penalty needs the data first)."""
    if name == "coxph":
        return CoxPHSurvivalAnalysis(alpha=COXPH_RIDGE_ALPHA, ties="efron")
    if name == "rsf":
        return RandomSurvivalForest(n_estimators=int(params["n_estimators"]), min_samples_leaf=int(params["min_samples_leaf"]),
                                    max_features=params["max_features"], max_depth=params["max_depth"], n_jobs=1,
                                    random_state=seed)
    if name == "linear":
        # the path from the largest penalty down to alpha_ratio times it; predictions use its last alpha
        return CoxnetSurvivalAnalysis(l1_ratio=float(params["l1_ratio"]), n_alphas=int(params["n_alphas"]),
                                      alpha_min_ratio=float(params["alpha_ratio"]), penalty_factor=penalty_factor,
                                      fit_baseline_model=True)
    if name == "gbsa":
        return GradientBoostingSurvivalAnalysis(
            loss="coxph", n_estimators=int(params["n_estimators"]), learning_rate=float(params["learning_rate"]),
            max_depth=int(params["max_depth"]), subsample=float(params["subsample"]),
            max_features=params["max_features"], min_samples_leaf=int(params["min_samples_leaf"]), random_state=seed)
    raise ValueError(f"unknown baseline {name!r}; choose from {MODELS}")


def fit_baseline(name: str, X_train: Any, time_train: Any, event_train: Any, seed: int = 0,
                 params: Mapping[str, Any] | None = None, unpenalized: Any = None) -> Pipeline:
    """Fit one model of `MODELS` (preprocessing + model) on training patients; returns the fitted
    Pipeline. ``params``: settings that replace the model's defaults (`MODEL_PARAMS`).
    ``unpenalized``: a boolean per feature column (e.g. the clinical ones); the elastic-net models
    (``coxnet``, ``linear``) leave those columns unpenalised when their ``unpenalized_clinical``
    setting is on (the default): a few clinical covariates beside thousands of genes are otherwise
    penalised away with the noise, the usual practice being to keep them in the model."""
    settings = model_params(name, params)
    X_train = _check_features(X_train, "X_train")
    time_train, event_train = check_labels(time_train, event_train, name=f"{name} training labels")
    if X_train.shape[0] != time_train.shape[0]:
        raise ValueError(f"X_train has {X_train.shape[0]} rows but there are {time_train.shape[0]} labels")
    if event_train.sum() < 2:
        raise ValueError(f"{name}: need at least 2 deaths among the training patients, got {event_train.sum()}")
    y = _survival_target(time_train, event_train)
    penalty_factor = None
    if unpenalized is not None and settings.get("unpenalized_clinical"):
        unpenalized = np.asarray(unpenalized, dtype=bool)
        if unpenalized.shape != (X_train.shape[1],):
            raise ValueError(f"unpenalized has {unpenalized.shape} entries for {X_train.shape[1]} feature columns")
        if unpenalized.any() and not unpenalized.all():
            penalty_factor = np.where(unpenalized, 0.0, 1.0)
    if name == "coxnet":
        fitted = _fit_coxnet(X_train, y, event_train, seed, float(settings["l1_ratio"]), penalty_factor)
    else:
        prep = make_preprocessor(X_train.shape[1], coxph_components(event_train) if name == "coxph" else None)
        fitted = Pipeline([("prep", prep), ("model", _model(name, settings, seed, penalty_factor))]).fit(X_train, y)
    if name in COX_MODELS:
        fitted.stable_breslow_ = StableBreslow(fitted.predict(X_train), time_train, event_train)
    return fitted


class StableBreslow:
    """The Breslow baseline of a Cox model computed in the log domain, and its survival curves.

    scikit-survival's Breslow estimator sums exp(linear predictor) over the risk sets by subtracting
    from a running total: with a weakly penalised model on thousands of raw features (a small
    penalty of the ``linear`` family, CoxNet on heavy-tailed expression) the training predictors
    span tens to hundreds, the sums overflow or cancel, and the survival curves come out NaN
    (``overflow encountered in exp``/``power``: a family that sank whole nested runs on two public
    cohorts). Here each risk set's sum is a reverse cumulative log-sum-exp of the predictors shifted
    by their training maximum (the baseline absorbs the shift), and S(t | x) = exp(-H0(t) exp(eta(x)))
    is computed as exp(-exp(log H0(t) + eta(x))). Where scikit-survival's curves are finite the two
    agree (tested); where they were not, a patient far outside the training range gets S = 0 (or 1)."""

    def __init__(self, train_eta: np.ndarray, time: np.ndarray, event: np.ndarray):
        train_eta = np.asarray(train_eta, dtype=np.float64)
        if not np.isfinite(train_eta).all():
            raise ValueError("the Cox model's linear predictors of its training patients are not finite "
                             "(the penalty is too small for these features)")
        self.shift = float(train_eta.max())
        order = np.argsort(time, kind="mergesort")
        t, died, z = np.asarray(time, float)[order], np.asarray(event)[order].astype(float), train_eta[order] - self.shift
        self.unique_times_, first = np.unique(t, return_index=True)
        log_risk_set = np.logaddexp.accumulate(z[::-1])[::-1][first]       # log sum_{t_j >= u} exp(z_j)
        deaths = np.add.reduceat(died, first)
        with np.errstate(over="ignore"):
            self.cum_hazard = np.cumsum(deaths * np.exp(-log_risk_set))

    def survival(self, eta: np.ndarray) -> np.ndarray:
        """[N, len(unique_times_)] survival of patients with linear predictors ``eta``."""
        eta = np.asarray(eta, dtype=np.float64) - self.shift
        with np.errstate(divide="ignore", over="ignore"):
            return np.exp(-np.exp(np.log(self.cum_hazard)[None, :] + eta[:, None]))


def predict_baseline(fitted: Pipeline, X_eval: Any) -> BaselinePrediction:
    """Risk scores and survival step functions of a fitted baseline for ``X_eval``."""
    X_eval = _check_features(X_eval, "X_eval")
    X_prepared = fitted[:-1].transform(X_eval)
    model = fitted[-1]
    stable = getattr(fitted, "stable_breslow_", None)   # Cox models fitted since the overflow guard
    if stable is not None:
        eta = np.asarray(model.predict(X_prepared), dtype=np.float64)
        return BaselinePrediction(risk=eta, surv=stable.survival(eta), surv_times=np.asarray(stable.unique_times_))
    return BaselinePrediction(
        risk=np.asarray(model.predict(X_prepared), dtype=np.float64),
        surv=np.asarray(model.predict_survival_function(X_prepared, return_array=True), dtype=np.float64),
        surv_times=np.asarray(model.unique_times_, dtype=np.float64),
    )


def fit_predict_baseline(name: str, X_train: Any, time_train: Any, event_train: Any, X_eval: Any,
                         seed: int = 0, params: Mapping[str, Any] | None = None) -> BaselinePrediction:
    """Fit model ``name`` (one of `MODELS`) on training patients, predict ``X_eval``."""
    return predict_baseline(fit_baseline(name, X_train, time_train, event_train, seed, params), X_eval)


def late_fusion(blocks: Mapping[str, Any], time: Any, event: Any, train_idx: Any, eval_idx: Any,
                model: str = "coxph", seed: int = 0) -> BaselinePrediction:
    """One baseline per modality block, fitted on the training patients that have the block.

    A block is an array [N, F_m] whose all-NaN rows mark patients without that modality. For each
    evaluated patient the **risk** is the mean, over the modalities they have, of each model's risk
    z-scored with that model's mean and standard deviation on its training patients; the
    **survival** is the mean of those models' survival functions on the common grid of unique
    training times. A patient with none of the modalities gets risk 0 and the training
    Kaplan-Meier curve. A modality with fewer than 2 training deaths is skipped.
    """
    time, event = check_labels(time, event, name="late_fusion labels")
    train_idx, eval_idx = _check_split(train_idx, eval_idx, time.shape[0])
    blocks = {m: _check_features(X, f"block {m!r}", n_rows=time.shape[0]) for m, X in blocks.items()}
    if not blocks:
        raise ValueError("late_fusion needs at least one modality block")

    grid = np.unique(time[train_idx])
    risk_sum = np.zeros(eval_idx.shape[0])
    surv_sum = np.zeros((eval_idx.shape[0], grid.shape[0]))
    n_available = np.zeros(eval_idx.shape[0])
    for m, X in blocks.items():
        present = ~np.isnan(X).all(axis=1)
        train_m = train_idx[present[train_idx]]
        eval_mask = present[eval_idx]
        if event[train_m].sum() < 2 or not eval_mask.any():
            continue
        fitted = fit_baseline(model, X[train_m], time[train_m], event[train_m], seed)
        train_risk = predict_baseline(fitted, X[train_m]).risk
        scale = train_risk.std() if train_risk.std() > 0 else 1.0
        pred = predict_baseline(fitted, X[eval_idx[eval_mask]])
        risk_sum[eval_mask] += (pred.risk - train_risk.mean()) / scale
        surv_sum[eval_mask] += interpolate_survival(pred.surv, pred.surv_times, grid, "step")
        n_available[eval_mask] += 1

    km_times, km_surv = kaplan_meier_estimator(event[train_idx].astype(bool), time[train_idx])
    km_on_grid = interpolate_survival(km_surv[None, :], km_times, grid, "step")[0]
    none = n_available == 0
    surv_sum[none] = km_on_grid
    n_available[none] = 1
    return BaselinePrediction(risk=risk_sum / n_available, surv=surv_sum / n_available[:, None], surv_times=grid)


def run_baselines(features: Mapping[str, Any], time: Any, event: Any, train_idx: Any, eval_idx: Any,
                  names: Sequence[str] = BASELINES, late_fusion_model: str | None = "coxph",
                  seed: int = 0, grid: Any = None) -> dict[str, dict[str, float]]:
    """Fit each baseline on ``train_idx``, score it on ``eval_idx``: ``{name: metrics}``.

    ``features`` maps modality -> [N, F_m] (all-NaN rows = modality missing). Each name in
    ``names`` is fitted on all blocks concatenated (early fusion, missing values mean-imputed);
    with ``late_fusion_model`` set, ``"late_fusion_<model>"`` adds `late_fusion`. Metrics are those
    of `impumae.survival.metrics.evaluate` (Antolini C on the survival curves read at
    `common_grid` and interpolated linearly, as impuTMAE's; Harrell C on the model's risk score;
    IBS on the default grid; CS-score).
    """
    time, event = check_labels(time, event, name="run_baselines labels")
    train_idx, eval_idx = _check_split(train_idx, eval_idx, time.shape[0])
    if not features:
        raise ValueError("run_baselines needs at least one feature block")
    blocks = {m: _check_features(X, f"block {m!r}", n_rows=time.shape[0]) for m, X in features.items()}
    X_all = np.concatenate(list(blocks.values()), axis=1)

    surv_grid = common_grid(time[train_idx])

    def score(pred: BaselinePrediction) -> dict[str, float]:
        pred = on_grid(pred, surv_grid)
        return evaluate(pred.surv, pred.surv_times, time[eval_idx], event[eval_idx], time[train_idx],
                        event[train_idx], risk=pred.risk, grid=grid, interpolation="linear")

    results = {}
    for name in names:
        pred = fit_predict_baseline(name, X_all[train_idx], time[train_idx], event[train_idx], X_all[eval_idx], seed)
        results[name] = score(pred)
    if late_fusion_model is not None:
        pred = late_fusion(blocks, time, event, train_idx, eval_idx, model=late_fusion_model, seed=seed)
        results[f"late_fusion_{late_fusion_model}"] = score(pred)
    return results


def _check_features(X: Any, name: str, n_rows: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{name} must be [patients, features], got shape {X.shape}")
    if n_rows is not None and X.shape[0] != n_rows:
        raise ValueError(f"{name} has {X.shape[0]} rows but there are {n_rows} patients")
    if np.isinf(X).any():
        raise ValueError(f"{name} contains infinite values")
    return X


def _check_split(train_idx: Any, eval_idx: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer indices (or boolean masks of length n) of training and evaluated patients."""
    train_idx, eval_idx = (np.flatnonzero(np.asarray(idx)) if np.asarray(idx).dtype == bool
                           else np.asarray(idx, dtype=np.int64).reshape(-1) for idx in (train_idx, eval_idx))
    for name, idx in (("train_idx", train_idx), ("eval_idx", eval_idx)):
        if idx.shape[0] == 0:
            raise ValueError(f"{name} is empty")
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"{name} must index 0..{n - 1}")
    if np.intersect1d(train_idx, eval_idx).shape[0]:
        raise ValueError("train_idx and eval_idx overlap: evaluated patients must not be trained on")
    return train_idx, eval_idx
