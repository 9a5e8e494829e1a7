"""The pan-cancer paper-scale cohort: real TCGA patients, labels and modality presence, synthetic values.

The authors' pan-TCGA table (``tcga_gbmlgg_mtcp_cohort/pancancer_dataset_with_indicators.csv.gz``:
10,082 patients of 33 projects) gives each patient's id, survival (``time`` in years, ``event``),
cancer type (``project_id``), clinical variables (age, radiation, pharmaceutical treatment) and which
modalities exist: RNA-seq (``RNA`` path given), DNAm (``DNAm`` path given), a slide (``wsi_we_have``
is ``+``). The table holds no values, so the values come from the latent-factor generator of
:mod:`impumae.data.synthetic` at the paper's shapes (``--scale paper``: rna 16,304, dna 25,978, wsi
10x256x256x3; the table has no MRI). The labels come from this table, not from MultiSurv's
11,081-patient ``labels.tsv.gz``: only this table says which modalities each patient has, and on the
10,082 patients both hold their time and event agree (checked by ``tests/data/test_pancancer.py``).

So that the values are not pure noise for survival, each patient's shared latent factors are tied to
the patient's real survival: the prognostic direction of the factors (``synthetic.PROGNOSTIC_WEIGHTS``)
carries ``PROGNOSTIC_CORRELATION`` times a normal score of the patient's martingale residual
(event minus the Nelson-Aalen cumulative hazard at the patient's time: high for an early death), the
rest is noise. No ``true_risk``
is stored: the real times were not drawn from the generator's hazard.

Folds and holdout: ``impumae.data.splits.make_splits`` stratified by event and project (the table's
own ``group``/``splits`` are not used). Writing streams one shard of patients at a time
(``write_cohort``); an absent modality of a patient is never generated and costs no bytes on disk
(an all-fill chunk is not written: zarr ``write_empty_chunks=False``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from scipy.special import ndtri

from impumae.data import synthetic
from impumae.data.store import Cohort, CohortError, CohortPlan, write_cohort, write_options

HELP = ("the pan-TCGA cohort (10,082 real patients, 33 projects, real labels and modality presence) "
        "with paper-scale synthetic rna, dna and wsi values")

TABLE = Path("tcga_gbmlgg_mtcp_cohort") / "pancancer_dataset_with_indicators.csv.gz"
MODALITIES = ("rna", "dna", "wsi", "clinical")
VALUE_TYPES = {m: synthetic.VALUE_TYPES[m] for m in MODALITIES}
PROGNOSTIC_CORRELATION = 0.7   # correlation of the prognostic factor combination with the real risk score
DAYS_PER_YEAR = 365.0
YES_NO = {"yes": 1.0, "no": 0.0}
GENERATOR_VERSION = 1


def read_table(path: str | Path) -> pd.DataFrame:
    """The pan-TCGA table as labels (time, event, project), presence and clinical values, index patient id."""
    path = Path(path)
    if not path.exists():
        raise CohortError(f"{path}: the pan-TCGA table is not there (expected ../shared/data/{TABLE})")
    table = pd.read_csv(path, low_memory=False)
    needed = ["submitter_id", "project_id", "time", "event", "RNA", "DNAm", "wsi_we_have", "age_at_diagnosis",
              "treatments_radiation_treatment_or_therapy", "treatments_pharmaceutical_treatment_or_therapy"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise CohortError(f"{path}: no column {missing[0]!r}")
    duplicated = table["submitter_id"].duplicated()
    if duplicated.any():
        raise CohortError(f"{path}: patient {table['submitter_id'][duplicated].iloc[0]!r} appears twice")
    for column in ("time", "event"):
        bad = table[column].isna()
        if bad.any():
            raise CohortError(f"{path}: patient {table['submitter_id'][bad].iloc[0]!r}: column {column!r} is empty")
    out = pd.DataFrame(index=pd.Index(table["submitter_id"].astype(str), name="patient_id"))
    out["time"] = np.maximum(table["time"].to_numpy(np.float64), 1.0 / DAYS_PER_YEAR).astype(np.float32)
    out["event"] = table["event"].to_numpy(np.int8)
    out["project"] = table["project_id"].astype(str).to_numpy()
    out["has_rna"] = table["RNA"].notna().to_numpy()
    out["has_dna"] = table["DNAm"].notna().to_numpy()
    out["has_wsi"] = (table["wsi_we_have"].astype(str).str.strip() == "+").to_numpy()
    out["age_years"] = table["age_at_diagnosis"].to_numpy(np.float64) / DAYS_PER_YEAR
    for name, column in (("radiation", "treatments_radiation_treatment_or_therapy"),
                         ("pharmaceutical", "treatments_pharmaceutical_treatment_or_therapy")):
        text = table[column].astype("string").str.strip().str.lower()
        bad = text.notna() & ~text.isin(list(YES_NO))
        if bad.any():
            raise CohortError(f"{path}: patient {table['submitter_id'][bad.to_numpy()].iloc[0]!r}, column {column!r} "
                              f"is {table[column][bad.to_numpy()].iloc[0]!r}; expected yes/no or empty")
        out[name] = text.map(YES_NO).astype(float).to_numpy()
    return out


def risk_score(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """A normal score of each patient's martingale residual ``event - H(time)`` (``H``: the cohort's
    Nelson-Aalen cumulative hazard): an early death scores high, a long censored follow-up low.
    Mean 0, SD about 1."""
    time = np.asarray(time, np.float64)
    event = np.asarray(event, np.float64)
    order = np.argsort(time, kind="stable")
    at_risk = len(time) - np.arange(len(time))
    cumulative = np.cumsum(event[order] / at_risk)
    hazard = np.empty(len(time))
    hazard[order] = cumulative
    ranks = pd.Series(event - hazard).rank(method="average").to_numpy()
    return ndtri((ranks - 0.5) / len(ranks))


def pancancer_cohort(table: pd.DataFrame, seed: int = 0, scale: str = "paper") -> synthetic.SyntheticCohort:
    """A :class:`synthetic.SyntheticCohort` on the table's patients, presence and labels (``scale``:
    the generator's shapes; ``tiny`` for tests)."""
    n = len(table)
    specs = {m: synthetic.SCALES[scale][m] for m in MODALITIES}
    rng = np.random.default_rng(np.random.SeedSequence([seed, synthetic.COHORT_STREAM]))
    shared = rng.standard_normal((n, synthetic.K_SHARED))
    private = {m: rng.standard_normal((n, synthetic.K_PRIVATE)) for m in MODALITIES if m != "clinical"}
    direction = synthetic.PROGNOSTIC_WEIGHTS / np.linalg.norm(synthetic.PROGNOSTIC_WEIGHTS)
    along = shared @ direction
    wanted = (PROGNOSTIC_CORRELATION * risk_score(table["time"].to_numpy(), table["event"].to_numpy())
              + np.sqrt(1 - PROGNOSTIC_CORRELATION**2) * rng.standard_normal(n))
    shared = shared + np.outer(wanted - along, direction)
    clinical = table[["age_years", "radiation", "pharmaceutical"]].to_numpy(np.float32)
    present = pd.DataFrame({"rna": table["has_rna"], "dna": table["has_dna"], "wsi": table["has_wsi"],
                            "clinical": np.ones(n, bool)}, index=table.index)
    labels = table[["time", "event", "project"]].copy()
    return synthetic.SyntheticCohort(scale=scale, seed=seed, specs=specs, labels=labels, present=present,
                                     shared=shared, private=private, clinical=clinical,
                                     parameters=synthetic._draw_parameters(specs, seed))


