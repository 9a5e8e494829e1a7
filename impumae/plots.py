"""Figures people look at, saved as PNG: Kaplan-Meier by risk group, training curves, calibration.

Every figure is a :class:`matplotlib.figure.Figure` drawn and saved on its own, never through
``pyplot``: the PNG canvas is chosen when the figure is saved, so importing this module sets no
process-wide backend and opens no window. The functions draw what they are given; reading saved
predictions and scoring models is the callers' work. Below the engine, the export and the report,
which all draw with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sksurv.nonparametric import kaplan_meier_estimator

from impumae.survival.metrics import interpolate_survival

CALIBRATION_GROUPS = 3


def km_by_risk_group(time, event, risk, path: str | Path, groups: int = 3, title: str = "", cuts=None) -> Path:
    """Kaplan-Meier curves of patients split into ``groups`` quantile groups of predicted risk, or
    at the given inner ``cuts`` (e.g. the training patients' risk tertiles, for an external cohort)."""
    time, event, risk = np.asarray(time, float), np.asarray(event, bool), np.asarray(risk, float)
    inner = np.quantile(risk, np.linspace(0, 1, groups + 1))[1:-1] if cuts is None else np.asarray(cuts, float)
    groups = len(inner) + 1
    labels = ["low", "middle", "high"] if groups == 3 else [f"group {i + 1}" for i in range(groups)]
    which = np.clip(np.searchsorted(inner, risk, side="right"), 0, groups - 1)
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for g in range(groups):
        sel = which == g
        if sel.sum() == 0:
            continue
        t, s = kaplan_meier_estimator(event[sel], time[sel])
        ax.step(np.r_[0, t], np.r_[1, s], where="post", label=f"{labels[g]} risk (n={sel.sum()}, events={event[sel].sum()})")
    ax.set_xlabel("years")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "Kaplan-Meier by predicted risk group", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def training_curves(histories: dict[str, list[dict]], path: str | Path) -> Path:
    """One panel per metric found in the histories (train loss, validation C-index, ...)."""
    keys = sorted({k for h in histories.values() for row in h for k in row if k != "epoch"})
    fig = Figure(figsize=(4 * max(1, len(keys)), 3.2))
    axes = fig.subplots(1, max(1, len(keys)), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, history in histories.items():
            rows = [r for r in history if key in r]
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker=".", label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def calibration_plot(predictions_by_subset: dict[str, dict], path: str | Path, groups: int = CALIBRATION_GROUPS,
                     title: str = "Holdout calibration") -> dict:
    """Predicted vs Kaplan-Meier survival at a horizon = the median training time, per risk group.
    Each entry holds survival curves ``survival`` [N, len(cuts)] at the ``cuts``, ``time``, ``event``
    and ``train_time``.

    The horizon is fixed from training labels before looking at the scored patients. Returns the points
    ``{subset: {horizon, predicted: [...], observed: [...], n: [...]}}``.
    """
    points = {}
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for subset, p in predictions_by_subset.items():
        horizon = float(np.median(p["train_time"]))
        surv = interpolate_survival(p["survival"], p["cuts"], [horizon], "linear")[:, 0]
        edges = np.quantile(surv, np.linspace(0, 1, groups + 1))
        which = np.clip(np.searchsorted(edges[1:-1], surv, side="right"), 0, groups - 1)
        predicted, observed, counts = [], [], []
        for g in range(groups):
            sel = which == g
            if sel.sum() < 2:
                continue
            t, s = kaplan_meier_estimator(p["event"][sel].astype(bool), p["time"][sel])
            observed.append(float(s[t <= horizon][-1]) if (t <= horizon).any() else 1.0)
            predicted.append(float(surv[sel].mean()))
            counts.append(int(sel.sum()))
        points[subset] = {"horizon": horizon, "predicted": predicted, "observed": observed, "n": counts}
        ax.plot(predicted, observed, marker="o", label=f"{subset} (t = {horizon:.2f} y)")
    ax.set_xlabel("predicted survival at t (mean of the group)")
    ax.set_ylabel("observed survival at t (Kaplan-Meier)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}, {groups} groups of predicted survival", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return points
