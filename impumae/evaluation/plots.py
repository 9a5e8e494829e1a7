"""Figures people look at, saved as PNG (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sksurv.nonparametric import kaplan_meier_estimator  # noqa: E402


def km_by_risk_group(time, event, risk, path: str | Path, groups: int = 3, title: str = "", cuts=None) -> Path:
    """Kaplan-Meier curves of patients split into ``groups`` quantile groups of predicted risk, or
    at the given inner ``cuts`` (e.g. the training patients' risk tertiles, for an external cohort)."""
    time, event, risk = np.asarray(time, float), np.asarray(event, bool), np.asarray(risk, float)
    inner = np.quantile(risk, np.linspace(0, 1, groups + 1))[1:-1] if cuts is None else np.asarray(cuts, float)
    groups = len(inner) + 1
    labels = ["low", "middle", "high"] if groups == 3 else [f"group {i + 1}" for i in range(groups)]
    which = np.clip(np.searchsorted(inner, risk, side="right"), 0, groups - 1)
    fig, ax = plt.subplots(figsize=(6, 4.2))
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
    plt.close(fig)
    return Path(path)


def training_curves(histories: dict[str, list[dict]], path: str | Path) -> Path:
    """One panel per metric found in the histories (train loss, validation C-index, ...)."""
    keys = sorted({k for h in histories.values() for row in h for k in row if k != "epoch"})
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, history in histories.items():
            rows = [r for r in history if key in r]
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker=".", label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
