"""RNA-seq: GDC STAR gene-count tables (``*.rna_seq.augmented_star_gene_counts.tsv``, maybe gzipped).

The GDC format: a comment line ``# gene-model: GENCODE v36``, a header ``gene_id gene_name gene_type
unstranded stranded_first stranded_second tpm_unstranded fpkm_unstranded fpkm_uq_unstranded``, four
``N_*`` rows (N_unmapped, N_multimapping, N_noFeature, N_ambiguous; no gene_type) and one row per gene.
A patient's vector is ``fpkm_uq_unstranded`` of the ``gene_type == protein_coding`` rows, in one gene
order for the whole cohort. The cohort's gene model is the one most files state (or one given by the
user); its gene order is the protein-coding genes of the first readable file of that model, or a gene
list given by the user. A file of another gene model is rejected, whichever file sorts first.
No variance filter and no log here: the fold-fitted transforms do that (value type ``fpkm_uq``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .common import READ_ERRORS, RawFileError, compression_of, first_line, hash_strings

VALUE_COLUMN = "fpkm_uq_unstranded"
GENE_TYPE = "protein_coding"
REQUIRED_COLUMNS = ("gene_id", "gene_type", VALUE_COLUMN)
GENE_MODEL_PREFIX = "# gene-model:"


def gene_model_of(path) -> str | None:
    """The text after ``# gene-model:`` on the first line of a STAR table (None when that line is absent)."""
    line = first_line(path)
    return line[len(GENE_MODEL_PREFIX):].strip() if line.startswith(GENE_MODEL_PREFIX) else None


def majority_gene_model(paths) -> str | None:
    """The gene model most of ``paths`` state (files whose first line cannot be read are not counted).

    Raises ValueError when no file is readable or when the most common models tie.
    """
    counts = Counter()
    for path in paths:
        try:
            counts[gene_model_of(path)] += 1
        except RawFileError:
            continue  # reported when that patient's file is parsed
    ranked = counts.most_common()
    if not ranked:
        raise ValueError("no STAR file could be read to find the cohort's gene model")
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        tied = ", ".join(f"{model or 'not stated'!r}: {n} files" for model, n in ranked if n == ranked[0][1])
        raise ValueError(f"the STAR files disagree on the gene model with no majority ({tied}); "
                         "name the cohort's with --rna-gene-model")
    return ranked[0][0]


def read_star_counts(path) -> tuple[str | None, pd.Series]:
    """``(gene model, fpkm_uq of protein-coding genes indexed by gene_id)`` of one STAR table."""
    gene_model = gene_model_of(path)
    try:
        table = pd.read_csv(path, sep="\t", comment="#", compression=compression_of(path),
                            dtype={"gene_id": str, "gene_type": str}, low_memory=False)
    except READ_ERRORS as e:
        raise RawFileError(path, f"unreadable STAR table ({type(e).__name__}: {e}); truncated or corrupt file?") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise RawFileError(path, f"not a STAR gene-counts table: no column {missing[0]!r} "
                                 f"(columns: {', '.join(map(str, table.columns[:9]))})")
    coding = table.loc[table["gene_type"] == GENE_TYPE, ["gene_id", VALUE_COLUMN]]
    if coding.empty:
        raise RawFileError(path, f"no {GENE_TYPE!r} rows in column gene_type")
    duplicated = coding["gene_id"].duplicated()
    if duplicated.any():
        raise RawFileError(path, f"gene_id {coding['gene_id'][duplicated].iloc[0]!r} appears twice")
    values = pd.to_numeric(coding[VALUE_COLUMN], errors="coerce")
    bad = values.isna() & coding[VALUE_COLUMN].notna()
    if bad.any():
        raise RawFileError(path, f"column {VALUE_COLUMN}: non-numeric value {coding[VALUE_COLUMN][bad].iloc[0]!r} "
                                 f"for gene {coding['gene_id'][bad].iloc[0]}")
    if (values < 0).any():
        raise RawFileError(path, f"column {VALUE_COLUMN}: negative value for gene {coding['gene_id'][values < 0].iloc[0]}")
    return gene_model, pd.Series(values.to_numpy(np.float32), index=coding["gene_id"].to_numpy(), name=VALUE_COLUMN)


