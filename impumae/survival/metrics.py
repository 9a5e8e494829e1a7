"""Survival metrics on real times: Antolini's time-dependent C-index, Harrell's C-index, the
IPCW Brier score and its integral (IBS), the paper's CS-score, and bootstrap confidence intervals.

Conventions (numpy in, floats out):

* A prediction is a survival matrix ``surv [N, G]`` giving S_i(surv_times[g]) for N patients on
  an increasing grid ``surv_times [G]`` (for the impuTMAE head: ``survival_curve(logits)`` at the
  `TimeBins` cuts). Between grid points the curve is interpolated (`interpolate_survival`):
  ``"linear"`` (default; pycox's ``interpolate`` with constant density between cuts) or
  ``"step"`` (right-continuous, pycox's ``steps="post"``, exact for Kaplan-Meier/Cox/RSF step
  functions). With only 20 bins a step curve gives many patients the same S at a time, which
  pycox's Antolini C-index counts as *not* concordant; linear interpolation removes those
  artificial ties (reference notes 4b). If ``surv_times[0] > 0`` the curve is anchored at
  S(0) = 1; after the last grid point it stays constant.
* Metrics use the patients' real times, never bin indices (reference notes 3.6).
* **Ties.** ``c_index`` is Antolini's C with tied predictions counted 1/2, as pycox's
  ``adj_antolini`` (its ``concordance_td()`` default) counts them: a pair whose predicted
  survivals are equal counts 1/2 (pairs with tied times as in `concordance_antolini`). A model that predicts one curve for everyone then
  scores 0.5, as Harrell's C says, not 0. ``c_index_strict`` is the strict Antolini convention
  (pycox ``'antolini'``: ties count as discordant), kept only as a labelled column for
  comparisons with the paper, whose code used it; selection and reports use ``c_index``.
* The IPCW censoring distribution G is the reverse Kaplan-Meier fitted on the **training**
  patients (as `sksurv.metrics.brier_score` does), evaluated as a right-continuous step function
  and held constant after the last training time. Where G = 0 the weight is 0 (sksurv's rule).
* Pair-based and Brier computations are O(N^2) and O(N * grid) in memory (N = 2,000 test patients:
  32 MB per N x N matrix); all of them are written as weighted sums so that `bootstrap_ci`
  re-weights the same matrices instead of recomputing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sksurv.nonparametric import kaplan_meier_estimator

from impumae.survival.bins import to_numpy, check_labels, check_times

INTERPOLATIONS = ("linear", "step")
METRIC_NAMES = ("c_index", "c_index_strict", "c_index_harrell", "ibs", "cs_score")
_SURV_TOL = 1e-6
_TIE_TOL = 1e-12          # predicted survivals closer than this are a tie (pycox compares exactly)
CONSTANT_TOL = 1e-9       # predictions whose curves all lie within this of each other are constant


# ----------------------------------------------------------------------------- survival curves
def survival_curve(logits: Any) -> Any:
    """Survival at the cut points from hazard logits: ``S[:, j] = prod_{k <= j} (1 - sigmoid(logits[:, k]))``.

    Computed as ``exp(cumsum(log sigmoid(-logits)))`` (stable for large logits). A torch tensor
    in gives a torch tensor out (differentiable); anything else gives a float64 numpy array.
    """
    if hasattr(logits, "detach"):
        import torch

        return torch.exp(torch.cumsum(torch.nn.functional.logsigmoid(-logits), dim=-1))
    logits = np.asarray(logits, dtype=np.float64)
    log_one_minus_hazard = -np.logaddexp(0.0, logits)  # log(1 - sigmoid(x)) = -log(1 + e^x)
    return np.exp(np.cumsum(log_one_minus_hazard, axis=-1))


def check_survival_matrix(surv: Any, surv_times: Any, name: str = "surv") -> tuple[np.ndarray, np.ndarray]:
    """Validate a survival matrix [N, G] on an increasing time grid [G]; return float64 copies.

    Values must be finite, in [0, 1] and non-increasing along each row (tolerance 1e-6; values
    are then clipped to [0, 1]). Hazard logits fail this check: pass ``survival_curve(logits)``
    or ``from_logits=True``.
    """
    surv = np.asarray(to_numpy(surv), dtype=np.float64)
    surv_times = check_times(surv_times, name=f"{name} times")
    if surv.ndim != 2:
        raise ValueError(f"{name} must be a [patients, times] matrix, got shape {surv.shape}")
    if surv.shape[1] != surv_times.shape[0]:
        raise ValueError(f"{name} has {surv.shape[1]} columns but {surv_times.shape[0]} times were given")
    if surv_times.shape[0] > 1 and (np.diff(surv_times) <= 0).any():
        raise ValueError(f"{name} times must be strictly increasing")
    if not np.isfinite(surv).all():
        rows = np.flatnonzero(~np.isfinite(surv).all(axis=1))
        raise ValueError(f"{name} has NaN or infinite values in rows {rows[:10].tolist()}")
    if surv.min() < -_SURV_TOL or surv.max() > 1 + _SURV_TOL:
        raise ValueError(
            f"{name} must hold survival probabilities in [0, 1], got range [{surv.min():.4g}, {surv.max():.4g}]"
            " (hazard logits? use survival_curve(logits) or from_logits=True)"
        )
    if surv.shape[1] > 1 and (np.diff(surv, axis=1) > _SURV_TOL).any():
        raise ValueError(f"{name} rows must be non-increasing in time (hazard logits? use survival_curve(logits))")
    return np.clip(surv, 0.0, 1.0), surv_times


def interpolate_survival(surv: Any, surv_times: Any, times: Any, interpolation: str = "linear") -> np.ndarray:
    """Survival of each patient at arbitrary ``times``: returns [N, len(times)].

    ``"linear"``: linear between grid points; ``"step"``: S(t) = S(surv_times[j]) for
    surv_times[j] <= t < surv_times[j+1]. Before the first grid point S = 1 (the curve is anchored
    at (0, 1) when surv_times[0] > 0); after the last one S stays at its last value.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    surv, surv_times = check_survival_matrix(surv, surv_times)
    times = np.asarray(to_numpy(times), dtype=np.float64).reshape(-1)
    if not np.isfinite(times).all():
        raise ValueError("times to interpolate at must be finite")
    if surv_times[0] > 0:
        surv = np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1)
        surv_times = np.concatenate([[0.0], surv_times])
    left = np.searchsorted(surv_times, times, side="right") - 1   # last grid point <= t, -1 if none
    before_start = left < 0
    if interpolation == "step" or surv_times.shape[0] == 1:
        values = surv[:, np.clip(left, 0, None)]
    else:
        left = np.clip(left, 0, surv_times.shape[0] - 2)
        right = left + 1
        weight = (times - surv_times[left]) / (surv_times[right] - surv_times[left])
        weight = np.clip(weight, 0.0, 1.0)
        values = surv[:, left] * (1.0 - weight) + surv[:, right] * weight
    values[:, before_start] = 1.0
    return values