def patients(cohort: synthetic.SyntheticCohort) -> Iterator[dict[str, np.ndarray | None]]:
    """One dict per patient, generated when asked for (nothing for an absent modality)."""
    for index in range(len(cohort.labels)):
        yield cohort.patient(index, MODALITIES)


def pancancer_plan(table_path: str | Path, n_patients: int | None = None, seed: int = 0, command: str | None = None,
                   scale: str = "paper"):
    """``(CohortPlan, patients iterator)``; ``n_patients``: the first N patients of the table, in a
    seeded random order of it (all when None), so that a small cohort keeps the table's mix of projects."""
    table = read_table(table_path)
    if n_patients is not None:
        if not 1 <= n_patients <= len(table):
            raise CohortError(f"--patients {n_patients}: the table has {len(table)} patients")
        order = np.random.default_rng([seed, 7]).permutation(len(table))[:n_patients]
        table = table.iloc[np.sort(order)]
    cohort = pancancer_cohort(table, seed, scale)
    names = cohort.feature_names
    provenance = {"source": "pancancer-synthetic", "table": str(table_path), "generator": "impumae.data.pancancer",
                  "generator_version": GENERATOR_VERSION, "scale": scale, "seed": int(seed),
                  "n_patients": int(len(table)), "prognostic_correlation": PROGNOSTIC_CORRELATION,
                  "command": command or f"impumae.data.pancancer.pancancer_plan(n_patients={n_patients}, seed={seed}, "
                                         f"scale={scale!r})"}
    plan = CohortPlan(labels=cohort.labels, specs=[cohort.specs[m] for m in MODALITIES],
                      feature_names={m: names[m] for m in ("rna", "dna", "clinical")}, provenance=provenance,
                      value_types=dict(VALUE_TYPES))
    return plan, patients(cohort)


def build_pancancer(out: str, table_path: str | Path, n_patients: int | None = None, seed: int = 0,
                    overwrite: bool = False, command: str | None = None, scale: str = "paper", **write_kwargs) -> Cohort:
    plan, stream = pancancer_plan(table_path, n_patients, seed, command, scale)
    return write_cohort(str(out), plan, stream, overwrite=overwrite, labels_file=str(table_path), **write_kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared", default="../shared/data", help="the shared data folder (default ../shared/data)")
    parser.add_argument("--patients", type=int, default=None,
                        help="a seeded random subset of N patients of the table (default: all 10,082)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--scale", choices=sorted(synthetic.SCALES), default="paper",
                        help="the generator's shapes (default paper; tiny for quick checks)")


def build(args: argparse.Namespace, out: str, overwrite: bool) -> Cohort:
    return build_pancancer(out, Path(args.shared) / TABLE, n_patients=args.patients, seed=args.seed,
                           overwrite=overwrite, command=shlex.join(sys.argv), scale=args.scale, **write_options(args))
