"""experiments/build_cohort.py: help text, a tables build and one-line errors, via subprocess."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from impumae.data.store import Cohort

SCRIPT = "experiments/build_cohort.py"
COMMON_OPTIONS = ("--out", "--overwrite", "--shard-patients", "--split-seed", "--test-frac", "--folds")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands_and_options():
    top = run("--help")
    assert top.returncode == 0
    for subcommand in ("synthetic", "tcga-gbmlgg-open", "tables", "raw"):
        assert subcommand in top.stdout
    tables = run("tables", "--help")
    assert tables.returncode == 0
    for option in COMMON_OPTIONS + ("--labels", "--modality", "--patch", "--id-column", "--time-unit", "--value-type"):
        assert option in tables.stdout


def write_tables(directory, n=24):
    rng = np.random.default_rng(1)
    ids = [f"P{i}" for i in range(n)]
    pd.DataFrame({"patient_id": ids, "time": rng.uniform(0.1, 5, n), "event": rng.integers(0, 2, n)}).to_csv(
        directory / "labels.csv", index=False)
    pd.DataFrame(rng.normal(size=(n - 4, 7)), index=pd.Index(ids[4:], name="patient_id")).add_prefix("f").to_csv(
        directory / "proteins.csv")
    mutations = pd.DataFrame(rng.integers(0, 2, (n, 3)), index=pd.Index(ids, name="id"), columns=["IDH1", "TP53", "ATRX"])
    mutations.to_csv(directory / "mutations.tsv", sep="\t")


def test_tables_build_and_errors(tmp_path):
    write_tables(tmp_path)
    out = str(tmp_path / "cohort.zarr")
    args = ["tables", "--labels", str(tmp_path / "labels.csv"), "--modality", f"proteins={tmp_path / 'proteins.csv'}",
            "--modality", f"mut={tmp_path / 'mutations.tsv'}", "--patch", "proteins=4", "--out", out,
            "--folds", "3", "--test-frac", "0.25", "--shard-patients", "5", "--quiet"]
    done = run(*args)
    assert done.returncode == 0, done.stderr
    assert "patients: 24" in done.stdout and "most common missingness patterns" in done.stdout
    assert "proteins+mutations" in done.stdout
    cohort = Cohort.open(out)
    assert cohort.modalities == ["proteins", "mutations"] and cohort.specs["proteins"].patch == 4
    assert cohort.value_types["mutations"] == "binary"
    assert cohort.splits["holdout"].sum() == 6 and cohort.splits.attrs["k"] == 3
    assert "build_cohort.py tables" in cohort.provenance["command"]

    again = run(*args)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"error: output path {out} already exists; pass overwrite=True (--overwrite) to replace it"]
    assert "Traceback" not in again.stderr

    bad = run(*[a if a != "proteins=4" else "proteins=four" for a in args], "--overwrite")
    assert bad.returncode == 2 and "--patch 'proteins=four'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert run(*args, "--overwrite").returncode == 0


def test_s3_out_without_s3fs_exits_2_naming_the_extra(tmp_path, no_s3fs, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_cohort_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    write_tables(tmp_path)
    status = script.main(["tables", "--labels", str(tmp_path / "labels.csv"), "--modality",
                          f"proteins={tmp_path / 'proteins.csv'}", "--out", "s3://bucket/cohort.zarr", "--quiet"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: s3://bucket/cohort.zarr: the s3:// filesystem needs an extra")
    assert err[0].endswith("install it with pip install 'impumae[cloud]'")
