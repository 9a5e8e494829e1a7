"""The tables builder: labels + feature matrices (CSV, TSV, parquet) -> cohort store."""
from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest

from impumae.data.store import CohortError
from impumae.data.tables import build_from_tables, modality_spec, read_matrix
from impumae.modalities import PAPER

PORPOISE = "../shared/data/porpoise_tcga_gbmlgg_omics/tcga_gbmlgg_all_clean.csv.gz"
N = 30


@pytest.fixture
def tables(tmp_path):
    """A labels CSV, an rna CSV (patients 0..19), a proteins TSV (10..29, with a missing value) and a
    clinical parquet (everyone), with the values used to write them."""
    rng = np.random.default_rng(0)
    ids = [f"TCGA-{i:02d}" for i in range(N)]
    labels = pd.DataFrame({"case": ids, "months": rng.uniform(1, 120, N), "dead": rng.integers(0, 2, N),
                           "project": np.where(np.arange(N) % 2, "GBM", "LGG"), "ignored": "x"})
    rna = pd.DataFrame(rng.normal(size=(20, 6)), columns=[f"G{j}" for j in range(6)]).assign(sample=ids[:20])
    rna = rna[["sample"] + [f"G{j}" for j in range(6)]]
    proteins = pd.DataFrame(rng.normal(size=(20, 5)), columns=[f"P{j}" for j in range(5)])
    proteins.insert(0, "id", ids[10:])
    proteins.iloc[3, 2] = np.nan
    clinical = pd.DataFrame({"id": ids, "age_years": rng.uniform(20, 80, N), "radiation": rng.integers(0, 2, N),
                             "pharmaceutical": rng.integers(0, 2, N)})
    paths = {"labels": tmp_path / "labels.csv", "rna": tmp_path / "rna.csv", "proteins": tmp_path / "proteins.tsv",
             "clinical": tmp_path / "clinical.parquet"}
    labels.to_csv(paths["labels"], index=False)
    rna.to_csv(paths["rna"], index=False)
    proteins.to_csv(paths["proteins"], sep="\t", index=False)
    clinical.to_parquet(paths["clinical"], index=False)
    return {"paths": {k: str(v) for k, v in paths.items()}, "labels": labels, "rna": rna, "proteins": proteins,
            "clinical": clinical, "dir": tmp_path}


def build(tables, out=None, **kwargs):
    paths = tables["paths"]
    modalities = kwargs.pop("modalities", {"RNAseq": paths["rna"], "proteins": paths["proteins"], "clinical": paths["clinical"]})
    kwargs = {"id_column": "case", "time_column": "months", "event_column": "dead", "time_unit": "months",
              "shard_patients": 8, "progress": False, "n_folds": 3, **kwargs}
    return build_from_tables(paths["labels"], modalities, out or str(tables["dir"] / "c.zarr"), **kwargs)


def test_builds_from_csv_tsv_and_parquet(tables):
    cohort = build(tables, patches={"proteins": 2})
    assert cohort.modalities == ["rna", "proteins", "clinical"]  # aliases resolved
    assert cohort.specs["rna"] == PAPER["rna"].with_(shape=(6,), patch=1)  # 6 features: 6 tokens
    assert cohort.specs["proteins"].kind == "tabular" and cohort.specs["proteins"].patch == 2
    assert cohort.specs["clinical"].kind == "clinical"
    assert cohort.feature_names("rna") == [f"G{j}" for j in range(6)]
    assert cohort.feature_names("clinical") == ["age_years", "radiation", "pharmaceutical"]
    assert cohort.value_types == {"rna": "zscore", "proteins": "raw", "clinical": "clinical"}  # rna: negative values

    labels = cohort.labels
    np.testing.assert_allclose(labels["time"], tables["labels"]["months"] / 12, rtol=1e-6)
    np.testing.assert_array_equal(labels["event"], tables["labels"]["dead"])
    assert list(labels["project"]) == list(tables["labels"]["project"]) and "ignored" not in labels

    present = cohort.present
    assert present["rna"].tolist() == [i < 20 for i in range(N)]
    assert present["proteins"].tolist() == [i >= 10 for i in range(N)]
    assert present["clinical"].all()
    rna = cohort.load("rna")
    np.testing.assert_allclose(rna[:20], tables["rna"].iloc[:, 1:].to_numpy(np.float32))
    assert np.isnan(rna[20:]).all()
    proteins = cohort.read("proteins", [13, 10])
    assert np.isnan(proteins[0, 1])  # an empty cell stays a missing value of a present row
    np.testing.assert_allclose(proteins[1], tables["proteins"].iloc[0, 1:].to_numpy(np.float32))
    assert cohort.provenance["source"] == "tables" and cohort.provenance["matrices"]["proteins"] == tables["paths"]["proteins"]


