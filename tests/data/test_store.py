"""The cohort store: round trip, URLs, atomic builds and input validation."""
from __future__ import annotations

import os
import pickle
import uuid

import numpy as np
import pandas as pd
import pytest
import zarr

from impumae.data.store import Cohort, CohortError, CohortPlan, summarize, write_cohort
from impumae.modalities import ModalitySpec

N = 23
SPECS = [
    ModalitySpec("rna", "tabular", (12,), patch=4, depth=1),
    ModalitySpec("mri", "volume", (4, 4, 4), patch=2, depth=1),
    ModalitySpec("wsi", "image", (2, 8, 8, 3), dtype="uint8", patch=4, depth=1),
    ModalitySpec("clinical", "clinical", (3,)),
]
VALUE_TYPES = {"rna": "fpkm_uq", "mri": "zscored", "wsi": "rgb", "clinical": "clinical"}
CLINICAL_NAMES = ["age_years", "radiation", "pharmaceutical"]


def make_labels(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"time": rng.exponential(3.0, n), "event": rng.integers(0, 2, n),
                         "true_risk": rng.normal(size=n), "project": rng.choice(["GBM", "LGG"], n)},
                        index=pd.Index([f"TCGA-{i:04d}" for i in range(n)], name="patient_id"))


def make_patients(n: int = N, seed: int = 1) -> list[dict]:
    """Deterministic samples with a missingness pattern that varies per modality."""
    rng = np.random.default_rng(seed)
    patients = []
    for i in range(n):
        rna = rng.gamma(2.0, 1.0, 12).astype(np.float32)
        if i % 4 == 1:
            rna[3] = np.nan  # a missing value inside a present row
        patients.append({
            "rna": rna if i % 3 else None,
            "mri": rng.normal(size=(4, 4, 4)).astype(np.float32) if i % 2 else None,
            **({"wsi": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)} if i % 5 else {}),
            "clinical": np.array([rng.uniform(20, 80), i % 2, (i + 1) % 2], dtype=np.float64),
        })
    return patients


def make_plan(labels=None, specs=None) -> CohortPlan:
    return CohortPlan(labels=make_labels() if labels is None else labels, specs=SPECS if specs is None else specs,
                      feature_names={"rna": [f"G{i}" for i in range(12)], "clinical": CLINICAL_NAMES},
                      provenance={"source": "test", "command": "pytest"}, value_types=VALUE_TYPES)


def write(url, patients=None, plan=None, **kwargs):
    kwargs = {"shard_patients": 5, "progress": False, **kwargs}
    return write_cohort(url, make_plan() if plan is None else plan,
                        make_patients() if patients is None else patients, **kwargs)


def assert_round_trip(cohort: Cohort, labels: pd.DataFrame, patients: list[dict]) -> None:
    assert list(cohort.patient_ids) == list(labels.index)
    assert cohort.modalities == [s.name for s in SPECS]
    assert cohort.specs == {s.name: s for s in SPECS}
    assert cohort.value_types == VALUE_TYPES
    assert cohort.feature_names("rna") == [f"G{i}" for i in range(12)]
    assert cohort.feature_names("clinical") == CLINICAL_NAMES
    assert cohort.feature_names("mri") == []
    stored = cohort.labels
    np.testing.assert_allclose(stored["time"], labels["time"].astype(np.float32))
    np.testing.assert_array_equal(stored["event"], labels["event"])
    np.testing.assert_allclose(stored["true_risk"], labels["true_risk"].astype(np.float32))
    assert list(stored["project"]) == list(labels["project"])
    assert stored["time"].dtype == np.float32 and stored["event"].dtype == np.int8

    present = cohort.present
    for spec in SPECS:
        expected_present = [p.get(spec.name) is not None for p in patients]
        assert present[spec.name].tolist() == expected_present
        whole = cohort.load(spec.name)
        assert whole.shape == (N, *spec.shape) and whole.dtype == np.dtype(spec.dtype)
        for i, patient in enumerate(patients):
            sample = patient.get(spec.name)
            if sample is None:
                missing = whole[i] == 0 if spec.dtype == "uint8" else np.isnan(whole[i])
                assert missing.all()
            else:
                np.testing.assert_array_equal(whole[i], np.asarray(sample).astype(spec.dtype))
        picked = [7, 2, 2, 19]
        np.testing.assert_array_equal(cohort.read(spec.name, picked), whole[picked])
    one = cohort.read_patient("TCGA-0007")
    assert set(one) == set(cohort.modalities)
    for name, value in one.items():
        expected = patients[7].get(name)
        assert (value is None) == (expected is None)
    np.testing.assert_array_equal(cohort.read_patient(7)["mri"], patients[7]["mri"])

    provenance = cohort.provenance
    assert provenance["source"] == "test" and provenance["command"] == "pytest"
    assert {"created", "impumae_version", "library_versions"} <= set(provenance)
    assert provenance["library_versions"]["zarr"] == zarr.__version__


