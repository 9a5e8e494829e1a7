"""MRI: BraTS-style case folders ``<case>/<case>-{t1c,t1n,t2w,t2f,seg}.nii.gz``.

A patient's volume: one sequence (default ``t1c``, post-contrast T1 as the authors used) and the
tumour segmentation are read with nibabel and put in the closest canonical (RAS) orientation; a
volume not at 1 mm isotropic is resampled to 1 mm first (trilinear; the segmentation nearest
neighbour onto the same grid); a ``size``^3 crop is centred on the centroid of the tumour
(``seg > 0``), zero-padded where it leaves the volume, and z-scored over its non-zero voxels
(background stays 0). Value type ``zscored``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
from scipy import ndimage

from .common import READ_ERRORS, RawFileError

SEQUENCES = ("t1c", "t1n", "t2w", "t2f")
SEGMENTATION = "seg"
NIFTI_ERRORS = READ_ERRORS + (nib.filebasedimages.ImageFileError,)


def case_file(case_dir: Path, suffix: str) -> Path:
    """The one ``*-<suffix>.nii.gz`` (or ``.nii``) file of a case folder."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise RawFileError(case_dir, "case folder not found")
    found = sorted(case_dir.glob(f"*-{suffix}.nii.gz")) or sorted(case_dir.glob(f"*-{suffix}.nii"))
    if not found:
        raise RawFileError(case_dir, f"no '*-{suffix}.nii.gz' file in the case folder")
    if len(found) > 1:
        raise RawFileError(case_dir, f"{len(found)} '*-{suffix}.nii.gz' files in the case folder: "
                                     f"{', '.join(p.name for p in found)}")
    return found[0]


def load_volume(path: Path) -> nib.Nifti1Image:
    """A 3-D NIfTI image with its data read into memory (so that a truncated file fails here)."""
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except NIFTI_ERRORS as e:
        raise RawFileError(path, f"corrupt or truncated NIfTI ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise RawFileError(path, f"expected a 3-D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return nib.Nifti1Image(data, image.affine, image.header)


def is_1mm_isotropic(image: nib.Nifti1Image, tol: float = 1e-3) -> bool:
    return bool(np.allclose(image.header.get_zooms()[:3], 1.0, atol=tol))


def to_1mm_canonical(image: nib.Nifti1Image, seg: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Image and segmentation arrays in RAS orientation on a 1 mm grid (the image's grid)."""
    same_grid = np.allclose(seg.affine, image.affine, atol=1e-4)
    if is_1mm_isotropic(image):
        image = nib.as_closest_canonical(image)
        seg = nib.as_closest_canonical(seg) if same_grid else nibabel.processing.resample_from_to(seg, image, order=0)
    else:
        image = nibabel.processing.resample_to_output(image, voxel_sizes=(1.0, 1.0, 1.0), order=1)
        seg = nibabel.processing.resample_from_to(seg, image, order=0)
    return np.asarray(image.dataobj, dtype=np.float32), np.asarray(seg.dataobj)


def crop_centred(volume: np.ndarray, centre, size: int) -> np.ndarray:
    """The ``size``^3 block of ``volume`` centred on ``centre`` (voxel coordinates), zero-padded."""
    out = np.zeros((size,) * 3, np.float32)
    start = np.rint(np.asarray(centre, float)).astype(int) - size // 2
    source = tuple(slice(max(s, 0), min(s + size, n)) for s, n in zip(start, volume.shape))
    target = tuple(slice(src.start - s, src.stop - s) for src, s in zip(source, start))
    out[target] = volume[source]
    return out


def zscore_nonzero(volume: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the non-zero voxels; zero voxels (background, padding) stay 0."""
    nonzero = volume != 0
    values = volume[nonzero]
    out = np.zeros_like(volume, dtype=np.float32)
    std = values.std() if values.size else 0.0
    if values.size < 2 or std == 0:
        raise ValueError("fewer than 2 distinct non-zero voxels to z-score")
    out[nonzero] = (values - values.mean()) / std
    return out


@dataclass(frozen=True)
class BratsParser:
    """Turns one BraTS case folder into a z-scored ``size``^3 crop around the tumour (float32)."""

    sequence: str = "t1c"
    size: int = 64
    value_type = "zscored"

    def __post_init__(self):
        if self.sequence not in SEQUENCES:
            raise ValueError(f"MRI sequence {self.sequence!r}: expected one of {SEQUENCES}")

    @property
    def feature_names(self) -> list[str]:
        return []

    @property
    def fingerprint(self) -> dict:
        return {"format": "brats", "sequence": self.sequence, "size": self.size, "spacing_mm": 1.0}

    def __call__(self, case_dir) -> np.ndarray:
        image_path = case_file(case_dir, self.sequence)
        seg_path = case_file(case_dir, SEGMENTATION)
        image, seg = load_volume(image_path), load_volume(seg_path)
        if image.shape != seg.shape:
            raise RawFileError(seg_path, f"segmentation shape {seg.shape} differs from the {self.sequence} "
                                         f"image shape {image.shape}")
        image_data, seg_data = to_1mm_canonical(image, seg)
        tumour = seg_data > 0
        if not tumour.any():
            raise RawFileError(seg_path, "empty tumour mask (no voxel > 0)")
        crop = crop_centred(image_data, ndimage.center_of_mass(tumour), self.size)
        try:
            return zscore_nonzero(crop)
        except ValueError as e:
            raise RawFileError(image_path, f"tumour crop cannot be z-scored: {e}") from e