def _unversioned(ids) -> pd.Index:
    """``ENSG00000000003.15`` -> ``ENSG00000000003`` (``_PAR_Y`` copies keep their suffix)."""
    return pd.Index([i.split(".", 1)[0] + ("_PAR_Y" if i.endswith("_PAR_Y") else "") for i in ids])


def read_gene_list(path) -> tuple[str, ...]:
    """One gene id per line (first column of a TSV/CSV; a ``gene_id`` header is skipped)."""
    ids = [line.split("\t")[0].split(",")[0].strip() for line in open(path, encoding="utf-8")]
    ids = [i for i in ids if i and i != "gene_id" and not i.startswith("#")]
    if not ids:
        raise RawFileError(path, "gene list is empty")
    if len(set(ids)) != len(ids):
        raise RawFileError(path, "gene list names a gene twice")
    return tuple(ids)


@dataclass(frozen=True)
class StarParser:
    """Turns one STAR table into the cohort's gene vector (float32, ``len(gene_ids)``)."""

    gene_ids: tuple[str, ...]
    gene_model: str | None
    from_gene_list: bool = False
    value_type = "fpkm_uq"

    @classmethod
    def from_first_file(cls, path, gene_list: tuple[str, ...] | None = None) -> "StarParser":
        gene_model, values = read_star_counts(path)
        if gene_list is not None:
            return cls(tuple(gene_list), gene_model, from_gene_list=True)
        return cls(tuple(values.index), gene_model)

    @classmethod
    def for_cohort(cls, paths, gene_list: tuple[str, ...] | None = None,
                   gene_model: str | None = None) -> "StarParser | None":
        """The parser of a cohort's STAR files (in a fixed order): gene model ``gene_model`` or the
        majority's (:func:`majority_gene_model`), gene order from ``gene_list`` or the first readable
        file of that model. None when no file of that model is readable."""
        paths = list(paths)
        if gene_model is None:
            gene_model = majority_gene_model(paths)
        for path in paths:
            try:
                if gene_model_of(path) == gene_model:
                    return cls.from_first_file(path, gene_list)
            except RawFileError:
                continue  # reported when that patient's file is parsed
        return None

    @property
    def feature_names(self) -> list[str]:
        return list(self.gene_ids)

    @property
    def fingerprint(self) -> dict:
        return {"format": "gdc-star", "gene_model": self.gene_model, "column": VALUE_COLUMN,
                "genes": len(self.gene_ids), "first": self.gene_ids[0], "last": self.gene_ids[-1],
                "hash": hash_strings(self.gene_ids)}

    def __call__(self, path) -> np.ndarray:
        gene_model, values = read_star_counts(path)
        if gene_model != self.gene_model:
            raise RawFileError(path, f"gene model {gene_model or 'not stated'!r} differs from the cohort's "
                                     f"{self.gene_model or 'not stated'!r} (first line '# gene-model: ...')")
        if self.from_gene_list:
            return self._on_gene_list(path, values)
        if len(values) == len(self.gene_ids) and tuple(values.index) == self.gene_ids:
            return values.to_numpy(np.float32)
        missing = len(set(self.gene_ids) - set(values.index))
        extra = len(set(values.index) - set(self.gene_ids))
        if missing or extra:
            raise RawFileError(path, f"protein-coding gene set differs from the cohort's {self.gene_model} genes "
                                     f"({missing} missing, {extra} extra): another gene model?")
        return values.reindex(list(self.gene_ids)).to_numpy(np.float32)

    def _on_gene_list(self, path, values: pd.Series) -> np.ndarray:
        wanted = pd.Index(self.gene_ids)
        if not any("." in g for g in self.gene_ids):  # an unversioned list matches versioned ids
            values = pd.Series(values.to_numpy(), index=_unversioned(values.index))
            values = values[~values.index.duplicated()]
        absent = wanted.difference(values.index)
        if len(absent):
            raise RawFileError(path, f"{len(absent)} of {len(wanted)} listed genes absent (first: {absent[0]}): "
                                     "another gene model?")
        return values.reindex(wanted).to_numpy(np.float32)