def test_round_trip_local_path(tmp_path):
    labels, patients = make_labels(), make_patients()
    cohort = write(str(tmp_path / "c.zarr"), patients)
    assert_round_trip(cohort, labels, patients)
    assert_round_trip(Cohort.open(str(tmp_path / "c.zarr")), labels, patients)
    assert os.listdir(tmp_path) == ["c.zarr"]  # no temporary store left behind


def test_round_trip_file_and_memory_urls(tmp_path):
    labels, patients = make_labels(), make_patients()
    for url in (f"file://{tmp_path}/c.zarr", f"memory://impumae-test-{uuid.uuid4().hex}/c.zarr"):
        assert_round_trip(write(url, patients), labels, patients)
        assert_round_trip(Cohort.open(url), labels, patients)


def test_layout_chunks_shards_and_splits(tmp_path):
    cohort = write(str(tmp_path / "c.zarr"), shard_patients=5)
    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert root["modalities/rna"].chunks == (1, 12) and root["modalities/rna"].shards == (5, 12)
    assert root["modalities/wsi"].chunks == (1, 1, 8, 8, 3) and root["modalities/wsi"].shards == (5, 2, 8, 8, 3)
    assert root["present"].shape == (N, 4) and root["split/fold"].dtype == np.int8
    assert root.attrs["format"] == "impumae-cohort" and root.attrs["format_version"] == 1
    splits = cohort.splits
    assert splits.attrs["k"] == 5 and splits.attrs["seed"] == 0
    assert (splits["fold"][splits["holdout"]] == -1).all()
    assert set(splits["fold"][~splits["holdout"]]) == set(range(5))
    assert "holdout: 5" in summarize(cohort) and "bytes on disk" in summarize(cohort)


def test_cohort_pickles_for_dataloader_workers(tmp_path):
    cohort = write(str(tmp_path / "c.zarr"))
    clone = pickle.loads(pickle.dumps(cohort))
    np.testing.assert_array_equal(clone.load("rna"), cohort.load("rna"))


def test_summarize_reports_counts_and_patterns(tmp_path):
    text = summarize(write(str(tmp_path / "c.zarr")))
    labels = make_labels()
    assert f"patients: {N}" in text
    assert f"events: {int(labels['event'].sum())}" in text
    n_rna = sum(i % 3 != 0 for i in range(N))
    rna_line = next(line for line in text.splitlines() if line.strip().startswith("rna "))
    assert rna_line.split()[1] == str(n_rna)
    all_four = sum(i % 3 != 0 and i % 2 == 1 and i % 5 != 0 for i in range(N))
    assert any(line.split()[0] == str(all_four) and line.endswith("rna+mri+wsi+clinical") for line in text.splitlines())
    assert "most common missingness patterns" in text


def failing_patients(after: int):
    for i, patient in enumerate(make_patients()):
        if i == after:
            raise RuntimeError("source disk vanished")
        yield patient


def test_failed_build_leaves_nothing(tmp_path):
    out = tmp_path / "c.zarr"
    with pytest.raises(RuntimeError, match="source disk vanished"):
        write(str(out), failing_patients(after=12))
    assert os.listdir(tmp_path) == []


def test_failed_build_on_memory_url_leaves_nothing():
    url = f"memory://impumae-test-{uuid.uuid4().hex}/c.zarr"
    with pytest.raises(RuntimeError):
        write(url, failing_patients(after=3))
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    assert not fs.exists(path) and fs.glob(path + "*") == []