def test_user_group_and_fold_columns(tables):
    labels = tables["labels"].assign(split=np.where(np.arange(N) < 6, "test", "train"),
                                     k=np.where(np.arange(N) < 6, np.nan, np.arange(N) % 2))
    labels.to_csv(tables["paths"]["labels"], index=False)
    splits = build(tables, group_column="split", fold_column="k").splits
    assert splits["holdout"].tolist() == [i < 6 for i in range(N)]
    assert splits["fold"].tolist() == [-1] * 6 + [i % 2 for i in range(6, N)]


def test_ids_matching_no_labelled_patient(tables):
    partial = tables["rna"].copy()
    partial.iloc[:7, 0] = [f"OTHER-{i}" for i in range(7)]
    partial.to_csv(tables["paths"]["rna"], index=False)
    with pytest.warns(UserWarning, match=r"rna\.csv: 7 of 20 patient ids match no labelled patient .*'OTHER-0'"):
        cohort = build(tables)
    assert cohort.present["rna"].sum() == 13
    partial.iloc[:, 0] = [f"OTHER-{i}" for i in range(20)]
    partial.to_csv(tables["paths"]["rna"], index=False)
    with pytest.raises(CohortError, match=r"rna\.csv: none of its 20 patient ids match a labelled patient"):
        build(tables, overwrite=True)


def write_bad_rna(tables, row, column, value):
    rna = tables["rna"].astype(object)
    rna.iat[row, column] = value
    rna.to_csv(tables["paths"]["rna"], index=False)


def test_bad_matrix_values(tables):
    write_bad_rna(tables, 4, 2, "high")
    with pytest.raises(CohortError, match=r"rna\.csv: patient 'TCGA-04', column 'G1': 'high' is not a number"):
        build(tables)
    write_bad_rna(tables, 5, 3, "inf")
    with pytest.raises(CohortError, match=r"rna\.csv: patient 'TCGA-05', column 'G2': infinite value"):
        build(tables)
    write_bad_rna(tables, 6, 0, "TCGA-05")
    with pytest.raises(CohortError, match=r"rna\.csv: duplicate patient id\(s\) \['TCGA-05'\]"):
        build(tables)
    assert not (tables["dir"] / "c.zarr").exists()


def test_bad_labels_and_arguments(tables):
    labels = tables["labels"].copy()
    labels.loc[3, "dead"] = 3
    labels.to_csv(tables["paths"]["labels"], index=False)
    with pytest.raises(CohortError, match=r"labels\.csv: patient 'TCGA-03': field 'event' is 3"):
        build(tables)
    tables["labels"].to_csv(tables["paths"]["labels"], index=False)
    with pytest.raises(CohortError, match=r"labels\.csv: no column 'survival'"):
        build(tables, time_column="survival")
    with pytest.raises(CohortError, match=r"--patch names modality 'dna', which has no matrix"):
        build(tables, patches={"dnam": 4})
    with pytest.raises(CohortError, match=r"modality 'mri' is a volume; a feature table can only hold tabular data"):
        build(tables, modalities={"mri": tables["paths"]["rna"]})
    with pytest.raises(CohortError, match=r"unknown table format"):
        build(tables, modalities={"rna": tables["paths"]["rna"] + ".xlsx"})
    with pytest.raises(CohortError, match=r"no such file"):
        build(tables, modalities={"rna": str(tables["dir"] / "absent.csv")})


def test_existing_output_without_overwrite(tables):
    build(tables)
    with pytest.raises(CohortError, match="already exists; pass overwrite=True"):
        build(tables)
    assert build(tables, overwrite=True).present["rna"].sum() == 20


