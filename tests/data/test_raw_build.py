"""``build_cohort.py raw``: cohort table, manifests, per-patient report, --strict, re-run skip.

Tiny raw files in the documented formats are built in tmp_path (builders in tests/data/test_raw_formats.py).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage import io

from impumae.data.raw import FileSource, ParseOptions, TableColumns, build_from_raw
from impumae.data.store import CohortError
from impumae.data.raw.clinical import read_cohort_table, yes_no
from impumae.data.raw.common import RawFileError
from impumae.data.raw.manifest import FileLocator, read_manifest
from impumae.data.store import Cohort, CohortError
from tests.data.test_raw_formats import (GENES, brain_with_tumour, he_like_image, truncate, write_betas, write_case,
                              write_star)

DATA = Path("../shared/data")
MANIFESTS = DATA / "tcga_gbmlgg_gdc_manifests_drim"
COHORT = DATA / "tcga_gbmlgg_mtcp_cohort" / "dataset_with_dna.csv.gz"
PATIENTS = [f"TCGA-AA-000{i}" for i in range(1, 7)]
PROBES = ("cg1", "cg2", "cg3", "cg4")
OPTIONS = ParseOptions(mri_size=16, wsi_patches=2, wsi_patch_size=64, wsi_candidates=50)


# ---------------------------------------------------------------------------------------------
# a tiny raw cohort: 6 patients, each with something wrong or right
# ---------------------------------------------------------------------------------------------
def write_manifest(path: Path, rows) -> Path:
    pd.DataFrame(rows, columns=["id", "filename", "md5", "size", "state"]).to_csv(path, sep="\t", index=False)
    return path


def make_raw_cohort(root: Path) -> dict:
    """Cohort table + GDC-layout RNA/DNAm with manifests + BraTS folders + H&E regions."""
    rna_rows, dna_rows = [], []
    # RNA: 1 plain, 2 gzipped, 3 other gene model, 4 listed in the manifest but not downloaded, 5 truncated gzip
    for i, (patient, kind) in enumerate(zip(PATIENTS[:5], ["plain", "gz", "v22", "absent", "truncated"])):
        file_id, name = f"rna-{i}", f"uuid{i}.rna_seq.augmented_star_gene_counts.tsv" + (".gz" if kind in ("gz", "truncated") else "")
        path = root / "rna" / file_id / name
        if kind != "absent":
            write_star(path, np.arange(len(GENES)) + 10 * i, gene_model="GENCODE v22" if kind == "v22" else "GENCODE v36",
                       gz=kind in ("gz", "truncated"))
            if kind == "truncated":
                truncate(path, 0.5)
        rna_rows.append([file_id, name, "0" * 32, path.stat().st_size if path.exists() else 100, "released"])
    write_manifest(root / "rna_manifest.txt", rna_rows)
    # DNAm: 1 with NA, 2 sharing no probe, 3 fine (gz); by file name in the table column
    dna_files = {PATIENTS[0]: {"cg1": 0.1, "cg2": np.nan, "cg4": 0.4}, PATIENTS[1]: {"cg8": 0.5},
                 PATIENTS[2]: {"cg1": 0.3, "cg2": 0.3, "cg3": 0.3, "cg4": 0.3}}
    dna_names = {}
    for i, (patient, betas) in enumerate(dna_files.items()):
        name = f"d{i}.methylation_array.sesame.level3betas.txt"
        path = write_betas(root / "dnam" / f"dna-{i}" / name, betas)
        dna_rows.append([f"dna-{i}", name, "0" * 32, path.stat().st_size, "released"])
        dna_names[patient] = name
    write_manifest(root / "dnam_manifest.txt", dna_rows)
    (root / "probes.tsv").write_text("\n".join(PROBES) + "\n")
    # MRI: 1 at 1 mm, 2 at 2 mm, 3 empty tumour mask; case folders named by brats id
    image, seg = brain_with_tumour()
    write_case(root / "mri", "BraTS-GLI-00001-000", image, seg)
    small_image, small_seg = brain_with_tumour(shape=(24, 24, 20), centre=(14, 8, 10))
    write_case(root / "mri", "BraTS-GLI-00002-000", small_image, small_seg, zooms=(2.0, 2.0, 2.0))
    write_case(root / "mri", "BraTS-GLI-00003-000", image, np.zeros_like(seg))
    # WSI: region images named by patient (folder mode): 1 and 4 stained, 5 blank
    (root / "wsi").mkdir()
    io.imsave(root / "wsi" / f"{PATIENTS[0]}-01Z-00-DX1.png", he_like_image(200, 240), check_contrast=False)
    io.imsave(root / "wsi" / f"{PATIENTS[3]}-01Z-00-DX1.png", he_like_image(200, 240, seed=4), check_contrast=False)
    io.imsave(root / "wsi" / f"{PATIENTS[4]}-01Z-00-DX1.png", np.full((200, 240, 3), 240, np.uint8), check_contrast=False)

    table = pd.DataFrame({
        "submitter_id": PATIENTS,
        "project_id": ["LGG", "GBM", "LGG", "GBM", "LGG", "GBM"],
        "time": [1.5, 0.4, 3.2, 2.0, "", 0.9],  # patient 5 has no survival time: left out
        "event": [1, 1, 0, 0, 1, 1],
        "age_at_diagnosis": [365.25 * 40, 365.25 * 61.5, "", 365.25 * 30, 365.25 * 50, 365.25 * 70],
        "treatments_radiation_treatment_or_therapy": ["yes", "no", "not reported", "Yes", "no", "maybe"],
        "treatments_pharmaceutical_treatment_or_therapy": ["no", "yes", "no", "", "yes", "no"],
        "rna_file_id": [f"rna-{i}" for i in range(5)] + [""],
        "dnam_file_name": [dna_names.get(p, "") for p in PATIENTS],
        "brats_id": ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000", "", "", ""],
    })
    table.to_csv(root / "cohort.csv", index=False)
    sources = {"rna": FileSource(str(root / "rna"), column="rna_file_id", manifest=str(root / "rna_manifest.txt")),
               "dna": FileSource(str(root / "dnam"), column="dnam_file_name", manifest=str(root / "dnam_manifest.txt")),
               "mri": FileSource(str(root / "mri"), column="brats_id"),
               "wsi": FileSource(str(root / "wsi"))}
    return {"table": str(root / "cohort.csv"), "sources": sources,
            "options": ParseOptions(**{**OPTIONS.__dict__, "dnam_probes": str(root / "probes.tsv")})}


def build(raw: dict, out: Path, **kwargs):
    kwargs = {"sources": raw["sources"], "options": raw["options"], "drop_unlabelled": True, **kwargs}
    return build_from_raw(str(out), raw["table"], kwargs.pop("sources"), progress=False, test_frac=0.0, n_folds=2,
                          **kwargs)


def report_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(str(out) + ".report.csv", keep_default_na=False).set_index(["patient", "modality"])


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------
def test_raw_build_stores_good_files_and_reports_bad_ones(tmp_path, capsys):
    raw = make_raw_cohort(tmp_path / "raw")
    out = tmp_path / "cohort.zarr"
    cohort = build(raw, out)
    p1, p2, p3, p4, p5, p6 = PATIENTS
    assert list(cohort.patient_ids) == [p1, p2, p3, p4, p6]  # p5: no survival time
    present = cohort.present
    assert present["rna"].tolist() == [True, True, False, False, False]
    assert present["dna"].tolist() == [True, False, True, False, False]
    assert present["mri"].tolist() == [True, True, False, False, False]
    assert present["wsi"].tolist() == [True, False, False, True, False]
    assert present["clinical"].all()

    coding = [g for g, _, t in GENES if t == "protein_coding"]
    assert cohort.feature_names("rna") == coding and cohort.feature_names("dna") == list(PROBES)
    np.testing.assert_allclose(cohort.read_patient(p2)["rna"], np.arange(6) + 10)
    np.testing.assert_array_equal(np.isnan(cohort.read_patient(p1)["dna"]), [False, True, True, False])
    assert cohort.read_patient(p1)["mri"].shape == (16, 16, 16)
    assert cohort.read_patient(p1)["wsi"].shape == (2, 64, 64, 3)
    clinical = {p: cohort.read_patient(p)["clinical"] for p in (p1, p2, p3, p6)}
    np.testing.assert_allclose(clinical[p1], [40.0, 1, 0])
    np.testing.assert_allclose(clinical[p2], [61.5, 0, 1])
    assert np.isnan(clinical[p3][:2]).all() and clinical[p3][2] == 0  # no age, 'not reported'
    assert np.isnan(clinical[p6][1])  # 'maybe' kept as unknown, and reported
    assert cohort.feature_names("clinical") == ["age_years", "radiation", "pharmaceutical"]

    report = report_of(out)
    assert report.loc[(p3, "rna"), "status"] == "error" and "gene model 'GENCODE v22'" in report.loc[(p3, "rna"), "reason"]
    assert report.loc[(p4, "rna"), "status"] == "error" and "listed but not found" in report.loc[(p4, "rna"), "reason"]
    assert report.loc[(p2, "dna"), "reason"].startswith("shares no probe")
    assert report.loc[(p3, "mri"), "reason"] == "empty tumour mask (no voxel > 0)"
    assert report.loc[(p3, "mri"), "file"].endswith("BraTS-GLI-00003-000-seg.nii.gz")
    assert report.loc[(p6, "rna"), "status"] == "missing"
    assert report.loc[(p5, "labels"), "status"] == "error" and "no survival label" in report.loc[(p5, "labels"), "reason"]
    assert "'maybe' is not yes/no" in report.loc[(p6, "clinical"), "reason"]
    assert report.loc[(p1, "wsi"), "status"] == "found"
    printed = capsys.readouterr().out
    assert "rna        found     2" in printed and "error: patient" in printed
    provenance = cohort.provenance
    assert provenance["source"] == "raw" and provenance["options"]["mri_size"] == 16
    assert Cohort.open(str(out)).specs["rna"].shape == (6,)


def test_truncated_gzip_is_reported_for_its_patient_only(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    out = tmp_path / "c.zarr"
    build(raw, out)
    # patient 5 has no label; give it one so that its truncated RNA file is processed
    table = pd.read_csv(raw["table"], keep_default_na=False)
    table.loc[4, "time"] = "2.5"
    table.to_csv(raw["table"], index=False)
    cohort = build(raw, out, overwrite=True)
    report = report_of(out)
    assert report.loc[(PATIENTS[4], "rna"), "status"] == "error"
    assert "truncated or corrupt" in report.loc[(PATIENTS[4], "rna"), "reason"]
    assert report.loc[(PATIENTS[4], "wsi"), "reason"].startswith("no tissue")
    assert cohort.present.loc[PATIENTS[4]].tolist() == [False, False, False, False, True]


def test_strict_stops_naming_patient_file_and_reason(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    with pytest.raises(CohortError, match=r"--strict: patient TCGA-AA-0005.*no survival label"):
        build(raw, tmp_path / "a.zarr", strict=True)
    table = pd.read_csv(raw["table"], keep_default_na=False)
    table = table[table["submitter_id"].isin(PATIENTS[:3])]  # good labels and clinical values
    table.to_csv(raw["table"], index=False)
    with pytest.raises(CohortError, match=r"--strict: patient TCGA-AA-0003, modality rna, file .*uuid2.*gene model"):
        build(raw, tmp_path / "b.zarr", strict=True)
    assert not (tmp_path / "b.zarr").exists()
    assert (tmp_path / "b.zarr.report.csv").exists()


def rewrite(raw: dict, modality: str, relative: str, write) -> Path:
    """Replace one raw file with ``write(path)`` and update its size in the modality's manifest."""
    path = Path(raw["sources"][modality].root) / relative
    write(path)
    manifest = read_manifest(raw["sources"][modality].manifest).reset_index()
    manifest.loc[manifest["filename"] == path.name, "size"] = path.stat().st_size
    manifest.to_csv(raw["sources"][modality].manifest, sep="\t", index=False)
    return path