def test_existing_output_needs_overwrite_and_survives_a_failed_overwrite(tmp_path):
    out = str(tmp_path / "c.zarr")
    write(out)
    with pytest.raises(CohortError, match=r"c\.zarr already exists; pass overwrite=True"):
        write(out)
    with pytest.raises(RuntimeError):
        write(out, failing_patients(after=8), overwrite=True)
    assert os.listdir(tmp_path) == ["c.zarr"]
    assert_round_trip(Cohort.open(out), make_labels(), make_patients())  # the old store is intact
    patients = make_patients(seed=9)
    assert_round_trip(write(out, patients, overwrite=True), make_labels(), patients)
    assert os.listdir(tmp_path) == ["c.zarr"]


def labels_with(row: int, column: str, value) -> pd.DataFrame:
    labels = make_labels()
    labels[column] = labels[column].astype(object)
    labels.iloc[row, labels.columns.get_loc(column)] = value
    return labels


@pytest.mark.parametrize("labels, message", [
    (make_labels().rename(index={"TCGA-0004": "TCGA-0002"}), r"duplicate patient id\(s\) \['TCGA-0002'\]"),
    (labels_with(3, "time", -1.0), r"patient 'TCGA-0003': field 'time' is negative"),
    (labels_with(5, "time", np.nan), r"patient 'TCGA-0005': field 'time' is missing"),
    (labels_with(6, "time", "soon"), r"patient 'TCGA-0006': field 'time' is missing or non-numeric \('soon'\)"),
    (labels_with(2, "event", 2), r"patient 'TCGA-0002': field 'event' is 2; expected 0 or 1"),
    (labels_with(4, "event", np.nan), r"patient 'TCGA-0004': field 'event' is nan"),
    (make_labels().drop(columns="event"), r"labels: missing column 'event'"),
])
def test_bad_labels(tmp_path, labels, message):
    with pytest.raises(CohortError, match=message):
        write(str(tmp_path / "c.zarr"), plan=make_plan(labels=labels))
    assert not (tmp_path / "c.zarr").exists()


def patients_with(row: int, **samples) -> list[dict]:
    patients = make_patients()
    patients[row] = {**patients[row], **samples}
    return patients


@pytest.mark.parametrize("patients, message", [
    (patients_with(4, rna=np.ones(11)), r"patient 'TCGA-0004', modality 'rna': shape \(11,\) does not match the spec's \(12,\)"),
    (patients_with(6, wsi=np.zeros((2, 8, 8, 3), np.float32)), r"patient 'TCGA-0006', modality 'wsi': dtype float32 does not match the spec's uint8"),
    (patients_with(7, rna=np.array(["a"] * 12)), r"patient 'TCGA-0007', modality 'rna': dtype <U1 is not numeric"),
    (patients_with(8, rna=np.r_[np.ones(11), np.inf]), r"patient 'TCGA-0008', modality 'rna': infinite value at \(11,\)"),
    (patients_with(9, mri=np.full((4, 4, 4), np.nan)), r"patient 'TCGA-0009', modality 'mri': NaN at \(0, 0, 0\)"),
    (patients_with(10, dna=np.ones(3)), r"patient 'TCGA-0010' \(row 10\): unknown modality 'dna'"),
    (make_patients()[:-2], r"patients: got 21 samples for 23 labelled patients"),
    (make_patients() + [{}], r"patients: more samples than the 23 labelled patients"),
])
def test_bad_samples(tmp_path, patients, message):
    with pytest.raises(CohortError, match=message):
        write(str(tmp_path / "c.zarr"), patients)
    assert os.listdir(tmp_path) == []


def test_nan_in_tabular_is_a_missing_value_and_all_nan_is_a_missing_modality(tmp_path):
    patients = patients_with(2, rna=np.full(12, np.nan))
    cohort = write(str(tmp_path / "c.zarr"), patients)
    assert not cohort.present.loc["TCGA-0002", "rna"]
    assert np.isnan(cohort.read_patient(1)["rna"][3])  # a single missing value is kept
    assert cohort.present.loc["TCGA-0001", "rna"]


def test_plan_errors(tmp_path):
    plan = make_plan()
    plan.feature_names = {"rna": ["a", "b"]}
    with pytest.raises(CohortError, match=r"modality 'rna': 2 feature names for shape \(12,\)"):
        write(str(tmp_path / "c.zarr"), plan=plan)
    plan = make_plan()
    plan.value_types = {"rna": "counts"}
    with pytest.raises(CohortError, match=r"modality 'rna': value type 'counts'"):
        write(str(tmp_path / "c.zarr"), plan=plan)