def test_the_default_patch_comes_from_the_feature_count():
    assert modality_spec("proteins", 40).patch == 2 and modality_spec("proteins", 40).kind == "tabular"
    assert modality_spec("mutations", 16).patch == 1
    # a 76-feature table named rna gets 19 tokens, not the paper's 16k-gene patch (one token)
    assert modality_spec("rna", 76).patch == 4 and modality_spec("rna", 76).n_tokens == 19
    assert modality_spec("rna", 76, patch=512).n_tokens == 1  # --patch still wins
    # the paper's feature counts keep the paper's patches
    assert modality_spec("rna", PAPER["rna"].shape[0]).patch == PAPER["rna"].patch == 512
    assert modality_spec("dna", PAPER["dna"].shape[0]).patch == PAPER["dna"].patch == 1024
    assert modality_spec("rna", 1544).patch == 64


@pytest.mark.skipif(not os.path.exists(PORPOISE), reason="shared data absent")
def test_real_porpoise_rna_matrix(tmp_path):
    table = pd.read_csv(PORPOISE).drop_duplicates("case_id").head(40)
    rna_columns = [c for c in table.columns if c.endswith("_rnaseq")]
    table[["case_id"] + rna_columns].to_parquet(tmp_path / "rna.parquet", index=False)
    table.assign(event=1 - table["censorship"])[["case_id", "survival_months", "event"]].to_csv(tmp_path / "labels.csv", index=False)
    cohort = build_from_tables(str(tmp_path / "labels.csv"), {"rna": str(tmp_path / "rna.parquet")}, str(tmp_path / "c.zarr"),
                               id_column="case_id", time_column="survival_months", time_unit="months",
                               progress=False, n_folds=3)
    assert cohort.specs["rna"].shape == (1544,)
    np.testing.assert_allclose(cohort.load("rna"), table[rna_columns].to_numpy(np.float32))
    assert read_matrix(str(tmp_path / "rna.parquet")).shape == (40, 1544)


@pytest.mark.parametrize("suffix", [".csv", ".tsv.gz", ".parquet"])
def test_repeated_column_names_are_refused_naming_file_and_column(tables, suffix):
    path = str(tables["dir"] / f"dup{suffix}")
    rna = tables["rna"].copy()
    rna.columns = ["sample", "G0", "G1", "G1", "G3", "G4", "G5"]  # pandas would read G1, G1.1
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_arrays([pa.array(rna.iloc[:, j]) for j in range(rna.shape[1])],
                                            names=list(rna.columns)), path)
    else:
        rna.to_csv(path, sep="\t" if ".tsv" in suffix else ",", index=False)
    with pytest.raises(CohortError, match=rf"dup{re.escape(suffix)}: column 'G1' appears 2 times in the header"):
        build(tables, modalities={"rna": path})
    assert not (tables["dir"] / "c.zarr").exists()


def test_too_few_patients_for_the_folds_names_the_labels_file_and_options(tables):
    tables["labels"].tail(3).to_csv(tables["paths"]["labels"], index=False)  # rna.csv lacks them: missing
    with pytest.raises(CohortError, match=r"labels\.csv: 2 non-holdout patients cannot fill 5 folds .*"
                                          r"--folds K / --test-frac FRAC"):
        build(tables, modalities={"proteins": tables["paths"]["proteins"]}, n_folds=5)


def test_rna_value_type_is_inferred_and_said_or_taken_from_the_option(tables, capsys):
    paths = tables["paths"]
    expression = tables["rna"].copy()
    expression.iloc[:, 1:] = expression.iloc[:, 1:].abs() * 10
    expression.to_csv(tables["dir"] / "expression.csv", index=False)
    cohort = build(tables, modalities={"rna": str(tables["dir"] / "expression.csv")}, out=str(tables["dir"] / "e.zarr"))
    assert cohort.value_types["rna"] == "fpkm_uq"
    assert "rna: value type 'fpkm_uq' inferred (every value >= 0" in capsys.readouterr().out
    chosen = build(tables, modalities={"rna": paths["rna"]}, value_types={"rna": "raw"}, out=str(tables["dir"] / "r.zarr"))
    assert chosen.value_types["rna"] == "raw" and "inferred" not in capsys.readouterr().out
