"""The resident cohort view: populations, folds, and a cache that notices a rewritten store."""
import numpy as np
import pytest

from impumae.data.synthetic import build_synthetic
from impumae.data.cohort_view import REFIT, Population, load_cohort_arrays, parse_fold, population


def test_a_store_rewritten_at_the_same_url_is_read_again(tmp_path):
    url = str(tmp_path / "cohort.zarr")
    build_synthetic(url, n_patients=60, seed=0, progress=False)
    first = load_cohort_arrays(url, ("rna",))
    assert load_cohort_arrays(url, ("rna",)) is first  # served from memory while unchanged
    build_synthetic(url, n_patients=80, seed=1, overwrite=True, progress=False)
    second = load_cohort_arrays(url, ("rna",))
    assert second is not first and len(second.ids) == 80 and second.fingerprint != first.fingerprint


def test_the_same_store_rebuilt_within_one_second_is_read_again(tmp_path):
    """Same URL, same size, same creation second: the store's build id still tells them apart."""
    url = str(tmp_path / "cohort.zarr")
    build_synthetic(url, n_patients=60, seed=0, progress=False)
    first = load_cohort_arrays(url, ("rna",))
    build_synthetic(url, n_patients=60, seed=1, overwrite=True, progress=False)
    second = load_cohort_arrays(url, ("rna",))
    assert second is not first and second.fingerprint != first.fingerprint
    assert not np.array_equal(np.nan_to_num(second.arrays["rna"]), np.nan_to_num(first.arrays["rna"]))


def test_populations_and_folds(tmp_path):
    url = str(tmp_path / "cohort.zarr")
    build_synthetic(url, n_patients=60, seed=2, progress=False)
    ca = load_cohort_arrays(url, ("rna", "dna"))
    subset = ("rna", "dna")
    assert not np.isin(ca.train_indices(REFIT), ca.holdout_indices()).any()
    assert not np.intersect1d(ca.train_indices(0), ca.validation_indices(0)).size
    everyone = np.arange(len(ca.ids))
    anchor = population(ca, subset, everyone, Population.ANCHOR)
    assert ca.present["rna"][anchor].all() and len(anchor) == ca.present["rna"].sum()
    assert np.array_equal(population(ca, subset, everyone, "anchor"), anchor)  # the value names it too
    both = population(ca, subset, everyone, Population.ALL_PRESENT)
    assert (ca.present["rna"][both] & ca.present["dna"][both]).all()
    with pytest.raises(ValueError, match="unknown population"):
        population(ca, subset, everyone, "everyone")


def test_parse_fold():
    assert parse_fold("refit") == REFIT and parse_fold(" 2") == 2
    for bad in ("-1", "x"):
        with pytest.raises(ValueError, match="--fold"):
            parse_fold(bad)