def test_reader_errors(tmp_path):
    with pytest.raises(CohortError, match="no cohort store there"):
        Cohort.open(str(tmp_path / "absent.zarr"))
    cohort = write(str(tmp_path / "c.zarr"))
    with pytest.raises(CohortError, match=r"unknown modality 'dna'"):
        cohort.load("dna")
    with pytest.raises(CohortError, match=r"no patient 'TCGA-9999'"):
        cohort.read_patient("TCGA-9999")
    with pytest.raises(CohortError, match="indices out of range"):
        cohort.read("rna", [0, N])


# ---------------------------------------------------------------------------------------------
# codecs and the direct shard reader
# ---------------------------------------------------------------------------------------------
def inner_codecs(url: str, modality: str) -> list[str]:
    array = zarr.open_group(url, mode="r")[f"modalities/{modality}"]
    return [type(codec).__name__ for codec in array.metadata.codecs[0].codecs]


def test_default_codecs_per_kind(tmp_path):
    url = str(tmp_path / "c.zarr")
    write(url)
    assert inner_codecs(url, "rna") == ["BytesCodec", "BloscCodec"]
    assert inner_codecs(url, "clinical") == ["BytesCodec", "BloscCodec"]
    assert inner_codecs(url, "mri") == ["BytesCodec", "BloscCodec"]
    assert inner_codecs(url, "wsi") == ["BytesCodec"]  # images: uncompressed
    blosc = zarr.open_group(url, mode="r")["modalities/rna"].metadata.codecs[0].codecs[1]
    assert blosc.cname.value == "lz4" and blosc.shuffle.value == "shuffle"


@pytest.mark.parametrize("choice, codec", [("none", None), ("lz4", "BloscCodec"), ("zstd", "ZstdCodec"),
                                           (zarr.codecs.GzipCodec(level=1), "GzipCodec")])
def test_codec_round_trip_per_kind(tmp_path, choice, codec):
    url = str(tmp_path / "c.zarr")
    labels, patients = make_labels(), make_patients()
    cohort = write(url, patients, compressors={kind: choice for kind in ("tabular", "clinical", "volume", "image")})
    for spec in SPECS:
        assert inner_codecs(url, spec.name) == ["BytesCodec"] + ([codec] if codec else [])
        assert cohort._reader(spec.name) is not None  # the direct reader handles every codec write_cohort offers
    assert_round_trip(cohort, labels, patients)
    assert_round_trip(Cohort.open(url), labels, patients)


def test_compressors_by_modality_name_override_kind(tmp_path):
    url = str(tmp_path / "c.zarr")
    write(url, compressors={"volume": "zstd", "tabular": "zstd", "rna": "none", "image": "lz4"})
    assert inner_codecs(url, "rna") == ["BytesCodec"]
    assert inner_codecs(url, "mri") == ["BytesCodec", "ZstdCodec"]
    assert inner_codecs(url, "clinical") == ["BytesCodec", "BloscCodec"]  # kind clinical: the default
    assert inner_codecs(url, "wsi") == ["BytesCodec", "BloscCodec"]


@pytest.mark.parametrize("compressors, message", [
    ({"rna": "snappy"}, r"modality 'rna': unknown compressor 'snappy'"),
    ({"genome": "lz4"}, r"compressors: 'genome' is neither a kind"),
    ({"image": 3}, r"modality 'wsi': 3 is not a compressor name"),
])
def test_bad_compressors(tmp_path, compressors, message):
    with pytest.raises(CohortError, match=message):
        write(str(tmp_path / "c.zarr"), compressors=compressors)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("url_kind", ["local", "memory"])
