"""Parsers of raw TCGA/BraTS formats, on tiny fixtures built here in the documented formats
(and on the real MRI and H&E examples in ../shared/data when present).

The ``write_*`` builders are also used by ``test_raw_build.py``.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage import io

from impumae.data.raw.common import RawFileError
from impumae.data.raw.dnam_sesame import SesameParser, read_betas, read_probe_list
from impumae.data.raw.mri_brats import BratsParser, crop_centred, load_volume
from impumae.data.raw.rna_star import StarParser, majority_gene_model, read_star_counts
from impumae.data.raw.wsi_tiles import PatchParser, informative_pixels, saturation_value, tissue_mask

DATA = Path("../shared/data")
MRI_DIR = DATA / "tcga_lgg_mri_brainlesion"
HE_DIR = DATA / "tcga_gbmlgg_he_rois_pathomicfusion" / "imgs"
PROBES = DATA / "multisurv_pancancer_labels_dnam_probes" / "DNAm_probes.tsv"

STAR_HEADER = ["gene_id", "gene_name", "gene_type", "unstranded", "stranded_first", "stranded_second",
               "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded"]
GENES = [("ENSG00000000003.15", "TSPAN6", "protein_coding"), ("ENSG00000000005.6", "TNMD", "protein_coding"),
         ("ENSG00000000419.13", "DPM1", "protein_coding"), ("ENSG00000000457.14", "SCYL3", "protein_coding"),
         ("ENSG00000000938.13", "FGR", "protein_coding"), ("ENSG00000002586.20_PAR_Y", "CD99", "protein_coding"),
         ("ENSG00000223972.5", "DDX11L1", "transcribed_unprocessed_pseudogene"), ("ENSG00000227232.5", "WASH7P", "lncRNA")]
CODING = [g for g, _, t in GENES if t == "protein_coding"]


# ---------------------------------------------------------------------------------------------
# builders (documented formats)
# ---------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def write_star(path: Path, fpkm_uq, genes=GENES, gene_model="GENCODE v36", gz=False, shuffle_seed=None) -> Path:
    """A GDC STAR augmented gene-counts table: comment line, header, four N_* rows, one row per gene."""
    lines = [f"# gene-model: {gene_model}", "\t".join(STAR_HEADER)]
    lines += [f"{n}\t\t\t{c}\t{c}\t{c}\t\t\t" for n, c in (("N_unmapped", 2112), ("N_multimapping", 4851),
                                                         ("N_noFeature", 1234), ("N_ambiguous", 987))]
    rows = [f"{g}\t{name}\t{kind}\t{10 * i}\t{5 * i}\t{5 * i}\t{v / 3:.4f}\t{v / 2:.4f}\t{v:.4f}"
            for i, ((g, name, kind), v) in enumerate(zip(genes, fpkm_uq))]
    if shuffle_seed is not None:
        rows = list(np.random.default_rng(shuffle_seed).permutation(rows))
    return _write_text(path, "\n".join(lines + rows) + "\n", gz)


def write_betas(path: Path, betas: dict, gz=False) -> Path:
    """A SeSAMe level-3 betas file: probe id and beta, no header, NA for missing."""
    text = "".join(f"{p}\t{'NA' if np.isnan(b) else f'{b:.6f}'}\n" for p, b in betas.items())
    return _write_text(path, text, gz)


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_case(root: Path, case: str, image: np.ndarray, seg: np.ndarray, zooms=(1.0, 1.0, 1.0),
               sequence="t1c") -> Path:
    """A BraTS-style case folder ``<case>/<case>-{sequence,seg}.nii.gz``."""
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), folder / f"{case}-{sequence}.nii.gz")
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), affine), folder / f"{case}-seg.nii.gz")
    return folder


def brain_with_tumour(shape=(40, 40, 30), centre=(25, 12, 15), radius=4, seed=0):
    """A noisy 'brain' (non-zero ellipsoid, zero background) and a spherical tumour mask."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    middle = (np.array(shape) - 1) / 2
    brain = sum(((g - m) / (s / 2.2)) ** 2 for g, m, s in zip(grid, middle, shape)) <= 1
    tumour = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2
    image = np.where(brain, rng.normal(500, 50, shape), 0) + np.where(tumour, 400, 0)
    return np.clip(image, 0, None), (tumour & brain).astype(np.uint8)