def test_odd_gene_model_in_the_first_rna_file_blames_that_file_not_the_others(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    # the first patient's file is now the odd one (GENCODE v22); the third's is back to v36
    rewrite(raw, "rna", "rna-0/uuid0.rna_seq.augmented_star_gene_counts.tsv",
            lambda path: write_star(path, np.arange(len(GENES)), gene_model="GENCODE v22"))
    rewrite(raw, "rna", "rna-2/uuid2.rna_seq.augmented_star_gene_counts.tsv",
            lambda path: write_star(path, np.arange(len(GENES)) + 20))
    out = tmp_path / "c.zarr"
    cohort = build(raw, out)
    assert cohort.present["rna"].tolist() == [False, True, True, False, False]
    report = report_of(out)
    assert report.loc[(PATIENTS[0], "rna"), "status"] == "error"
    assert "gene model 'GENCODE v22' differs from the cohort's 'GENCODE v36'" in report.loc[(PATIENTS[0], "rna"), "reason"]
    assert report.loc[(PATIENTS[2], "rna"), "status"] == "found"
    np.testing.assert_allclose(cohort.read_patient(PATIENTS[2])["rna"], np.arange(6) + 20)
    table = pd.read_csv(raw["table"], keep_default_na=False)
    table[table["submitter_id"].isin(PATIENTS[:3])].to_csv(raw["table"], index=False)
    with pytest.raises(CohortError, match=r"--strict: patient TCGA-AA-0001, modality rna, file .*uuid0.*gene model 'GENCODE v22'"):
        build(raw, tmp_path / "s.zarr", strict=True, sources={"rna": raw["sources"]["rna"]})
    # an explicit gene model wins over the majority
    v22 = build(raw, tmp_path / "v22.zarr", sources={"rna": raw["sources"]["rna"]},
                options=ParseOptions(**{**raw["options"].__dict__, "rna_gene_model": "GENCODE v22"}))
    assert v22.present["rna"].tolist() == [True, False, False]


def test_betas_file_with_only_na_is_an_error_for_its_patient_and_strict_stops(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    name = "d2.methylation_array.sesame.level3betas.txt"  # the third patient's (was all 0.3)
    rewrite(raw, "dna", f"dna-2/{name}", lambda path: write_betas(path, {p: np.nan for p in PROBES}))
    out = tmp_path / "c.zarr"
    cohort = build(raw, out, sources={"dna": raw["sources"]["dna"]})
    report = report_of(out)
    assert report.loc[(PATIENTS[2], "dna"), "status"] == "error"
    assert "no beta value for any of the 4 listed probes" in report.loc[(PATIENTS[2], "dna"), "reason"]
    assert report.loc[(PATIENTS[2], "dna"), "file"].endswith(name)
    assert cohort.present["dna"].tolist() == [True, False, False, False, False]
    table = pd.read_csv(raw["table"], keep_default_na=False)
    table[table["submitter_id"].isin([PATIENTS[0], PATIENTS[2]])].to_csv(raw["table"], index=False)
    with pytest.raises(CohortError, match=rf"--strict: patient TCGA-AA-0003, modality dna, file .*{name}.*no beta value"):
        build(raw, tmp_path / "s.zarr", strict=True, sources={"dna": raw["sources"]["dna"]})


def test_no_clinical_needs_no_clinical_columns(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    table = pd.read_csv(raw["table"], keep_default_na=False)
    table.drop(columns=["age_at_diagnosis", "treatments_radiation_treatment_or_therapy",
                        "treatments_pharmaceutical_treatment_or_therapy"]).to_csv(raw["table"], index=False)
    with pytest.raises(CohortError, match="no column 'age_at_diagnosis'"):
        build(raw, tmp_path / "with.zarr", sources={"mri": raw["sources"]["mri"]})
    cohort = build(raw, tmp_path / "c.zarr", sources={"mri": raw["sources"]["mri"]}, clinical=False)
    assert cohort.modalities == ["mri"] and cohort.present["mri"].sum() == 2


def test_s3_out_without_s3fs_fails_before_parsing_naming_the_extra(tmp_path, no_s3fs):
    raw = make_raw_cohort(tmp_path / "raw")
    with pytest.raises(CohortError, match=r"s3://bucket/c\.zarr: .*pip install 'impumae\[cloud\]'"):
        build(raw, "s3://bucket/c.zarr", work_dir=str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_rerun_skips_cached_patients_and_redoes_changed_files(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    out = tmp_path / "c.zarr"
    first = build(raw, out)
    before = first.load("rna").copy()
    assert (tmp_path / "c.zarr.work" / "rna" / f"{PATIENTS[0]}.npy").exists()
    # change one patient's RNA file: only that one is parsed again
    changed = Path(raw["sources"]["rna"].root) / "rna-0" / "uuid0.rna_seq.augmented_star_gene_counts.tsv"
    write_star(changed, np.arange(len(GENES)) + 100)
    size = changed.stat().st_size
    manifest = read_manifest(raw["sources"]["rna"].manifest).reset_index()
    manifest.loc[0, "size"] = size
    manifest.to_csv(raw["sources"]["rna"].manifest, sep="\t", index=False)
    second = build(raw, out, overwrite=True)
    report = report_of(out)
    assert report.loc[(PATIENTS[0], "rna"), "status"] == "found"
    assert report.loc[(PATIENTS[1], "rna"), "status"] == "skipped"
    assert report.loc[(PATIENTS[0], "mri"), "status"] == "skipped"
    assert report.loc[(PATIENTS[3], "wsi"), "status"] == "skipped"
    np.testing.assert_allclose(second.read_patient(PATIENTS[0])["rna"], np.arange(6) + 100)
    np.testing.assert_array_equal(second.load("rna")[1], before[1])
    np.testing.assert_array_equal(second.load("wsi"), first.load("wsi"))


def test_changed_parser_settings_clear_that_modality_cache(tmp_path, capsys):
    raw = make_raw_cohort(tmp_path / "raw")
    out = tmp_path / "c.zarr"
    build(raw, out)
    raw["options"] = ParseOptions(**{**raw["options"].__dict__, "mri_size": 8})
    cohort = build(raw, out, overwrite=True)
    assert "mri: parser settings changed" in capsys.readouterr().out
    assert report_of(out).loc[(PATIENTS[0], "mri"), "status"] == "found"
    assert cohort.read_patient(PATIENTS[0])["mri"].shape == (8, 8, 8)


@pytest.mark.slow
def test_two_workers_give_the_same_store_as_one(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    one = build(raw, tmp_path / "one.zarr", workers=1)
    two = build(raw, tmp_path / "two.zarr", workers=2)
    for m in one.modalities:
        np.testing.assert_array_equal(one.load(m), two.load(m))
    pd.testing.assert_frame_equal(report_of(tmp_path / "one.zarr"), report_of(tmp_path / "two.zarr"))


@pytest.mark.slow
def test_cli_raw_subcommand_and_strict_exit_status(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    src = raw["sources"]
    args = [sys.executable, "experiments/build_cohort.py", "raw", "--table", raw["table"],
            "--rna-root", src["rna"].root, "--rna-column", "rna_file_id", "--rna-manifest", src["rna"].manifest,
            "--mri-root", src["mri"].root, "--mri-column", "brats_id", "--mri-size", "16",
            "--test-frac", "0", "--folds", "2", "--quiet", "--drop-unlabelled"]
    done = subprocess.run(args + ["--out", str(tmp_path / "c.zarr")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "rna        found     2" in done.stdout and "present per modality" in done.stdout
    strict = subprocess.run(args + ["--out", str(tmp_path / "s.zarr"), "--strict"], capture_output=True, text=True)
    assert strict.returncode != 0
    assert "patient TCGA-AA-0005" in strict.stderr and "no survival label" in strict.stderr


# ---------------------------------------------------------------------------------------------
# manifests and the cohort table
# ---------------------------------------------------------------------------------------------
def test_locator_modes_and_their_reasons(tmp_path):
    root = tmp_path / "files"
    (root / "id-1" / "logs").mkdir(parents=True)
    (root / "id-1" / "a.txt").write_text("x")
    (root / "id-2").mkdir()
    (root / "id-2" / "b.txt").write_text("xy")
    (root / "TCGA-AA-0001-01Z.png").write_bytes(b"x")
    (root / "TCGA-AA-00011-01Z.png").write_bytes(b"x")
    manifest = write_manifest(tmp_path / "m.txt", [["id-1", "a.txt", "", 1, "released"], ["id-2", "b.txt", "", 99, "released"],
                                                   ["id-3", "c.txt", "", 1, "released"]])
    table = pd.DataFrame({"f": ["id-1", "b.txt", "id-3", "id-9", ""]},
                         index=["P1", "P2", "P3", "P4", "P5"])
    located = FileLocator(FileSource(str(root), "f", str(manifest)), table)
    assert located.locate("P1").status == "found" and located.locate("P1").path == root / "id-1" / "a.txt"
    assert "manifest says 99" in located.locate("P2").reason  # found by file name, wrong size
    assert located.locate("P3").status == "error" and "listed but not found" in located.locate("P3").reason
    assert "neither a file id nor a file name" in located.locate("P4").reason
    assert located.locate("P5").status == "missing"
    no_manifest = FileLocator(FileSource(str(root), "f"), table, suffixes=(".txt",))
    assert no_manifest.locate("P1").path == root / "id-1" / "a.txt"  # GDC layout, logs/ ignored
    by_name = FileLocator(FileSource(str(root)), table, suffixes=(".png",))
    assert by_name.locate("TCGA-AA-0001").path.name == "TCGA-AA-0001-01Z.png"  # not ...00011
    sheet = tmp_path / "sheet.tsv"
    pd.DataFrame({"File ID": ["id-2", "id-1"], "File Name": ["b.txt", "a.txt"], "Data Category": ["x", "x"],
                  "Case ID": ["P2", "P1, P2"]}).to_csv(sheet, sep="\t", index=False)
    by_sheet = FileLocator(FileSource(str(root), sample_sheet=str(sheet)), table)
    assert by_sheet.locate("P1").path == root / "id-1" / "a.txt"
    assert by_sheet.locate("P2").path == root / "id-1" / "a.txt" and "first of 2 files" in by_sheet.locate("P2").reason
    assert by_sheet.locate("P3").status == "missing"
    with pytest.raises(RawFileError, match="no column 'nope'"):
        FileLocator(FileSource(str(root), "nope"), table)


@pytest.mark.skipif(not MANIFESTS.exists(), reason="shared GDC manifests absent")
def test_real_gdc_manifests_parse():
    rna = read_manifest(MANIFESTS / "gdc_manifest_20231204_RNA_GBM_LGG.txt")
    dna = read_manifest(MANIFESTS / "gdc_manifest_20231205_DNAm_GBM_LGG.txt")
    assert len(rna) > 700 and rna["filename"].str.endswith(".rna_seq.augmented_star_gene_counts.tsv").all()
    assert len(dna) > 980 and (dna["size"] > 0).all() and rna.index.is_unique


def test_yes_no_values():
    assert [yes_no(v) for v in ("yes", "No", "TRUE", "0", "1.0")] == [1, 0, 1, 0, 1]
    assert np.isnan(yes_no("not reported")) and np.isnan(yes_no(""))
    with pytest.raises(ValueError, match="'maybe' is not yes/no"):
        yes_no("maybe")


def test_cohort_table_units_and_bad_rows(tmp_path):
    path = tmp_path / "t.tsv"
    pd.DataFrame({"case": ["A", "B", "C"], "days": [730, 365, -1], "dead": [1, 0, 1], "age": [30, 40, 50],
                  "rt": ["yes", "no", "yes"]}).to_csv(path, sep="\t", index=False)
    columns = TableColumns(patient="case", time="days", time_unit="days", event="dead", age="age", age_unit="years",
                           binary=(("radiation", "rt"),), project=None)
    table = read_cohort_table(path, columns)
    assert list(table.labels.index) == ["A", "B"]
    np.testing.assert_allclose(table.labels["time"], [2.0, 1.0])
    assert table.issues[0].patient == "C" and "negative time" in table.issues[0].reason
    np.testing.assert_allclose(table.clinical.loc["A"], [30, 1])
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"submitter_id": ["A", "A"], "time": [1, 2], "event": [0, 1]}).to_csv(dup, index=False)
    with pytest.raises(RawFileError, match="patient A appears twice"):
        read_cohort_table(dup, TableColumns(age=None, binary=()))


@pytest.mark.skipif(not COHORT.exists(), reason="shared cohort table absent")
def test_authors_table_with_default_columns():
    table = read_cohort_table(COHORT)
    assert len(table.labels) == 1104 and table.labels["event"].sum() == 616 and not table.issues
    assert table.clinical["age_years"].between(10, 90).sum() == 1103


def test_a_patient_without_a_label_is_refused_unless_dropped_explicitly(tmp_path):
    raw = make_raw_cohort(tmp_path / "raw")
    with pytest.raises(CohortError, match=r"cohort.csv: patient TCGA-AA-0005: no survival label .*--drop-unlabelled"):
        build(raw, tmp_path / "c.zarr", drop_unlabelled=False)
    assert not (tmp_path / "c.zarr").exists()


def test_a_modality_without_any_usable_file_fails_the_build_unless_allowed(tmp_path, capsys):
    raw = make_raw_cohort(tmp_path / "raw")
    for f in Path(raw["sources"]["mri"].root).rglob("*.nii.gz"):
        f.write_bytes(b"not a nifti")
    with pytest.raises(CohortError, match=r"mri: no patient has a usable file .*--allow-missing-modality"):
        build(raw, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()
    cohort = build(raw, tmp_path / "allowed.zarr", allow_missing_modality=True)
    assert "mri" not in cohort.modalities and "left out of the store" in capsys.readouterr().out
