"""Rank-gauss: per feature, the normal quantile of a value's rank among the training patients.

Omics values in a cohort are heavy-tailed (TCGA RNA z-scores reach |z| = 19): standardised, one
outlying gene dominates its token and LayerNorm flattens the rest. Rank-gauss maps every feature
to a standard normal shape learned from the training patients only, and keeps an inverse, so a
decoder's imputation in model space maps back to the store's values.

Fit: the empirical quantiles of each feature's non-missing training values at ``n_knots``
equally spaced probabilities (a compact summary: 101 knots x 16k genes is 6.5 MB). Apply: the
empirical CDF ``u`` by linear interpolation between knots (ties: the mean of the left and right
interpolations, as scikit-learn's ``QuantileTransformer``), shrunk to ``[0.5/n, 1 - 0.5/n]`` with
``n`` the training count (the plotting position of the extreme order statistics), then
``z = Phi^-1(u)``. Values outside the training range are clamped to its ends, so ``|z|`` is at
most ``Phi^-1(1 - 0.5/n)`` (2.8 for n = 400). NaN stays NaN (the caller fills it). Inverse: ``x =
quantile(Phi(z))``, exact on the knots and monotone in between.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

DEFAULT_KNOTS = 101


class RankGauss:
    def __init__(self, quantiles: np.ndarray, n_train: np.ndarray):
        self.quantiles = np.asarray(quantiles, dtype=np.float64)       # [K, F], non-decreasing per column
        self.n_train = np.asarray(n_train, dtype=np.int64)             # [F] non-missing training values
        self.probs = np.linspace(0.0, 1.0, self.quantiles.shape[0])

    @classmethod
    def fit(cls, train_values: np.ndarray, n_knots: int = DEFAULT_KNOTS) -> "RankGauss":
        """``train_values`` [N, F] of training patients only (NaN = missing value)."""
        x = np.asarray(train_values, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"rank-gauss needs [patients, features], got shape {x.shape}")
        if n_knots < 2:
            raise ValueError(f"rank-gauss needs at least 2 knots, got {n_knots}")
        n_train = np.sum(~np.isnan(x), axis=0)
        probs = np.linspace(0.0, 1.0, n_knots)
        quantiles = np.zeros((n_knots, x.shape[1]))
        observed = n_train > 0
        if observed.any():
            with np.errstate(all="ignore"):
                quantiles[:, observed] = np.nanquantile(x[:, observed], probs, axis=0)
        return cls(quantiles, n_train)

    @property
    def n_features(self) -> int:
        return self.quantiles.shape[1]

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        n = np.maximum(self.n_train, 1).astype(np.float64)
        return 0.5 / n, 1.0 - 0.5 / n

    def apply(self, values: np.ndarray) -> np.ndarray:
        x = self._check(values)
        u = np.full_like(x, np.nan)
        for f in range(self.n_features):
            column, q = x[:, f], self.quantiles[:, f]
            seen = ~np.isnan(column)
            if self.n_train[f] == 0 or q[-1] == q[0]:  # no variation: everyone at the median
                u[seen, f] = 0.5
                continue
            up = np.interp(column[seen], q, self.probs)
            down = 1.0 - np.interp(-column[seen], -q[::-1], self.probs)
            u[seen, f] = 0.5 * (up + down)
        low, high = self._bounds()
        u = low + u * (high - low)
        return ndtri(u)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        z = self._check(z)
        low, high = self._bounds()
        u = np.clip((ndtr(z) - low) / (high - low), 0.0, 1.0)
        out = np.empty_like(z)
        for f in range(self.n_features):
            out[:, f] = np.interp(u[:, f], self.probs, self.quantiles[:, f])
        return out

    def _check(self, values: np.ndarray) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"rank-gauss was fitted on {self.n_features} features, got shape {x.shape}")
        return x

    def to_dict(self) -> dict:
        """Plain lists (checkpoints load with ``weights_only=True``, which refuses numpy arrays)."""
        return {"quantiles": self.quantiles.astype(np.float32).tolist(), "n_train": self.n_train.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "RankGauss":
        return cls(np.asarray(d["quantiles"]), np.asarray(d["n_train"]))