def he_like_image(height=600, width=800, tissue_width=None, seed=0) -> np.ndarray:
    """Pink 'tissue' with dark purple 'nuclei' on the left, white glass background on the right."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 240, np.uint8)
    tissue_width = width // 2 if tissue_width is None else tissue_width
    image[:, :tissue_width] = (230, 150, 190)
    for _ in range(height * tissue_width // 2000):
        y, x = rng.integers(0, height), rng.integers(0, tissue_width)
        image[max(0, y - 3):y + 3, max(0, x - 3):min(tissue_width, x + 3)] = (90, 30, 120)
    noise = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# RNA: STAR gene counts
# ---------------------------------------------------------------------------------------------
def test_star_reads_protein_coding_fpkm_uq_plain_and_gzipped(tmp_path):
    values = [1.5, 0.0, 12.25, 3.0, 7.5, 0.0, 99.0, 42.0]
    plain = write_star(tmp_path / "a.rna_seq.augmented_star_gene_counts.tsv", values)
    gz = write_star(tmp_path / "b.rna_seq.augmented_star_gene_counts.tsv.gz", values, gz=True)
    model, series = read_star_counts(plain)
    assert model == "GENCODE v36"
    assert list(series.index) == CODING  # no N_* rows, no lncRNA/pseudogene
    np.testing.assert_allclose(series.to_numpy(), values[:6], atol=1e-4)
    parser = StarParser.from_first_file(plain)
    assert parser.feature_names == CODING and parser.value_type == "fpkm_uq"
    np.testing.assert_array_equal(parser(plain), parser(gz))
    assert parser(plain).dtype == np.float32


def test_star_rows_in_another_order_follow_the_cohort_gene_order(tmp_path):
    values = np.arange(len(GENES), dtype=float) + 1
    parser = StarParser.from_first_file(write_star(tmp_path / "first.tsv", values))
    shuffled = write_star(tmp_path / "shuffled.tsv", values, shuffle_seed=3)
    np.testing.assert_allclose(parser(shuffled), values[:6])


def test_star_from_another_gene_model_is_rejected(tmp_path):
    values = np.ones(len(GENES))
    parser = StarParser.from_first_file(write_star(tmp_path / "v36.tsv", values))
    with pytest.raises(RawFileError, match="gene model 'GENCODE v22' differs"):
        parser(write_star(tmp_path / "v22.tsv", values, gene_model="GENCODE v22"))
    other_genes = GENES[:5] + [("ENSG00000999999.1", "NEW", "protein_coding")] + GENES[6:]
    with pytest.raises(RawFileError, match=r"gene set differs .*\(1 missing, 1 extra\)"):
        parser(write_star(tmp_path / "other_set.tsv", values, genes=other_genes))


def test_star_gene_model_is_the_majority_whichever_file_comes_first(tmp_path):
    values = np.arange(len(GENES), dtype=float)
    odd = write_star(tmp_path / "a_v22.tsv", values, gene_model="GENCODE v22")
    good = [write_star(tmp_path / f"b{i}_v36.tsv", values + i) for i in range(2)]
    parser = StarParser.for_cohort([odd, *good])
    assert parser.gene_model == "GENCODE v36" and parser.gene_ids == tuple(CODING)
    np.testing.assert_allclose(parser(good[1]), values[:6] + 1)
    with pytest.raises(RawFileError, match=r"a_v22\.tsv: gene model 'GENCODE v22' differs from the cohort's 'GENCODE v36'"):
        parser(odd)
    assert StarParser.for_cohort([odd, *good], gene_model="GENCODE v22").gene_model == "GENCODE v22"
    assert StarParser.for_cohort([odd, *good], gene_model="GENCODE v40") is None  # no file of that model
    with pytest.raises(ValueError, match=r"no majority \('GENCODE v22': 1 files, 'GENCODE v36': 1 files\).*--rna-gene-model"):
        majority_gene_model([odd, good[0]])


def test_star_truncated_gzip_and_wrong_table_are_rejected(tmp_path):
    values = np.ones(len(GENES))
    parser = StarParser.from_first_file(write_star(tmp_path / "good.tsv", values))
    big = write_star(tmp_path / "big.tsv.gz", values, genes=GENES * 1, gz=True)
    truncate(big, 0.6)
    with pytest.raises(RawFileError, match="truncated or corrupt"):
        parser(big)
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("# gene-model: GENCODE v36\ngene_id\tcount\nENSG1\t3\n")
    with pytest.raises(RawFileError, match="no column 'gene_type'"):
        parser(wrong)


def test_star_with_an_unversioned_gene_list(tmp_path):
    values = np.arange(len(GENES), dtype=float)
    path = write_star(tmp_path / "a.tsv", values)
    parser = StarParser.from_first_file(path, gene_list=("ENSG00000000938", "ENSG00000000003"))
    np.testing.assert_allclose(parser(path), [4.0, 0.0])
    missing = StarParser.from_first_file(path, gene_list=("ENSG00000000003", "ENSG00000000000"))
    with pytest.raises(RawFileError, match="1 of 2 listed genes absent"):
        missing(path)


# ---------------------------------------------------------------------------------------------
# DNAm: SeSAMe betas
# ---------------------------------------------------------------------------------------------
def test_betas_keep_na_and_absent_probes_as_nan_in_list_order(tmp_path):
    path = write_betas(tmp_path / "x.methylation_array.sesame.level3betas.txt",
                       {"cg3": 0.25, "cg1": np.nan, "cg9": 0.5, "rs10": 0.9})
    betas = read_betas(path)
    assert np.isnan(betas["cg1"]) and betas["cg3"] == 0.25
    parser = SesameParser(("cg1", "cg2", "cg3", "cg9"))
    out = parser(path)
    assert out.dtype == np.float32 and parser.value_type == "beta"
    np.testing.assert_array_equal(np.isnan(out), [True, True, False, False])
    np.testing.assert_allclose(out[2:], [0.25, 0.5])
    gz = write_betas(tmp_path / "x.txt.gz", {"cg3": 0.25, "cg1": np.nan, "cg9": 0.5}, gz=True)
    np.testing.assert_array_equal(parser(gz), out)


def test_betas_bad_files_are_rejected_with_a_reason(tmp_path):
    parser = SesameParser(("cg1", "cg2"))
    with pytest.raises(RawFileError, match="shares no probe"):
        parser(write_betas(tmp_path / "other.txt", {"cg7": 0.1, "cg8": 0.2}))
    with pytest.raises(RawFileError, match=r"probe cg2: beta 1.5 outside \[0, 1\]"):
        parser(write_betas(tmp_path / "range.txt", {"cg1": 0.1, "cg2": 1.5}))
    header = tmp_path / "header.txt"
    header.write_text("probe\tbeta\ncg1\t0.1\n")
    with pytest.raises(RawFileError, match="not a number"):
        parser(header)
    corrupt = write_betas(tmp_path / "corrupt.txt.gz", {f"cg{i}": 0.5 for i in range(5000)}, gz=True)
    with pytest.raises(RawFileError, match="truncated or corrupt"):
        parser(truncate(corrupt, 0.5))


def test_betas_file_with_only_na_is_rejected(tmp_path):
    parser = SesameParser(("cg1", "cg2"))
    with pytest.raises(RawFileError, match=r"all_na\.txt: no beta value for any of the 2 listed probes"):
        parser(write_betas(tmp_path / "all_na.txt", {"cg1": np.nan, "cg2": np.nan, "cg3": np.nan}))
    with pytest.raises(RawFileError, match=r"no beta value for any of the 2 listed probes \(1 of the file's 2 values"):
        parser(write_betas(tmp_path / "listed_na.txt", {"cg1": np.nan, "cg3": 0.5}))


@pytest.mark.skipif(not PROBES.exists(), reason="shared probe list absent")
def test_real_probe_list_has_25978_probes(tmp_path):
    probes = read_probe_list(PROBES)
    assert len(probes) == 25_978 and probes[0].startswith("cg")
    parser = SesameParser(probes)
    # an HM27-like file: a subset of the probes, plus one NA
    path = write_betas(tmp_path / "hm27.txt", {probes[0]: 0.3, probes[10]: np.nan, "cgXXXX": 0.1})
    out = parser(path)
    assert out.shape == (25_978,) and np.isfinite(out).sum() == 1 and out[0] == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------
# MRI: BraTS case folders
# ---------------------------------------------------------------------------------------------
def _tumour_centroid_of_crop(tmp_path, parser, case_dir):
    """The tumour's centroid inside the parser's crop, from the seg cropped the same way."""
    out = parser(case_dir)
    tumour = out > 1.0  # the tumour is 400 brighter: several std above the crop's mean
    return out, np.array(ndimage.center_of_mass(tumour))


def test_mri_crop_is_centred_on_the_tumour_and_zscored(tmp_path):
    image, seg = brain_with_tumour(centre=(25, 12, 15))
    case = write_case(tmp_path, "TCGA-AA-0001", image, seg)
    parser = BratsParser("t1c", size=16)
    out, centroid = _tumour_centroid_of_crop(tmp_path, parser, case)
    assert out.shape == (16, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(centroid, [8, 8, 8], atol=1.0)
    nonzero = out[out != 0]
    assert abs(nonzero.mean()) < 1e-4 and nonzero.std() == pytest.approx(1, abs=1e-4)


def test_mri_crop_near_the_edge_is_zero_padded():
    volume = np.arange(1, 1001, dtype=np.float32).reshape(10, 10, 10)
    crop = crop_centred(volume, (0, 9, 5), 6)
    assert crop.shape == (6, 6, 6)
    assert (crop[:3] == 0).all() and (crop[:, 4:] == 0).all()  # before x=0 and past y=9
    assert crop[3, 3, 3] == volume[0, 9, 5]


def test_mri_not_at_1mm_is_resampled_first(tmp_path):
    """2 mm voxels: the same tumour (radius 8 mm) must come out 1 mm-sized and centred."""
    image, seg = brain_with_tumour(shape=(24, 24, 20), centre=(14, 8, 10), radius=4)
    case = write_case(tmp_path, "TCGA-AA-0002", image, seg, zooms=(2.0, 2.0, 2.0))
    out, centroid = _tumour_centroid_of_crop(tmp_path, BratsParser("t1c", size=24), case)
    np.testing.assert_allclose(centroid, [12, 12, 12], atol=1.5)
    radius_voxels = ((out > 1.0).sum() * 3 / (4 * np.pi)) ** (1 / 3)
    assert 6 < radius_voxels < 10  # ~8 voxels of 1 mm, not ~4


def test_mri_bad_cases_are_rejected_with_a_reason(tmp_path):
    image, seg = brain_with_tumour()
    parser = BratsParser("t1c", size=16)
    with pytest.raises(RawFileError, match=r"segmentation shape \(40, 40, 29\) differs .* \(40, 40, 30\)"):
        parser(write_case(tmp_path, "shape", image, seg[:, :, :-1]))
    with pytest.raises(RawFileError, match="empty tumour mask"):
        parser(write_case(tmp_path, "empty", image, np.zeros_like(seg)))
    corrupt = write_case(tmp_path, "corrupt", image, seg)
    truncate(corrupt / "corrupt-t1c.nii.gz", 0.5)
    with pytest.raises(RawFileError, match="corrupt or truncated NIfTI") as error:
        parser(corrupt)
    assert error.value.file.endswith("corrupt-t1c.nii.gz")
    with pytest.raises(RawFileError, match=r"no '\*-t1n.nii.gz' file"):
        BratsParser("t1n", 16)(write_case(tmp_path, "noseq", image, seg))


@pytest.mark.skipif(not MRI_DIR.exists(), reason="shared MRI examples absent")
@pytest.mark.parametrize("case", ["TCGA-DU-7294", "TCGA-FG-6692"])
def test_real_brats_mri_gives_a_zscored_64_cube_around_the_tumour(case):
    out = BratsParser("t1c", 64)(MRI_DIR / case)
    assert out.shape == (64, 64, 64) and out.dtype == np.float32 and np.isfinite(out).all()
    nonzero = out[out != 0]
    assert nonzero.size > 0.3 * out.size
    assert abs(nonzero.mean()) < 1e-3 and nonzero.std() == pytest.approx(1, abs=1e-3)
    # the tumour, cropped with the same rule from the canonical seg, is centred
    seg = np.asarray(nib.as_closest_canonical(load_volume(MRI_DIR / case / f"{case}-seg.nii.gz")).dataobj) > 0
    seg_crop = crop_centred(seg.astype(np.float32), ndimage.center_of_mass(seg), 64)
    assert seg_crop.sum() == seg.sum()  # the whole tumour fits in 64^3
    np.testing.assert_allclose(ndimage.center_of_mass(seg_crop), [32, 32, 32], atol=1.0)


# ---------------------------------------------------------------------------------------------
# WSI: patches from region images and slides
# ---------------------------------------------------------------------------------------------
def test_saturation_and_value_match_scikit_image_hsv():
    from skimage.color import rgb2hsv
    rgb = np.random.default_rng(0).integers(0, 256, (50, 40, 3)).astype(np.uint8)
    rgb[0, 0] = 0  # black: saturation 0
    saturation, value = saturation_value(rgb)
    hsv = rgb2hsv(rgb) * 255
    np.testing.assert_allclose(saturation, hsv[..., 1], atol=1e-3)
    np.testing.assert_allclose(value, hsv[..., 2], atol=1e-3)


def test_tissue_mask_finds_the_stained_half():
    image = he_like_image(200, 300)
    mask = tissue_mask(image)
    assert mask[:, :140].mean() > 0.95 and mask[:, 160:].mean() < 0.05


def test_patches_come_from_tissue_best_first_and_deterministic(tmp_path):
    path = tmp_path / "TCGA-AA-0001-01Z-00-DX1.png"
    image = he_like_image(600, 800)
    io.imsave(path, image, check_contrast=False)
    parser = PatchParser(n_patches=4, size=64, n_candidates=200, seed=1)
    first, again = parser.select(path), parser.select(path)
    np.testing.assert_array_equal(first.positions, again.positions)
    assert first.patches.shape == (4, 64, 64, 3) and first.patches.dtype == np.uint8
    assert (first.positions[:, 1] + 32 <= 400 + 8).all()  # patch centres on the tissue half
    assert (np.diff(first.scores) <= 0).all()
    for (y, x), patch, score in zip(first.positions, first.patches, first.scores):
        np.testing.assert_array_equal(patch, image[y:y + 64, x:x + 64])
        assert informative_pixels(patch).sum() == score
    assert not np.array_equal(PatchParser(4, 64, 200, seed=2).select(path).positions, first.positions)


def test_patches_padded_when_tissue_is_tiny_and_blank_slide_has_no_tissue(tmp_path):
    tiny = tmp_path / "tiny.png"
    io.imsave(tiny, he_like_image(64, 400, tissue_width=36), check_contrast=False)
    selection = PatchParser(n_patches=10, size=64, n_candidates=50).select(tiny)
    assert selection.n_candidates < 10 and selection.patches.shape == (10, 64, 64, 3)
    np.testing.assert_array_equal(selection.patches[selection.n_candidates], selection.patches[0])
    blank = tmp_path / "blank.png"
    io.imsave(blank, np.full((300, 300, 3), 240, np.uint8) + np.random.default_rng(0).integers(0, 3, (300, 300, 3), dtype=np.uint8),
              check_contrast=False)
    with pytest.raises(RawFileError, match="no tissue"):
        PatchParser(n_patches=2, size=64)(blank)
    with pytest.raises(RawFileError, match="smaller than one 256x256 patch"):
        PatchParser()(tiny)
    corrupt = tmp_path / "corrupt.png"
    io.imsave(corrupt, he_like_image(300, 300), check_contrast=False)
    truncate(corrupt, 0.3)
    with pytest.raises(RawFileError, match="unreadable image"):
        PatchParser(n_patches=2, size=64)(corrupt)


def test_pyramidal_tiff_slide_gives_the_same_patches_as_the_region_image(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from skimage.transform import downscale_local_mean
    image = he_like_image(1200, 1200, tissue_width=700)
    slide = tmp_path / "TCGA-AA-0003-01Z-00-DX1.tif"
    with tifffile.TiffWriter(slide) as tif:
        tif.write(image, subifds=1, tile=(256, 256), photometric="rgb")
        tif.write(downscale_local_mean(image, (2, 2, 1)).astype(np.uint8), subfiletype=1, tile=(256, 256),
                  photometric="rgb")
    region = tmp_path / "TCGA-AA-0003-01Z-00-DX1.png"
    io.imsave(region, image, check_contrast=False)
    parser = PatchParser(n_patches=3, size=128, n_candidates=100)
    from_slide, from_region = parser.select(slide), parser.select(region)
    np.testing.assert_array_equal(from_slide.positions, from_region.positions)
    np.testing.assert_array_equal(from_slide.patches, from_region.patches)


@pytest.mark.skipif(not HE_DIR.exists(), reason="shared H&E examples absent")
def test_real_he_rois_give_10_deterministic_256_patches():
    parser = PatchParser()
    rois = sorted(HE_DIR.glob("*.png"))
    assert len(rois) == 3
    for i, roi in enumerate(rois):
        selection = parser.select(roi)
        assert selection.patches.shape == (10, 256, 256, 3) and selection.patches.dtype == np.uint8
        assert selection.n_candidates > 100 and (np.diff(selection.scores) <= 0).all()
        if i == 0:  # same selection in a second run
            np.testing.assert_array_equal(parser.select(roi).positions, selection.positions)
        image = io.imread(roi)[..., :3]
        y, x = selection.positions[0]
        np.testing.assert_array_equal(selection.patches[0], image[y:y + 256, x:x + 256])
        # the best patch is more informative than the image's average 256x256 window
        assert selection.scores[0] > informative_pixels(image).mean() * 256 * 256
