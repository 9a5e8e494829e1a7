"""The data path that scales: present rows only, unused modalities never read, streamed = resident."""
import numpy as np
import pytest
import torch

from impumae.data.cohort_view import (Population, ResidentRows, StreamedBatchable, StreamedRows, fit_transforms,
                                      iter_batches, load_cohort_arrays, make_batchable, population)
from impumae.data.store import Cohort
from impumae.data.synthetic import build_synthetic
from impumae.model import MAEConfig, MultimodalMAE
from impumae.train.finetune_loop import FinetuneConfig, finetune, predict_logits
from impumae.train.pretrain_loop import ResidentData, StreamedData, streamed_patch_means, training_patch_means

SUBSET = ("rna", "mri", "wsi", "clinical")
TINY = dict(width=32, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64)
STREAM_IMAGES_MB = "0.05"  # 52 kB: tiny rna (~40 kB of present rows) stays resident; mri and wsi are streamed


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("streaming") / "cohort.zarr")
    build_synthetic(path, n_patients=72, seed=3, progress=False, shard_patients=16)
    return path


def views(url, monkeypatch):
    """(resident view, streamed view) of the same store."""
    monkeypatch.setenv("IMPUMAE_RESIDENT_MB", "1024")
    resident = load_cohort_arrays(url, SUBSET)
    monkeypatch.setenv("IMPUMAE_RESIDENT_MB", STREAM_IMAGES_MB)
    streamed = load_cohort_arrays(url, SUBSET)
    return resident, streamed


def test_the_path_is_chosen_per_modality_by_size(url, monkeypatch):
    resident, streamed = views(url, monkeypatch)
    assert all(isinstance(resident.arrays[m], ResidentRows) for m in SUBSET)
    assert isinstance(streamed.arrays["rna"], ResidentRows) and isinstance(streamed.arrays["clinical"], ResidentRows)
    assert isinstance(streamed.arrays["mri"], StreamedRows) and isinstance(streamed.arrays["wsi"], StreamedRows)
    for m in ("mri", "wsi"):
        assert streamed.arrays[m].nbytes == 0 and streamed.arrays[m].rows_read == 0  # nothing read up front
    # a resident modality holds its present rows only
    for m in SUBSET:
        rows = resident.arrays[m]
        assert rows.values.shape[0] == resident.present[m].sum() == rows.rows_read


def test_rows_read_the_same_values_as_the_dense_store(url, monkeypatch):
    resident, streamed = views(url, monkeypatch)
    cohort = Cohort.open(url)
    order = np.random.default_rng(0).permutation(len(cohort))[:40]
    order = np.concatenate([order, order[:5]])  # repeats too
    for m in SUBSET:
        dense = cohort.load(m)[order]
        for view in (resident, streamed):
            np.testing.assert_array_equal(view.arrays[m][order], dense)
    np.testing.assert_array_equal(np.asarray(resident.arrays["rna"]), cohort.load("rna"))


def test_a_worker_reads_only_present_rows_of_the_modalities_it_uses(url, monkeypatch):
    """Through the loader: every read of the store asks for present rows of a used modality, and the
    whole-modality load is never called."""
    reads = []
    original = Cohort.read

    def spy(self, modality, indices):
        reads.append((modality, np.asarray(indices).copy()))
        return original(self, modality, indices)

    def no_load(self, modality, threads=None):
        raise AssertionError(f"whole modality {modality!r} loaded")

    monkeypatch.setattr(Cohort, "read", spy)
    monkeypatch.setattr(Cohort, "load", no_load)
    monkeypatch.setenv("IMPUMAE_RESIDENT_MB", STREAM_IMAGES_MB)
    subset = ("rna", "wsi")
    ca = load_cohort_arrays(url, subset)
    rows = population(ca, subset, ca.train_indices(0), Population.PRETRAIN)
    transforms = fit_transforms(ca, subset, ca.train_indices(0))
    data = StreamedData(make_batchable(ca, subset, transforms, rows))
    batches = list(data.batches(8, seed=0, epoch=0))
    assert sum(len(next(iter(x.values()))) for x, _ in batches) == len(rows)
    assert {m for m, _ in reads} == set(subset)
    for m, indices in reads:
        assert ca.present[m][indices].all(), f"{m}: an absent row was read"
    wsi_rows = np.concatenate([i for m, i in reads if m == "wsi"])
    assert len(wsi_rows) == ca.present["wsi"][rows].sum()  # each present slide once per epoch, none up front


def test_streamed_pretraining_batches_equal_the_resident_ones(url, monkeypatch):
    resident, streamed = views(url, monkeypatch)
    tokenised = ("rna", "mri", "wsi")
    rows = population(resident, tokenised, resident.train_indices(1), Population.PRETRAIN)
    transforms = fit_transforms(resident, tokenised, resident.train_indices(1))
    dense = make_batchable(resident, tokenised, transforms, rows)
    lazy = make_batchable(streamed, tokenised, transforms, rows)
    assert isinstance(lazy, StreamedBatchable) and not isinstance(dense, StreamedBatchable)
    a, b = ResidentData(dense.x, dense.present), StreamedData(lazy)
    assert len(a) == len(b)
    for epoch, rank in ((0, 0), (3, 1)):
        got = list(b.batches(7, seed=5, epoch=epoch, rank=rank, world_size=2))
        want = list(a.batches(7, seed=5, epoch=epoch, rank=rank, world_size=2))
        assert len(got) == len(want)
        for (xg, pg), (xw, pw) in zip(got, want):
            for m in tokenised:
                assert torch.equal(xg[m], xw[m]) and torch.equal(pg[m], pw[m])
    mae = MultimodalMAE(transforms.output_specs(resident.specs), MAEConfig(**TINY))
    means, chunked = training_patch_means(mae, a.x, a.present), streamed_patch_means(mae, b, chunk=5)
    for m in tokenised:
        torch.testing.assert_close(chunked[m], means[m], rtol=1e-5, atol=1e-6)


def test_streamed_finetuning_equals_resident_finetuning(url, monkeypatch):
    resident, streamed = views(url, monkeypatch)
    subset = ("wsi", "rna", "clinical")
    train_idx = resident.train_indices(0)
    transforms = fit_transforms(resident, subset, train_idx)
    train_rows = population(resident, subset, train_idx, Population.FINETUNE)
    val_rows = population(resident, subset, resident.validation_indices(0), Population.VALIDATE)
    torch.manual_seed(0)
    specs = {m: s for m, s in transforms.output_specs(resident.specs).items() if m != "clinical"}
    mae = MultimodalMAE(specs, MAEConfig(**TINY))
    cfg = FinetuneConfig(epochs=2, stop_after=1, batch_size=8, lr=1e-3, seed=1)
    results = []
    for view in (resident, streamed):
        train = make_batchable(view, subset, transforms, train_rows)
        val = make_batchable(view, subset, transforms, val_rows)
        result = finetune(mae, train, val, cfg)
        results.append((result.history, predict_logits(result.model, val, batch_size=5)))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_prefetch_keeps_the_order_and_the_values(url, monkeypatch):
    _, streamed = views(url, monkeypatch)
    rows = np.flatnonzero(streamed.present["wsi"])
    transforms = fit_transforms(streamed, ("wsi",), rows)
    data = make_batchable(streamed, ("wsi",), transforms, rows)
    groups = [np.arange(i, min(i + 4, len(rows))) for i in range(0, len(rows), 4)][::-1]
    for prefetch in (0, 3):
        for got_rows, part in iter_batches(data, groups, prefetch=prefetch):
            assert torch.equal(part.x["wsi"], data.take(got_rows).x["wsi"])
