"""Survival labels and their discretisation into T equidistant time bins.

`check_times` / `check_labels` are the one place where survival labels (time, event) are validated; every other
function of `impumae.survival` calls it.

`TimeBins` reproduces pycox's `LabTransDiscreteTime(n_bins, scheme="equidistant")` (the
discretisation behind `pycox.models.LogisticHazard.label_transform`):

* cut points: ``cuts = np.linspace(0, max(train_time), n_bins)``, so ``cuts[0] == 0`` and
  ``cuts[-1]`` is the training fold's largest time;
* an event at time t goes to the first cut point at or after t (rounded up):
  ``idx = searchsorted(cuts, t, side="left")``, i.e. an event in ``(cuts[j-1], cuts[j]]`` has
  index j (an event at exactly 0 has index 0);
* a censoring at time t goes to the last cut point at or before t (rounded down):
  ``idx = searchsorted(cuts, t, side="right") - 1``; the patient is known to survive that cut;
* a time beyond ``cuts[-1]`` (a validation or test patient who lived longer than anybody in the
  training fold) is clipped into the last bin **and censored there** (event set to 0), as pycox
  does: the model only describes the hazard up to ``cuts[-1]``, and all we know of such a patient
  within that horizon is that they were alive at ``cuts[-1]``.

The survival curve of a discrete-time hazard model is given at the cut points:
``S(cuts[j]) = prod_{k <= j} (1 - h_k)`` (see `impumae.survival.metrics.survival_curve`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_times(time: Any, name: str = "time") -> np.ndarray:
    """Validate a 1-D array of survival times (finite, >= 0, non-empty) and return it as float64."""
    time_arr = np.asarray(to_numpy(time), dtype=np.float64)
    if time_arr.ndim != 1:
        raise ValueError(f"{name}: time must be 1-D, got shape {time_arr.shape}")
    if time_arr.shape[0] == 0:
        raise ValueError(f"{name}: no patients")
    bad = ~np.isfinite(time_arr)
    if bad.any():
        raise ValueError(f"{name}: time is NaN or infinite at positions {np.flatnonzero(bad)[:10].tolist()}")
    if (time_arr < 0).any():
        raise ValueError(f"{name}: negative times at positions {np.flatnonzero(time_arr < 0)[:10].tolist()}")
    return time_arr


def check_labels(time: Any, event: Any, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Validate survival labels and return them as (float64 times, int64 events in {0, 1}).

    Raises ValueError naming the problem: not 1-D, length mismatch, empty, non-finite or negative
    times, events other than 0/1 (booleans are accepted).
    """
    time_arr = check_times(time, name)
    event_raw = np.asarray(to_numpy(event))
    if event_raw.ndim != 1:
        raise ValueError(f"{name}: event must be 1-D, got shape {event_raw.shape}")
    if time_arr.shape[0] != event_raw.shape[0]:
        raise ValueError(f"{name}: time has {time_arr.shape[0]} values but event has {event_raw.shape[0]}")
    event_float = event_raw.astype(np.float64)
    not_binary = ~np.isin(event_float, (0.0, 1.0))
    if not_binary.any():
        raise ValueError(
            f"{name}: event must be 0 (censored) or 1 (death); got {np.unique(event_raw[not_binary])[:10].tolist()}"
        )
    return time_arr, event_float.astype(np.int64)


def to_numpy(x: Any) -> Any:
    """Detach and move a torch tensor to numpy; pass anything else through."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x


class TimeBins:
    """T equidistant cut points from 0 to the training fold's largest time (pycox-compatible).

    >>> bins = TimeBins(n_bins=20).fit(train_time)
    >>> idx, event = bins.transform(time, event)   # int64 bin index, float32 event
    """

    def __init__(self, n_bins: int = 20):
        if int(n_bins) != n_bins or n_bins < 2:
            raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        self.n_bins = int(n_bins)
        self.cuts: np.ndarray | None = None

    def fit(self, train_time: Any) -> "TimeBins":
        """Set ``cuts = linspace(0, max(train_time), n_bins)`` from the training fold's times."""
        train_time = check_times(train_time, name="TimeBins.fit")
        max_time = float(train_time.max())
        if max_time <= 0:
            raise ValueError("TimeBins.fit: the largest training time must be > 0")
        self.cuts = np.linspace(0.0, max_time, self.n_bins, dtype=np.float64)
        return self

    def _fitted_cuts(self) -> np.ndarray:
        if self.cuts is None:
            raise RuntimeError("TimeBins is not fitted: call .fit(train_time) first")
        return self.cuts

    def transform(self, time: Any, event: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map (time, event) to (bin index int64 in [0, n_bins), event float32).

        Events round up to the next cut, censorings round down; times beyond the last cut are
        censored at the last cut (see the module docstring).
        """
        cuts = self._fitted_cuts()
        time, event = check_labels(time, event, name="TimeBins.transform")
        beyond = time > cuts[-1]
        event = np.where(beyond, 0, event)
        time = np.minimum(time, cuts[-1])
        idx_event = np.searchsorted(cuts, time, side="left")
        idx_censored = np.searchsorted(cuts, time, side="right") - 1
        idx = np.where(event == 1, idx_event, idx_censored).astype(np.int64)
        return idx, event.astype(np.float32)

    def fit_transform(self, time: Any, event: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.fit(time).transform(time, event)

    def baseline_hazard_logits(self, time: Any, event: Any, eps: float = 1e-4) -> np.ndarray:
        """Logits of the population's discrete hazard in each bin, from (training) labels.

        ``h_j = d_j / r_j``: deaths in bin j over patients still at risk in bin j (bin index >= j;
        a patient censored in bin j counts as surviving it, as in the loss). This is the
        Kaplan-Meier estimator on the binned times and the maximum-likelihood fit of
        `nll_logistic_hazard` with no covariates: a hazard head whose bias starts here predicts
        the Kaplan-Meier curve before it has learned anything. ``h`` is clipped to
        ``[eps, 1 - eps]`` (a bin nobody reaches gets ``eps``).
        """
        idx, event = self.transform(time, event)
        deaths = np.bincount(idx[event == 1], minlength=self.n_bins).astype(np.float64)
        at_risk = np.bincount(idx, minlength=self.n_bins)[::-1].cumsum()[::-1].astype(np.float64)
        hazard = np.divide(deaths, at_risk, out=np.zeros(self.n_bins), where=at_risk > 0)
        hazard = np.clip(hazard, eps, 1.0 - eps)
        return np.log(hazard) - np.log1p(-hazard)

    def to_dict(self) -> dict:
        """JSON-serialisable state, to store with a checkpoint."""
        return {"n_bins": self.n_bins, "cuts": None if self.cuts is None else self.cuts.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> "TimeBins":
        bins = cls(n_bins=state["n_bins"])
        if state.get("cuts") is not None:
            cuts = np.asarray(state["cuts"], dtype=np.float64)
            if cuts.shape != (bins.n_bins,) or cuts[0] != 0 or (np.diff(cuts) <= 0).any():
                raise ValueError(f"TimeBins.from_dict: invalid cuts for n_bins={bins.n_bins}: {state['cuts']}")
            bins.cuts = cuts
        return bins

    def __repr__(self) -> str:
        if self.cuts is None:
            return f"TimeBins(n_bins={self.n_bins}, unfitted)"
        return f"TimeBins(n_bins={self.n_bins}, max_time={self.cuts[-1]:.4g})"