def restricted_mean_survival(surv: Any, surv_times: Any, interpolation: str = "linear") -> np.ndarray:
    """Area under each survival curve from 0 to the last grid time (restricted mean survival time).

    The expected survival up to the horizon; ``-restricted_mean_survival`` is the risk score that
    `evaluate` uses for Harrell's C-index when no risk is given.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    surv, surv_times = check_survival_matrix(surv, surv_times)
    if surv_times[0] > 0:
        surv = np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1)
        surv_times = np.concatenate([[0.0], surv_times])
    widths = np.diff(surv_times)
    if interpolation == "step":
        return surv[:, :-1] @ widths
    return (0.5 * (surv[:, :-1] + surv[:, 1:])) @ widths


# ----------------------------------------------------------------------------- censoring weights
def survival_risk(surv: Any, surv_times: Any, interpolation: str = "linear") -> np.ndarray:
    """The risk score of survival curves (higher = worse): minus the restricted mean survival time.
    Every family's Harrell C, risk groups and Kaplan-Meier plots use it."""
    return -restricted_mean_survival(surv, surv_times, interpolation)


def censoring_survival(train_time: Any, train_event: Any, at_times: Any) -> np.ndarray:
    """G(t) = P(censoring time > t), reverse Kaplan-Meier on the training patients, at ``at_times``.

    Right-continuous step function (G = 1 before the first training time, held constant after the
    last one); identical to sksurv's ``CensoringDistributionEstimator`` inside its support.
    """
    train_time, train_event = check_labels(train_time, train_event, name="training labels")
    at_times = np.asarray(at_times, dtype=np.float64)
    if train_event.all():
        return np.ones_like(at_times)
    unique_times, prob = kaplan_meier_estimator(train_event.astype(bool), train_time, reverse=True)
    left = np.searchsorted(unique_times, at_times, side="right") - 1
    return np.where(left < 0, 1.0, prob[np.clip(left, 0, None)])


