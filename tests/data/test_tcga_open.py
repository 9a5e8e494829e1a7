"""The real open TCGA GBM/LGG cohort built from ../shared/data (skipped when the folder is absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from impumae.data import tcga_open

SHARED = Path("../shared/data")
pytestmark = pytest.mark.skipif(not (SHARED / tcga_open.COHORT_TABLE).exists(), reason="../shared/data is not here")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tcga_open.build_tcga_open(SHARED, tmp_path_factory.mktemp("tcga") / "open.zarr", progress=False)


def test_patients_and_real_missingness(cohort):
    assert len(cohort) == 1104
    assert cohort.present.sum().to_dict() == {"rna": 568, "dna": 249, "mri": 2, "wsi": 3, "mutations": 851,
                                              "clinical": 1104}
    assert cohort.labels["event"].sum() == 616
    assert cohort.labels["project"].value_counts().to_dict() == {"GBM": 592, "LGG": 512}
    assert cohort.specs["rna"].shape == (1544,) and cohort.specs["rna"].n_tokens == 25
    # patches from the feature count (16-32 tokens, at least one feature a token)
    assert cohort.specs["dna"].n_tokens == 14 and cohort.specs["mutations"].n_tokens == 20
    assert cohort.feature_names("rna")[:3] == ["AAK1", "AATK", "ABCB1"]
    assert "MGMT" in cohort.feature_names("dna")


def test_authors_split_is_kept(cohort):
    table = pd.read_csv(SHARED / tcga_open.COHORT_TABLE).set_index("submitter_id").loc[cohort.patient_ids]
    splits = cohort.splits
    assert splits["holdout"].sum() == 218
    np.testing.assert_array_equal(splits["holdout"].to_numpy(), (table["group"] == "test").to_numpy())
    train = ~splits["holdout"].to_numpy()
    np.testing.assert_array_equal(splits["fold"].to_numpy()[train], table["splits"].to_numpy()[train].astype(int))
    assert (splits["fold"].to_numpy()[~train] == -1).all()


def test_known_patient_values(cohort):
    patient = "TCGA-DU-7294"
    assert cohort.labels.at[patient, "time"] == pytest.approx(7.86, abs=0.005)
    assert cohort.labels.at[patient, "event"] == 0
    arrays = cohort.read_patient(patient)
    source = pd.read_csv(SHARED / tcga_open.RNA_TABLE, usecols=["case_id", "EGFR_rnaseq"]).set_index("case_id")
    egfr = cohort.feature_names("rna").index("EGFR")
    expected = source.loc[[patient], "EGFR_rnaseq"].iloc[0]  # one row per slide: take the first
    assert arrays["rna"][egfr] == pytest.approx(float(expected), abs=1e-6)
    clinical = dict(zip(cohort.feature_names("clinical"), arrays["clinical"]))
    assert 20 < clinical["age_years"] < 80 and clinical["radiation"] in (0.0, 1.0)
    # a DNAm value: MethylMix column TCGA.02.0001, gene MGMT
    dna_source = pd.read_csv(SHARED / tcga_open.DNA_TABLE, index_col=0)
    mgmt = cohort.feature_names("dna").index("MGMT")
    assert cohort.read_patient("TCGA-02-0001")["dna"][mgmt] == pytest.approx(dna_source.at["MGMT", "TCGA.02.0001"], abs=1e-6)


def test_clinical_and_mutations_encoding(cohort):
    clinical = cohort.load("clinical")
    treatments = clinical[:, 1:]
    assert set(np.unique(treatments[~np.isnan(treatments)])) == {0.0, 1.0}
    assert np.isnan(clinical[:, 1]).sum() == 59 and np.isnan(clinical[:, 2]).sum() == 93  # NaN kept as missing
    mutations = cohort.load("mutations")[cohort.present["mutations"].to_numpy()]
    assert set(np.unique(mutations)) == {0.0, 1.0}
    idh1 = cohort.feature_names("mutations").index("IDH1")
    assert 0.3 < mutations[:, idh1].mean() < 0.6


def test_mri_crop_is_centred_on_the_tumour_and_zscored(cohort):
    import nibabel as nib

    for patient in ("TCGA-DU-7294", "TCGA-FG-6692"):
        volume = cohort.read_patient(patient)["mri"]
        assert volume.shape == (64, 64, 64)
        brain = volume != 0
        assert abs(volume[brain].mean()) < 1e-3 and abs(volume[brain].std() - 1) < 1e-3
        # the crop's tumour centroid, from the segmentation cropped the same way, is at the centre
        seg = np.asarray(nib.load(SHARED / tcga_open.MRI_FOLDER / patient / f"{patient}-seg.nii.gz").dataobj)
        marked = np.where(seg > 0, 2.0, 1.0).astype(np.float32)  # after z-scoring: tumour > 0 > rest
        tumour_in_crop = tcga_open.crop_on_tumour(marked, seg) > 0
        assert np.abs(np.argwhere(tumour_in_crop).mean(axis=0) - 31.5).max() < 4


def test_crop_pads_with_zeros_at_the_border():
    volume = np.arange(1, 40**3 + 1, dtype=np.float32).reshape(40, 40, 40)  # non-zero everywhere
    seg = np.zeros_like(volume, dtype=np.uint8)
    seg[0:4, 0:4, 0:4] = 1  # tumour in a corner: the crop leaves the volume
    crop = tcga_open.crop_on_tumour(volume, seg, size=16)
    assert crop.shape == (16, 16, 16)
    assert (crop[:6] == 0).all() and (crop[:, :6] == 0).all()  # padding before the volume's start
    assert (crop[6:, 6:, 6:] != 0).all()
    inside = crop[crop != 0]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-4


def test_wsi_patches_are_the_best_tiles(cohort):
    assert cohort.present["wsi"].sum() == 3
    for patient in ("TCGA-06-0174", "TCGA-26-1442", "TCGA-HT-7470"):
        patches = cohort.read_patient(patient)["wsi"]
        assert patches.shape == (10, 256, 256, 3) and patches.dtype == np.uint8
        assert patches.std() > 10  # real texture, not padding


def test_best_tiles_scores_dark_saturated_pixels_and_breaks_ties_by_index():
    image = np.full((512, 768, 3), 240, dtype=np.uint8)  # 2 x 3 tiles of 256^2, all white (score 0)
    image[256:384, 256:512] = (90, 40, 130)  # tile 4: half purple
    image[0:64, 512:768] = (90, 40, 130)  # tile 2: a quarter of that
    kept = tcga_open.best_tiles(image, n_tiles=4)
    assert kept.shape == (4, 256, 256, 3)
    np.testing.assert_array_equal(kept[0], image[256:512, 256:512])  # tile 4
    np.testing.assert_array_equal(kept[1], image[0:256, 512:768])  # tile 2
    np.testing.assert_array_equal(kept[2], image[0:256, 0:256])  # ties: tile 0, then tile 1
    np.testing.assert_array_equal(kept[3], image[0:256, 256:512])


def test_provenance_names_sources_and_commits(cohort):
    sources = cohort.provenance["sources"]
    assert sources["rna"]["source_commit"] == "3390dc40e15995ba852d7a561faf0e996cf20501"
    assert all(s["source_commit"] for s in sources.values())


def test_missing_folder_is_a_clear_error(tmp_path):
    from impumae.data.store import CohortError

    with pytest.raises(CohortError, match="dataset_with_dna.csv.gz"):
        tcga_open.build_tcga_open(tmp_path, tmp_path / "out.zarr")
