"""The pan-cancer builder: the real table's patients, labels and presence; absent samples cost no bytes."""
import os

import numpy as np
import pandas as pd
import pytest

from impumae.data import pancancer
from impumae.data.store import Cohort
from impumae.data.store.shards import _EMPTY_INT


@pytest.fixture(scope="module")
def table(shared_data):
    return pancancer.read_table(shared_data / pancancer.TABLE)


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("pancancer") / "pc.zarr")
    return pancancer.build_pancancer(url, shared_data / pancancer.TABLE, n_patients=90, seed=0, scale="tiny",
                                     progress=False, shard_patients=16)


def test_the_table_gives_real_ids_labels_projects_and_presence(table, shared_data):
    assert len(table) == 10_082 and table.index.is_unique and table["project"].nunique() == 33
    assert table["has_rna"].sum() == 8_984 and table["has_dna"].sum() == 9_298 and table["has_wsi"].sum() == 8_565
    # the MultiSurv labels hold the same time and event for every one of these patients
    multisurv = pd.read_csv(shared_data / "multisurv_pancancer_labels_dnam_probes" / "labels.tsv.gz", sep="\t")
    multisurv = multisurv.set_index("submitter_id").add_suffix("_ms")
    joined = table.join(multisurv, how="inner")
    assert len(joined) == len(table)
    assert (joined["event"] == joined["event_ms"]).all() and (joined["project"] == joined["project_id_ms"]).all()
    positive = joined["time_ms"] > 0
    assert np.allclose(joined["time"][positive], joined["time_ms"][positive], atol=1e-5)
    assert (table["time"] > 0).all()  # 117 zero times are one day


def test_the_risk_score_orders_early_deaths_first():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    event = np.array([1, 1, 0, 1, 0])
    score = pancancer.risk_score(time, event)
    assert score[0] > score[1] > score[3] and abs(score.mean()) < 1e-9


def test_the_store_keeps_each_patients_presence_labels_and_project(store, table):
    present, labels = store.present, store.labels
    rows = table.loc[labels.index]
    assert (present["rna"].to_numpy() == rows["has_rna"].to_numpy()).all()
    assert (present["dna"].to_numpy() == rows["has_dna"].to_numpy()).all()
    assert (present["wsi"].to_numpy() == rows["has_wsi"].to_numpy()).all()
    assert np.allclose(labels["time"], rows["time"]) and (labels["event"] == rows["event"]).all()
    assert (labels["project"] == rows["project"]).all() and "true_risk" not in labels
    assert "stratified" in store.splits.attrs["source"] and store.modalities == list(pancancer.MODALITIES)
    for i in np.flatnonzero(~present["wsi"].to_numpy())[:3]:  # an absent sample reads as the fill value
        assert store.read_patient(int(i))["wsi"] is None
        assert (store.read("wsi", [int(i)]) == 0).all()


def test_an_absent_patient_adds_no_array_bytes(store):
    """Every shard file of a modality holds exactly its present patients' chunks plus the index:
    an absent sample's chunk is not written (zarr skips an all-fill chunk, NaN or 0 alike)."""
    present = store.present
    for m in ("rna", "dna", "wsi"):
        reader = store._reader(m)
        assert reader is not None
        for k in range(reader.n_shards):
            rows = np.arange(k * reader.shard_rows, min((k + 1) * reader.shard_rows, len(store)))
            has = present[m].to_numpy()[rows]
            path = reader._file(k)
            if not has.any():
                assert not os.path.exists(path)  # a shard of absent patients is no file at all
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                index = reader._index(k, fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            empty = (index[:, 0] == _EMPTY_INT).reshape(reader.shard_rows, reader.per_row)[:len(rows)]
            assert (empty.all(axis=1) == ~has).all() and not empty[has].any()
            stored = index[index[:, 0] != _EMPTY_INT, 1].sum()
            assert size == stored + reader.index_nbytes


def test_the_cli_subcommand_builds_it(shared_data, tmp_path):
    from experiments.build_cohort import main

    out = tmp_path / "cli.zarr"
    assert main(["pancancer", "--shared", str(shared_data), "--patients", "20", "--scale", "tiny",
                 "--out", str(out), "--quiet", "--folds", "2"]) == 0
    cohort = Cohort.open(str(out))
    assert len(cohort) == 20 and cohort.provenance["source"] == "pancancer-synthetic"