# ----------------------------------------------------------------------------- building blocks
def _comparable_pairs(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """[N, N] bool: (i, j) comparable when i died first (t_i < t_j), or at the same time as a
    censored j (pycox 'antolini' and sksurv Harrell conventions; a patient is never paired with itself)."""
    died = event.astype(bool)[:, None]
    earlier = time[:, None] < time[None, :]
    tied_with_censored = (time[:, None] == time[None, :]) & (event[None, :] == 0)
    return died & (earlier | tied_with_censored)


def _antolini_concordant(surv_at_event_times: np.ndarray, comparable: np.ndarray) -> np.ndarray:
    """[N, N] float: 1 where comparable and S_i(t_i) < S_j(t_i) (strict, as pycox 'antolini').

    ``surv_at_event_times[j, k] = S_j(t_k)``."""
    own = np.diag(surv_at_event_times)
    return (comparable & (own[:, None] < surv_at_event_times.T)).astype(np.float64)


def _antolini_concordant_adjusted(surv_at_event_times: np.ndarray, comparable: np.ndarray) -> np.ndarray:
    """[N, N] float: over comparable pairs, 1 where S_i(t_i) < S_j(t_i) and 1/2 where they are equal
    (pycox ``adj_antolini``'s rule for tied predictions)."""
    own = np.diag(surv_at_event_times)[:, None]
    other = surv_at_event_times.T                       # [i, j] = S_j(t_i)
    equal = np.abs(own - other) <= _TIE_TOL
    return comparable * np.where(equal, 0.5, (own < other).astype(np.float64))


def constant_predictions(surv: Any, tol: float = CONSTANT_TOL) -> bool:
    """Whether every patient was given the same survival curve (within ``tol``): a model that
    cannot rank anyone (e.g. a forest whose leaves hold every training patient)."""
    surv = np.asarray(to_numpy(surv), dtype=np.float64)
    return bool(surv.shape[0] > 1 and np.all(np.abs(surv - surv[:1]) <= tol))


def _harrell_concordant(risk: np.ndarray, comparable: np.ndarray, tied_tol: float = 1e-8) -> np.ndarray:
    """[N, N] float: 1 where comparable and risk_i > risk_j, 0.5 for tied risks (sksurv convention)."""
    diff = risk[:, None] - risk[None, :]
    score = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(np.float64))
    return score * comparable


