"""Predictions of the selected model for an aligned cohort, and the table users get.

Per patient: the risk score (minus the restricted mean survival time over the grid, higher = worse,
the holdout's risk), its risk group by the **training** tertiles, survival at the requested times
(linear between the grid's points, from S(0) = 1), the median survival time (where the curve first
reaches 0.5, linear between grid points; NaN when it stays above 0.5 over the grid), which of the
model's modalities were present and which the model filled in, and per named-feature modality the
number of the model's features that had no value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from impumae.data.store import Cohort, write_imputed_cohort
from impumae.train.imputation import impute_missing
from impumae.train.imputers import decoder_provenance as imputer_provenance
from impumae.train.imputers import describe_provenance, imputation_provenance
from impumae.export.align import Aligned
from impumae.survival.metrics import interpolate_survival

PROGRESS_FROM = 2000     # patients: a progress bar from this many on
BATCH_PATIENTS = 512


@dataclass
class Prediction:
    aligned: Aligned
    surv: np.ndarray          # [N, len(grid)]
    grid: np.ndarray
    risk: np.ndarray

    @property
    def ids(self) -> np.ndarray:
        return self.aligned.view.ids


def predict(model, aligned: Aligned, progress: bool | None = None) -> Prediction:
    """Survival curves and risks of every patient of ``aligned``, in batches (a progress bar for
    large cohorts, or as ``progress`` says)."""
    n = len(aligned.view.ids)
    starts = range(0, n, BATCH_PATIENTS)
    if progress if progress is not None else n >= PROGRESS_FROM:
        from tqdm.auto import tqdm  # noqa: PLC0415 (only for large cohorts)
        starts = tqdm(starts, total=len(starts), unit="batch", desc=f"predicting {n} patients")
    parts = [model.survival(aligned.view, np.arange(s, min(s + BATCH_PATIENTS, n))) for s in starts]
    surv = np.concatenate(parts) if parts else np.zeros((0, len(model.grid)))
    return Prediction(aligned, surv, model.grid, model.risk(surv))


def median_survival(surv: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The time each curve first reaches 0.5 (linear between grid points from S(0) = 1); NaN if never."""
    times = np.r_[0.0, grid] if grid[0] > 0 else np.asarray(grid, np.float64)
    curves = np.c_[np.ones(len(surv)), surv] if grid[0] > 0 else np.asarray(surv, np.float64)
    out = np.full(len(curves), np.nan)
    below = curves <= 0.5
    reaches = np.flatnonzero(below.any(axis=1))
    j = below[reaches].argmax(axis=1)                  # the first grid point at or below 0.5
    out[reaches] = times[j]
    inner = reaches[j > 0]                             # between two grid points: linear
    j_in = j[j > 0]
    before, at = curves[inner, j_in - 1], curves[inner, j_in]
    sloped = before != at
    inner, j_in, before, at = inner[sloped], j_in[sloped], before[sloped], at[sloped]
    out[inner] = times[j_in - 1] + (before - 0.5) / (before - at) * (times[j_in] - times[j_in - 1])
    return out


def survival_column(t: float, extrapolated: bool = False) -> str:
    return f"survival_at_{t:g}" + ("_extrapolated" if extrapolated else "")


def check_times(model, times, extrapolate: bool = False) -> np.ndarray:
    """``times`` (years) of the survival columns, checked against the model's grid: each must be finite
    and > 0; one past the grid's last time is refused unless ``extrapolate`` (its column is then named
    ``survival_at_<t>_extrapolated`` and holds the curve's last value, as the model knows nothing later)."""
    times = np.asarray(times, np.float64).reshape(-1)
    end = float(model.grid[-1])
    bad = times[~np.isfinite(times) | (times <= 0)]
    if len(bad):
        raise ValueError(f"--times {bad[0]:g}: a time must be a finite number of years > 0 (the model's grid runs "
                         f"from {float(model.grid[0]):.3g} to {end:.3g} years)")
    beyond = times[times > end]
    if len(beyond) and not extrapolate:
        raise ValueError(f"--times {beyond[0]:g}: past the model's last grid time {end:.3g} years, where its curves "
                         "end; choose times up to it, or pass --extrapolate to get the curve's last value in a column "
                         "marked _extrapolated")
    return times


def filled_modalities(model, aligned: Aligned) -> dict[str, np.ndarray]:
    """Per modality, the patients lacking it whose value the model filled in (decoder imputation of a
    pretrained modality; the training means for clinical features and for baseline families)."""
    view = aligned.view
    return {m: ~view.present[m] & (model.fills_missing_tokenised or not model.specs[m].tokenised)
            for m in model.subset}


