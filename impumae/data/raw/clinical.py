"""The cohort table: patient ids, survival labels and the clinical modality.

Defaults match the authors' table (``tcga_gbmlgg_mtcp_cohort/dataset_with_dna.csv.gz``):
``submitter_id``, ``time`` (years), ``event`` (1 = death), ``age_at_diagnosis`` (days),
``treatments_radiation_treatment_or_therapy`` and ``treatments_pharmaceutical_treatment_or_therapy``
(yes/no). The clinical vector is ``age_years`` plus one 0/1 value per yes/no column; an unknown value
is NaN (imputed later from the training fold). Times in days are divided by 365 (the GDC/MultiSurv
convention the authors' table uses); ages in days by 365.25.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .common import RawFileError

DAYS_PER_YEAR_TIME = 365.0
DAYS_PER_YEAR_AGE = 365.25
YES = {"yes", "y", "true", "t", "1", "1.0"}
NO = {"no", "n", "false", "f", "0", "0.0"}
UNKNOWN = {"", "nan", "na", "n/a", "none", "unknown", "not reported", "not applicable", "--", "'--"}


@dataclass(frozen=True)
class TableColumns:
    """Which columns of the cohort table hold what (names as in the table)."""

    patient: str = "submitter_id"
    time: str = "time"
    event: str = "event"
    time_unit: str = "years"                    # years or days
    project: str | None = "project_id"          # used when present (stratifies the splits)
    group: str | None = None                    # train/test column to honour instead of drawing splits
    fold: str | None = None                     # CV fold column to honour
    age: str | None = "age_at_diagnosis"
    age_unit: str = "days"                      # days or years
    binary: tuple[tuple[str, str], ...] = field(default=(
        ("radiation", "treatments_radiation_treatment_or_therapy"),
        ("pharmaceutical", "treatments_pharmaceutical_treatment_or_therapy")))  # (feature name, column)

    @property
    def clinical_features(self) -> list[str]:
        return (["age_years"] if self.age else []) + [name for name, _ in self.binary]


@dataclass(frozen=True)
class TableIssue:
    patient: str
    field: str
    reason: str


def read_table(path) -> pd.DataFrame:
    """CSV or TSV (maybe gzipped); the separator follows the name (``.tsv``/``.txt`` = tab)."""
    name = str(path).lower().removesuffix(".gz")
    sep = "\t" if name.endswith((".tsv", ".txt")) else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, ValueError, EOFError) as e:
        raise RawFileError(path, f"unreadable cohort table ({type(e).__name__}: {e})") from e


def yes_no(value) -> float:
    """yes/no (true/false, 1/0) -> 1.0/0.0; unknown -> NaN; anything else raises ValueError."""
    text = str(value).strip().lower()
    if text in YES:
        return 1.0
    if text in NO:
        return 0.0
    if text in UNKNOWN:
        return np.nan
    raise ValueError(f"{value!r} is not yes/no")


def _number(value) -> float:
    text = str(value).strip()
    return np.nan if text.lower() in UNKNOWN else float(text)


@dataclass
class CohortTable:
    table: pd.DataFrame          # the raw table (strings), index = patient id, only usable patients
    labels: pd.DataFrame         # time (years), event (int), [project, group, fold]
    clinical: pd.DataFrame       # float32 [patients x clinical features], NaN = unknown
    issues: list[TableIssue]     # per-patient problems (patients without labels are dropped)


def read_cohort_table(path, columns: TableColumns = TableColumns()) -> CohortTable:
    table = read_table(path)
    needed = [columns.patient, columns.time, columns.event] + ([columns.age] if columns.age else []) \
        + [c for _, c in columns.binary] + [c for c in (columns.group, columns.fold) if c]
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise RawFileError(path, f"no column {absent[0]!r} in the cohort table (columns: {', '.join(table.columns)})")
    table[columns.patient] = table[columns.patient].str.strip()
    ids = table[columns.patient]
    if (ids == "").any():
        raise RawFileError(path, f"row {int(np.flatnonzero(ids == '')[0]) + 2}: empty patient id in column {columns.patient!r}")
    if ids.duplicated().any():
        raise RawFileError(path, f"patient {ids[ids.duplicated()].iloc[0]} appears twice in column {columns.patient!r}")
    table = table.set_index(columns.patient, drop=False)
    table.index.name = "patient_id"

    issues: list[TableIssue] = []
    time_scale = {"years": 1.0, "days": 1.0 / DAYS_PER_YEAR_TIME}[columns.time_unit]
    age_scale = {"years": 1.0, "days": 1.0 / DAYS_PER_YEAR_AGE}[columns.age_unit]
    rows, clinical_rows = {}, {}
    for patient, row in table.iterrows():
        try:
            time, event = _number(row[columns.time]) * time_scale, _number(row[columns.event])
            if np.isnan(time) or np.isnan(event):
                raise ValueError(f"no survival label ({columns.time}={row[columns.time]!r}, {columns.event}={row[columns.event]!r})")
            if time < 0:
                raise ValueError(f"negative time {row[columns.time]!r} in column {columns.time!r}")
            if event not in (0, 1):
                raise ValueError(f"event {row[columns.event]!r} in column {columns.event!r} is not 0/1")
        except ValueError as e:
            issues.append(TableIssue(patient, "labels", f"{e}; patient left out"))
            continue
        rows[patient] = {"time": time, "event": int(event)}
        values = []
        if columns.age:
            try:
                values.append(_number(row[columns.age]) * age_scale)
            except ValueError:
                issues.append(TableIssue(patient, columns.age, f"age {row[columns.age]!r} is not a number; kept as unknown"))
                values.append(np.nan)
        for name, column in columns.binary:
            try:
                values.append(yes_no(row[column]))
            except ValueError as e:
                issues.append(TableIssue(patient, column, f"{e}; kept as unknown"))
                values.append(np.nan)
        clinical_rows[patient] = values

    labels = pd.DataFrame.from_dict(rows, orient="index")
    labels.index.name = "patient_id"
    kept = table.loc[labels.index]
    if columns.project and columns.project in table.columns:
        labels["project"] = kept[columns.project].to_numpy()
    if columns.group:
        labels["group"] = kept[columns.group].str.strip().str.lower().to_numpy()
    if columns.fold:
        labels["fold"] = pd.to_numeric(kept[columns.fold].replace("", np.nan)).to_numpy()
    clinical = pd.DataFrame.from_dict(clinical_rows, orient="index", columns=columns.clinical_features, dtype=np.float32)
    return CohortTable(kept, labels, clinical, issues)