def _weighted_pair_ratio(concordant: np.ndarray, comparable: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_ij w_i w_j concordant_ij / sum_ij w_i w_j comparable_ij for each row of ``weights`` [B, N];
    NaN where no pair is comparable. A bootstrap resample is a row of multiplicities."""
    numerator = np.einsum("bi,bi->b", weights @ concordant, weights)
    denominator = np.einsum("bi,bi->b", weights @ comparable.astype(np.float64), weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _brier_contributions(
    surv_at_grid: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    grid: np.ndarray,
    train_time: np.ndarray,
    train_event: np.ndarray,
) -> np.ndarray:
    """[N, G] per-patient IPCW Brier terms (Graf 1999); the Brier score at grid[g] is their mean.

    Died by t: S_i(t)^2 / G(t_i); still at risk after t: (1 - S_i(t))^2 / G(t); censored by t: 0.
    """
    g_at_time = censoring_survival(train_time, train_event, time)
    g_at_grid = censoring_survival(train_time, train_event, grid)
    inv_g_time = np.divide(1.0, g_at_time, out=np.zeros_like(g_at_time), where=g_at_time > 0)
    inv_g_grid = np.divide(1.0, g_at_grid, out=np.zeros_like(g_at_grid), where=g_at_grid > 0)
    died_by_t = (time[:, None] <= grid[None, :]) & (event[:, None] == 1)
    alive_after_t = time[:, None] > grid[None, :]
    return (
        np.square(surv_at_grid) * died_by_t * inv_g_time[:, None]
        + np.square(1.0 - surv_at_grid) * alive_after_t * inv_g_grid[None, :]
    )


def _integrate_over_grid(brier: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Trapezoid integral of Brier scores over the grid divided by its span (sksurv's definition)."""
    return np.trapezoid(brier, grid, axis=-1) / (grid[-1] - grid[0])


def ibs_grid(time: Any, train_time: Any | None = None, n_points: int = 100,
             quantiles: tuple[float, float] = (0.1, 0.9)) -> np.ndarray:
    """Default IBS grid: ``n_points`` equidistant times from the 10th to the 90th percentile of the
    observed evaluation times (events and censorings together), capped at the largest training time.

    Strictly inside the follow-up: the Brier score near the end of follow-up rests on a handful of
    patients with huge IPC weights, and sksurv refuses grids reaching the last observed time; the
    cap keeps the grid where the training censoring curve is estimated.
    """
    time = check_times(time, name="evaluation times")
    low, high = np.quantile(time, quantiles)
    if train_time is not None:
        high = min(high, float(check_times(train_time, name="training times").max()))
    if not high > low:
        raise ValueError(f"cannot build an IBS grid: quantile range [{low:.4g}, {high:.4g}] is empty")
    return np.linspace(low, high, n_points)


def _check_grid(grid: Any) -> np.ndarray:
    grid = check_times(grid, name="IBS grid")
    if grid.shape[0] < 2 or (np.diff(grid) <= 0).any():
        raise ValueError("IBS grid needs at least 2 strictly increasing times")
    return grid


# ----------------------------------------------------------------------------- public metrics
def concordance_antolini(surv: Any, surv_times: Any, time: Any, event: Any, interpolation: str = "linear",
                         ties: str = "adjusted") -> float:
    """Antolini's time-dependent C-index on real times.

    Comparable pairs: i died first (t_i < t_j), or at the same time as a censored j.
    ``ties="adjusted"`` (default): S_i(t_i) < S_j(t_i) counts 1 and equal survivals 1/2, as pycox's
    ``concordance_td('adj_antolini')`` counts them (the same value when no two patients share a
    time; pycox also pairs tied deaths, each counted concordant when their survivals are equal,
    which this leaves out, as Harrell's C in scikit-survival does, so that a bootstrap resample's
    duplicated patients are never scored against themselves).
    ``ties="strict"`` (pycox ``concordance_td('antolini')``, the paper's code): over pairs where i
    died first, the fraction with S_i(t_i) < S_j(t_i); equal survivals count as not concordant.
    NaN when there is no comparable pair (no events).
    """
    if ties not in ("adjusted", "strict"):
        raise ValueError(f"ties must be 'adjusted' or 'strict', got {ties!r}")
    time, event = check_labels(time, event, name="concordance_antolini")
    _check_rows(surv, time)
    surv_at_event_times = interpolate_survival(surv, surv_times, time, interpolation)
    if ties == "strict":
        comparable = _comparable_pairs(time, event)
        concordant = _antolini_concordant(surv_at_event_times, comparable)
    else:
        comparable = _comparable_pairs(time, event)
        concordant = _antolini_concordant_adjusted(surv_at_event_times, comparable)
    return float(_weighted_pair_ratio(concordant, comparable, np.ones((1, time.shape[0])))[0])


def concordance_harrell(risk: Any, time: Any, event: Any, tied_tol: float = 1e-8) -> float:
    """Harrell's C-index of a risk score (higher = earlier death); tied risks count 1/2.

    Same value as ``sksurv.metrics.concordance_index_censored(event, time, risk)[0]``.
    NaN when there is no comparable pair.
    """
    time, event = check_labels(time, event, name="concordance_harrell")
    risk = _check_risk(risk, time)
    comparable = _comparable_pairs(time, event)
    concordant = _harrell_concordant(risk, comparable, tied_tol)
    return float(_weighted_pair_ratio(concordant, comparable, np.ones((1, time.shape[0])))[0])


def brier_ipcw(surv: Any, surv_times: Any, time: Any, event: Any, train_time: Any, train_event: Any,
               at_times: Any, interpolation: str = "linear") -> np.ndarray:
    """IPCW Brier score (Graf 1999) at each of ``at_times``; censoring KM fitted on training data.

    Same value as ``sksurv.metrics.brier_score(train, test, S(at_times), at_times)`` (which also
    needs at_times inside the test follow-up).
    """
    time, event = check_labels(time, event, name="brier_ipcw")
    train_time, train_event = check_labels(train_time, train_event, name="brier_ipcw training labels")
    _check_rows(surv, time)
    at_times = check_times(np.atleast_1d(at_times), name="Brier times")
    surv_at = interpolate_survival(surv, surv_times, at_times, interpolation)
    return _brier_contributions(surv_at, time, event, at_times, train_time, train_event).mean(axis=0)


def integrated_brier_score(surv: Any, surv_times: Any, time: Any, event: Any, train_time: Any,
                           train_event: Any, grid: Any = None, interpolation: str = "linear") -> float:
    """Integrated IPCW Brier score: trapezoid over ``grid`` divided by its span.

    ``grid=None`` uses `ibs_grid(time, train_time)` (100 points, 10th-90th percentile of the
    observed times, capped at the largest training time).
    """
    grid = ibs_grid(time, train_time) if grid is None else _check_grid(grid)
    brier = brier_ipcw(surv, surv_times, time, event, train_time, train_event, grid, interpolation)
    return float(_integrate_over_grid(brier, grid))


def cs_score(c_index: float, ibs: float) -> float:
    """The paper's CS-score (Eq. 4): (C-index + 1 - IBS) / 2."""
    return (c_index + 1.0 - ibs) / 2.0


# ----------------------------------------------------------------------------- evaluate / bootstrap
@dataclass
class _EvaluationParts:
    """The matrices all four metrics are weighted sums of (computed once per test set)."""

    comparable: np.ndarray          # [N, N] bool
    antolini: np.ndarray            # [N, N] concordant pairs of S, strict (ties 0)
    antolini_adjusted: np.ndarray   # [N, N] concordance of S, ties 1/2
    harrell: np.ndarray             # [N, N] concordant pairs of the risk
    brier: np.ndarray               # [N, G] IPCW Brier terms
    grid: np.ndarray                # [G]

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """All metrics for each row of patient multiplicities ``weights`` [B, N]."""
        c_index = _weighted_pair_ratio(self.antolini_adjusted, self.comparable, weights)
        c_strict = _weighted_pair_ratio(self.antolini, self.comparable, weights)
        c_harrell = _weighted_pair_ratio(self.harrell, self.comparable, weights)
        brier = (weights @ self.brier) / weights.sum(axis=1, keepdims=True)
        ibs = _integrate_over_grid(brier, self.grid)
        return {"c_index": c_index, "c_index_strict": c_strict, "c_index_harrell": c_harrell, "ibs": ibs,
                "cs_score": cs_score(c_index, ibs)}


def _evaluation_parts(surv, surv_times, time, event, train_time, train_event, from_logits, risk, grid,
                      interpolation) -> _EvaluationParts:
    time, event = check_labels(time, event, name="evaluation labels")
    train_time, train_event = check_labels(train_time, train_event, name="training labels")
    if from_logits:
        surv = survival_curve(np.asarray(to_numpy(surv), dtype=np.float64))
    surv, surv_times = check_survival_matrix(surv, surv_times)
    _check_rows(surv, time)
    risk = survival_risk(surv, surv_times, interpolation) if risk is None else _check_risk(risk, time)
    grid = ibs_grid(time, train_time) if grid is None else _check_grid(grid)
    comparable = _comparable_pairs(time, event)
    surv_at_event_times = interpolate_survival(surv, surv_times, time, interpolation)
    surv_at_grid = interpolate_survival(surv, surv_times, grid, interpolation)
    return _EvaluationParts(
        comparable=comparable,
        antolini=_antolini_concordant(surv_at_event_times, comparable),
        antolini_adjusted=_antolini_concordant_adjusted(surv_at_event_times, comparable),
        harrell=_harrell_concordant(risk, comparable),
        brier=_brier_contributions(surv_at_grid, time, event, grid, train_time, train_event),
        grid=grid,
    )


def evaluate(surv: Any, surv_times: Any, time: Any, event: Any, train_time: Any, train_event: Any, *,
             from_logits: bool = False, risk: Any = None, grid: Any = None,
             interpolation: str = "linear") -> dict[str, float]:
    """All test metrics of one prediction: ``{c_index, c_index_strict, c_index_harrell, ibs, cs_score,
    constant_predictions}`` (the last: 1.0 when every patient got the same curve, else 0.0).

    Args:
        surv: survival matrix [N, G] at ``surv_times`` (e.g. ``survival_curve(logits)`` at
            ``TimeBins.cuts``); with ``from_logits=True``, hazard logits [N, T] instead.
        surv_times: increasing times [G] of the columns of ``surv``.
        time, event: the evaluated patients' labels (real times).
        train_time, train_event: the training fold's labels (censoring KM for the IPCW, grid cap).
        risk: risk score for Harrell's C (higher = worse); default ``-restricted_mean_survival``
            (negative expected survival up to surv_times[-1]).
        grid: IBS grid; default `ibs_grid(time, train_time)`.
        interpolation: "linear" (default) or "step", see the module docstring.

    ``c_index`` is Antolini's time-dependent C on real times with ties 1/2 (pycox
    ``adj_antolini``), ``c_index_strict`` the strict version, ``cs_score`` = (c_index + 1 - ibs) / 2.
    """
    parts = _evaluation_parts(surv, surv_times, time, event, train_time, train_event, from_logits, risk,
                              grid, interpolation)
    values = parts.metrics(np.ones((1, parts.comparable.shape[0])))
    out = {name: float(values[name][0]) for name in METRIC_NAMES}
    shown = survival_curve(np.asarray(to_numpy(surv), dtype=np.float64)) if from_logits else surv
    out["constant_predictions"] = float(constant_predictions(shown))
    return out


def bootstrap_ci(surv: Any, surv_times: Any, time: Any, event: Any, train_time: Any, train_event: Any,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, *, from_logits: bool = False,
                 risk: Any = None, grid: Any = None,
                 interpolation: str = "linear") -> dict[str, tuple[float, float, float]]:
    """Percentile bootstrap CIs over the evaluated patients: ``{metric: (estimate, low, high)}``.

    The estimate is `evaluate` on the full set. Each of ``n_boot`` resamples draws N patients with
    replacement (seeded); the model, the training censoring curve and the IBS grid stay fixed, so
    only the test-set sampling varies. Resamples without a comparable pair (no events) give no
    C-index and are skipped for all metrics; a ValueError is raised if more than half are skipped.
    Vectorised: the pair and Brier matrices are computed once and re-weighted by the resample
    multiplicities.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    parts = _evaluation_parts(surv, surv_times, time, event, train_time, train_event, from_logits, risk,
                              grid, interpolation)
    n_patients = parts.comparable.shape[0]
    estimate = parts.metrics(np.ones((1, n_patients)))
    rng = np.random.default_rng(seed)
    multiplicities = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot)
    resampled = parts.metrics(multiplicities.astype(np.float64))
    valid = np.isfinite(resampled["c_index"]) & np.isfinite(resampled["c_index_strict"]) & np.isfinite(resampled["c_index_harrell"])
    if valid.sum() < max(1, n_boot / 2):
        raise ValueError(f"only {int(valid.sum())} of {n_boot} bootstrap resamples had comparable pairs")
    result = {}
    for name in METRIC_NAMES:
        low, high = np.quantile(resampled[name][valid], [alpha / 2, 1 - alpha / 2])
        result[name] = (float(estimate[name][0]), float(low), float(high))
    return result


# ----------------------------------------------------------------------------- input checks
def _check_rows(surv: Any, time: np.ndarray) -> None:
    n_rows = np.shape(to_numpy(surv))[0] if np.ndim(to_numpy(surv)) >= 1 else 0
    if n_rows != time.shape[0]:
        raise ValueError(f"predictions have {n_rows} rows but there are {time.shape[0]} patients")


def _check_risk(risk: Any, time: np.ndarray) -> np.ndarray:
    risk = np.asarray(to_numpy(risk), dtype=np.float64).reshape(-1)
    if risk.shape[0] != time.shape[0]:
        raise ValueError(f"risk has {risk.shape[0]} values but there are {time.shape[0]} patients")
    if not np.isfinite(risk).all():
        raise ValueError(f"risk is NaN or infinite at positions {np.flatnonzero(~np.isfinite(risk))[:10].tolist()}")
    return risk
