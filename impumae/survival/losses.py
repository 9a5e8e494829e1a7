"""Survival losses on hazard logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


def nll_logistic_hazard(
    logits: torch.Tensor,
    idx: torch.Tensor,
    event: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative log-likelihood of the discrete-time logistic hazard model (paper Eq. 3).

    With the hazard ``h_t = sigmoid(logits[:, t])`` and a patient whose time falls in bin
    ``kappa = idx`` (see `impumae.survival.bins.TimeBins`):

        loss_i = - sum_{t <= kappa} [ y_it log h_t + (1 - y_it) log(1 - h_t) ],
        y_it = event_i if t == kappa else 0,

    i.e. the patient survives every bin before kappa and, in bin kappa, dies (event = 1) or
    survives (event = 0, censored). ``reduction="mean"`` averages over the n patients as in the
    paper; "sum" and "none" (one value per patient) are also available. Same value as
    `pycox.models.loss.nll_logistic_hazard`.

    Args:
        logits: float tensor [B, T] of hazard logits.
        idx: integer tensor [B] of bin indices in [0, T).
        event: tensor [B] of 0/1 (float, int or bool).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, T], got shape {tuple(logits.shape)}")
    n_patients, n_bins = logits.shape
    idx = idx.reshape(-1).to(device=logits.device, dtype=torch.long)
    event = event.reshape(-1).to(device=logits.device, dtype=logits.dtype)
    if idx.shape[0] != n_patients or event.shape[0] != n_patients:
        raise ValueError(
            f"logits has {n_patients} rows but idx has {idx.shape[0]} and event has {event.shape[0]}"
        )
    if n_patients > 0 and (idx.min() < 0 or idx.max() >= n_bins):
        raise ValueError(f"idx must lie in [0, {n_bins}), got range [{int(idx.min())}, {int(idx.max())}]")

    bins = torch.arange(n_bins, device=logits.device)
    at_risk = bins.unsqueeze(0) <= idx.unsqueeze(1)                       # t <= kappa_i
    target = (bins.unsqueeze(0) == idx.unsqueeze(1)).to(logits.dtype) * event.unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (bce * at_risk.to(logits.dtype)).sum(dim=1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