def prediction_table(model, prediction: Prediction, times=None) -> pd.DataFrame:
    """One row per patient (see the module docstring); ``times`` default: the model's grid (check others
    with :func:`check_times` first: a time past the grid gets a column marked ``_extrapolated``)."""
    return pd.DataFrame(prediction_columns(model, prediction, times))


def prediction_columns(model, prediction: Prediction, times=None) -> dict[str, np.ndarray | list]:
    """The columns of :func:`prediction_table`, in order, as ``{name: values}`` (a caller adding its own
    columns builds the table once)."""
    aligned, surv = prediction.aligned, prediction.surv
    times = model.grid if times is None else np.asarray(times, np.float64)
    view = aligned.view
    filled = filled_modalities(model, aligned)
    columns = {"patient_id": view.ids, "risk": prediction.risk, "risk_group": model.risk_group(prediction.risk),
               "median_survival": median_survival(surv, model.grid)}
    at = interpolate_survival(surv, model.grid, times, "linear") if len(surv) else np.zeros((0, len(times)))
    for j, t in enumerate(times):
        columns[survival_column(float(t), extrapolated=float(t) > float(model.grid[-1]))] = at[:, j]
    present = np.column_stack([view.present[m] for m in model.subset])
    imputed = np.column_stack([filled[m] for m in model.subset])
    columns["present_modalities"] = [",".join(np.asarray(model.subset)[row]) for row in present]
    columns["imputed_modalities"] = [",".join(np.asarray(model.subset)[row]) for row in imputed]
    for m, counts in aligned.missing_features.items():
        columns[f"missing_features_{m}"] = counts
    if aligned.has_labels:
        columns["time"], columns["event"] = view.time, view.event
    return columns


def write_imputed(model, aligned: Aligned, source: Cohort, out_url: str, overwrite: bool = False,
                  progress: bool = False) -> tuple[Cohort, list[str]]:
    """A new store at ``out_url``: ``source`` with the modalities its patients lack filled by the
    model's decoder (in the source's feature order; a source feature the model lacks stays NaN).
    The source store is only read. Returns the new cohort and the model's modalities that could
    not be written because the source store has no such modality."""
    mae = model.predictor.decoder()
    if mae is None:
        raise ValueError(f"--imputed-out: a {model.family} model has no decoder; only impuTMAE models impute modalities")
    mae = mae.eval()
    view = aligned.view
    filled = impute_missing(mae, model.transforms, view.arrays, view.present)
    values, not_stored = {}, []
    imputed = np.zeros((len(source.patient_ids), len(source.modalities)), bool)
    for m, (rows, imputations) in filled.items():
        if m not in source.modalities:
            not_stored.append(m)
            continue
        if imputations is None:
            continue
        full = source.load(m).copy()
        if m in model.feature_names:
            where = {name: j for j, name in enumerate(model.feature_names[m])}
            index = np.array([where.get(str(name), -1) for name in source.feature_names(m)])
            block = np.full((len(rows), len(index)), np.nan, dtype=full.dtype)
            block[:, index >= 0] = imputations[:, index[index >= 0]]
            full[rows] = block
        else:
            full[rows] = imputations.astype(full.dtype)
        values[m] = full
        imputed[rows, source.modalities.index(m)] = True
    # what filled each modality, readable with impumae.train.imputers.imputation_provenance: the decoder,
    # not chosen on validation folds here (the MLflow model records no such choice yet; experiments/impute.py does)
    provenance = {"model": model.info.get("model_uri", ""), "family": model.family,
                  **imputer_provenance([m for m in values if imputed[:, source.modalities.index(m)].any()],
                                       cross_linear=getattr(mae.cfg, "cross_linear", "off"))}
    return write_imputed_cohort(source, out_url, values, imputed, provenance, overwrite=overwrite,
                                progress=progress), not_stored


def cohort_imputation_lines(cohort) -> list[str]:
    """What an imputed store (``experiments/impute.py``, ``--imputed-out``) records as having filled
    its values: per modality the imputer and its validation R^2 (or that it was not validated). Empty
    for a store of measured values (or none)."""
    provenance = imputation_provenance(cohort) if cohort is not None else {}
    if not provenance:
        return []
    return ([f"{cohort.url} holds imputed values (its `present` marks the measured ones, the only ones the model "
             "reads as measured); recorded imputers:"] + [f"  {line}" for line in describe_provenance(provenance)])
