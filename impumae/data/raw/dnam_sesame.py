"""DNA methylation: GDC SeSAMe beta files (``*.methylation_array.sesame.level3betas.txt``).

The format: two tab-separated columns, CpG probe id and beta value, no header, ``NA`` allowed. A
patient's vector is the beta of each probe of a fixed probe list (default: the 25,978 CpGs shared by
the HM27 and HM450 arrays, ``multisurv_pancancer_labels_dnam_probes/DNAm_probes.tsv``), in list
order. ``NA`` and probes the file lacks (an HM27 file lacks some) stay NaN, for fold-fitted
imputation. A file that shares no probe with the list, or has no beta value (all ``NA``) for any
listed probe, is rejected. Value type ``beta`` (0..1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .common import READ_ERRORS, RawFileError, compression_of, hash_strings

DEFAULT_PROBES = "../shared/data/multisurv_pancancer_labels_dnam_probes/DNAm_probes.tsv"


def read_probe_list(path) -> tuple[str, ...]:
    """Probe ids, one per line (first column), no header."""
    ids = [line.split("\t")[0].strip() for line in open(path, encoding="utf-8")]
    ids = [i for i in ids if i and not i.startswith("#")]
    if not ids:
        raise RawFileError(path, "probe list is empty")
    if len(set(ids)) != len(ids):
        raise RawFileError(path, "probe list names a probe twice")
    return tuple(ids)


def read_betas(path) -> pd.Series:
    """Beta values of one SeSAMe file, indexed by probe id (float32, NaN where ``NA``)."""
    try:
        table = pd.read_csv(path, sep="\t", header=None, names=["probe", "beta"], usecols=[0, 1],
                            compression=compression_of(path), dtype={"probe": str}, na_values=["NA"],
                            keep_default_na=True)
    except READ_ERRORS as e:
        raise RawFileError(path, f"unreadable SeSAMe betas file ({type(e).__name__}: {e}); truncated or corrupt file?") from e
    if table.empty:
        raise RawFileError(path, "empty betas file")
    beta = pd.to_numeric(table["beta"], errors="coerce")
    bad = beta.isna() & table["beta"].notna()
    if bad.any():
        raise RawFileError(path, f"probe {table['probe'][bad].iloc[0]}: beta {table['beta'][bad].iloc[0]!r} is not a number "
                                 "(a header line? the format has none)")
    outside = (beta < 0) | (beta > 1)
    if outside.any():
        raise RawFileError(path, f"probe {table['probe'][outside].iloc[0]}: beta {beta[outside].iloc[0]} outside [0, 1]")
    series = pd.Series(beta.to_numpy(np.float32), index=table["probe"].to_numpy(), name="beta")
    if series.index.has_duplicates:
        raise RawFileError(path, f"probe {series.index[series.index.duplicated()][0]} appears twice")
    return series


@dataclass(frozen=True)
class SesameParser:
    """Turns one betas file into the beta vector over ``probes`` (float32, NaN = not measured)."""

    probes: tuple[str, ...]
    value_type = "beta"

    @classmethod
    def from_probe_file(cls, path=DEFAULT_PROBES) -> "SesameParser":
        return cls(read_probe_list(path))

    @property
    def feature_names(self) -> list[str]:
        return list(self.probes)

    @property
    def fingerprint(self) -> dict:
        return {"format": "sesame-betas", "probes": len(self.probes), "hash": hash_strings(self.probes)}

    def __call__(self, path) -> np.ndarray:
        betas = read_betas(path)
        values = betas.reindex(pd.Index(self.probes))
        if not betas.index.isin(self.probes).any():
            raise RawFileError(path, f"shares no probe with the {len(self.probes)}-probe list "
                                     f"(first probe in file: {betas.index[0]}): not a SeSAMe betas file of this array family?")
        if values.isna().all():
            raise RawFileError(path, f"no beta value for any of the {len(self.probes)} listed probes "
                                     f"({int(betas.notna().sum())} of the file's {len(betas)} values are numbers, "
                                     "the rest NA): nothing measured")
        return values.to_numpy(np.float32)