@pytest.mark.parametrize("threads", [1, 4])
def test_concurrent_load_equals_zarr_and_per_patient_reads(tmp_path, url_kind, threads):
    url = str(tmp_path / "c.zarr") if url_kind == "local" else f"memory://impumae-test-{uuid.uuid4().hex}/c.zarr"
    cohort = write(url, shard_patients=4)  # 23 patients: 5 full shards and a partial one
    root = zarr.open_group(url, mode="r")
    for spec in SPECS:
        whole = cohort.load(spec.name, threads=threads)
        np.testing.assert_array_equal(whole, root[f"modalities/{spec.name}"][:])  # zarr's own reader
        one_by_one = np.stack([cohort.read(spec.name, [i])[0] for i in range(N)])
        np.testing.assert_array_equal(whole, one_by_one)
        shuffled = np.random.default_rng(0).permutation(N)[:9]
        np.testing.assert_array_equal(cohort.read(spec.name, shuffled), whole[shuffled])


def test_shard_without_any_present_patient_reads_as_fill(tmp_path):
    patients = make_patients()
    for i in range(5, 10):  # the second shard (shard_patients=5) has no MRI and no WSI
        patients[i] = {**patients[i], "mri": None, "wsi": None}
    cohort = write(str(tmp_path / "c.zarr"), patients, shard_patients=5)
    assert np.isnan(cohort.load("mri")[5:10]).all() and (cohort.load("wsi")[5:10] == 0).all()
    assert np.isnan(cohort.read("mri", [7, 6])).all()
    assert_round_trip(cohort, make_labels(), patients)


def test_zarr_fallback_reads_the_same(tmp_path, monkeypatch):
    from impumae.data.store import shards
    url = str(tmp_path / "c.zarr")
    direct = write(url)
    expected = {spec.name: direct.load(spec.name) for spec in SPECS}
    monkeypatch.setattr(shards.ShardReader, "for_array", classmethod(lambda cls, *args: None))
    fallback = Cohort.open(url)
    for spec in SPECS:
        assert fallback._reader(spec.name) is None
        np.testing.assert_array_equal(fallback.load(spec.name), expected[spec.name])
        np.testing.assert_array_equal(fallback.read(spec.name, [7, 2, 2]), expected[spec.name][[7, 2, 2]])


def test_unsupported_layout_is_left_to_zarr(tmp_path):
    from impumae.data.store.shards import ShardReader
    from impumae.storage import Location
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(6, 4), dtype="float32", chunks=(1, 4))
    assert ShardReader.for_array(plain, Location(str(tmp_path / "plain.zarr")), "") is None
    odd = zarr.create_array(str(tmp_path / "odd.zarr"), shape=(6, 4), dtype="float32", chunks=(1, 2), shards=(2, 4))
    assert ShardReader.for_array(odd, Location(str(tmp_path / "odd.zarr")), "") is None


def test_corrupt_shard_index_is_an_error(tmp_path):
    url = str(tmp_path / "c.zarr")
    write(url)
    shard = tmp_path / "c.zarr" / "modalities" / "rna" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index, before its checksum
    shard.write_bytes(bytes(data))
    with pytest.raises(CohortError, match=r"modalities/rna/c/0/0: shard index checksum mismatch"):
        Cohort.open(url).load("rna")


def test_reading_the_store_does_not_import_scikit_learn():
    import subprocess
    import sys
    code = ("import sys, impumae.data, impumae.data.store; "
            "assert 'sklearn' not in sys.modules, 'sklearn imported'; "
            "from impumae.data import Cohort, make_splits; assert 'sklearn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_s3_store_without_s3fs_is_a_cohort_error_naming_the_extra(tmp_path, no_s3fs):
    with pytest.raises(CohortError, match=r"s3://bucket/c\.zarr: .*pip install 'impumae\[cloud\]'") as raised:
        Cohort.open("s3://bucket/c.zarr")
    assert isinstance(raised.value.__cause__, ImportError)
    with pytest.raises(CohortError, match=r"pip install 'impumae\[cloud\]'"):
        write("s3://bucket/c.zarr")


# -- imputed stores ------------------------------------------------------------------------------
def files_of(path) -> dict:
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


def imputed_inputs(source: Cohort):
    """Values with every missing rna and mri row filled with a constant, and the matching flags."""
    values, imputed = {}, np.zeros((len(source), len(source.modalities)), dtype=bool)
    for m, fill in (("rna", 7.0), ("mri", -1.0)):
        j = source.modalities.index(m)
        missing = ~source.present[m].to_numpy()
        values[m] = source.load(m)
        values[m][missing] = fill
        imputed[missing, j] = True
    return values, imputed


def test_write_imputed_cohort_keeps_the_source_and_flags_the_imputations(tmp_path):
    from impumae.data.store import write_imputed_cohort

    source = write(str(tmp_path / "c.zarr"))
    before = files_of(tmp_path / "c.zarr")
    values, imputed = imputed_inputs(source)
    out = write_imputed_cohort(source, str(tmp_path / "imputed.zarr"), values, imputed,
                               provenance={"checkpoint": "mae.pt"}, imputed_modalities=["rna", "mri", "clinical"],
                               shard_patients=4)
    assert files_of(tmp_path / "c.zarr") == before  # the source is only read
    assert sorted(os.listdir(tmp_path)) == ["c.zarr", "imputed.zarr"]  # no temporary store left
    pd.testing.assert_frame_equal(out.present, source.present)  # present = measured
    pd.testing.assert_frame_equal(out.imputed, pd.DataFrame(imputed, columns=source.modalities,
                                                            index=out.present.index))
    assert source.imputed is None
    assert out.splits.equals(source.splits) and out.splits.attrs == source.splits.attrs
    pd.testing.assert_frame_equal(out.labels, source.labels)
    assert out.value_types == source.value_types and out.feature_names("rna") == source.feature_names("rna")
    for j, m in enumerate(source.modalities):
        present = source.present[m].to_numpy()
        np.testing.assert_array_equal(out.load(m)[present], source.load(m)[present])
        if m in values:
            np.testing.assert_array_equal(out.load(m)[imputed[:, j]], values[m][imputed[:, j]])
        else:
            assert not imputed[:, j].any()
            np.testing.assert_array_equal(out.load(m)[~present], source.load(m)[~present])  # missing stays missing
    assert out.read_patient(int(np.flatnonzero(imputed[:, 0])[0]))["rna"] is None  # read_patient: measured only
    provenance = out.provenance
    assert provenance["source"] == "impute" and provenance["parent_url"] == source.url
    assert provenance["parent"] == source.provenance and provenance["checkpoint"] == "mae.pt"
    assert zarr.open_group(out.url, mode="r").attrs["imputed_modalities"] == ["rna", "mri", "clinical"]


def test_write_imputed_cohort_refuses_bad_requests_and_leaves_nothing(tmp_path):
    from impumae.data.store import write_imputed_cohort

    source = write(str(tmp_path / "c.zarr"))
    values, imputed = imputed_inputs(source)
    for same in (str(tmp_path / "c.zarr"), f"file://{tmp_path}/c.zarr/"):
        with pytest.raises(CohortError, match="is the source store"):
            write_imputed_cohort(source, same, values, imputed)
    measured = imputed.copy()
    measured[int(np.flatnonzero(source.present["rna"])[0]), 0] = True
    with pytest.raises(CohortError, match=r"imputed: patient 'TCGA-0001', modality 'rna' is measured in the source"):
        write_imputed_cohort(source, str(tmp_path / "i.zarr"), values, measured)
    with pytest.raises(CohortError, match=r"imputed: expected bool \[patients, modalities\] = \(23, 4\)"):
        write_imputed_cohort(source, str(tmp_path / "i.zarr"), values, imputed[:, :2])
    with pytest.raises(CohortError, match=r"values: modality 'rna': shape \(23, 5\), expected \(23, 12\)"):
        write_imputed_cohort(source, str(tmp_path / "i.zarr"), {"rna": values["rna"][:, :5]}, imputed)
    nan_values = {**values, "rna": values["rna"].copy()}
    nan_values["rna"][0] = np.nan  # patient 0 lacks rna and its 'imputation' is all NaN
    with pytest.raises(CohortError, match=r"patient 'TCGA-0000', modality 'rna': the imputed value is all NaN"):
        write_imputed_cohort(source, str(tmp_path / "i.zarr"), nan_values, imputed)
    assert sorted(os.listdir(tmp_path)) == ["c.zarr"]
    write_imputed_cohort(source, str(tmp_path / "i.zarr"), values, imputed)
    with pytest.raises(CohortError, match="already exists"):
        write_imputed_cohort(source, str(tmp_path / "i.zarr"), values, imputed)
    assert write_imputed_cohort(source, str(tmp_path / "i.zarr"), values, imputed, overwrite=True).imputed.values.sum() \
        == imputed.sum()
