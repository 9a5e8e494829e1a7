"""Histology: the ``n_patches`` most informative ``size``x``size`` patches of a slide or region image.

The method (reference notes, section 2): a thumbnail -> HSV saturation -> median blur -> Otsu
threshold = tissue mask (scikit-image); up to ``n_candidates`` random patches at full resolution
whose centre lies on tissue; each scored by the count of pixels with S > 130 and V < 170 (0-255
scale: saturated, dark = stained nuclei); the ``n_patches`` best are kept.

Choices made here:
- Candidates are drawn from the tissue pixels of the thumbnail (so every candidate's centre is
  tissue), with a random offset inside the thumbnail pixel, then clipped to the image. The random
  generator is seeded with ``seed`` and the file name (without its extension), so the selection is the same in every run,
  worker and patient order. Ties in score are broken by position (top row first, then left).
- Tissue also needs a blurred saturation above ``min_saturation`` (default 20 of 255), so that a
  blank slide, where Otsu would split noise, has no tissue (-> a reason, modality missing).
- Fewer distinct tissue candidates than ``n_patches`` (a tiny tissue fragment): the best ones are
  repeated in score order to fill the ``n_patches`` slots (the patient keeps their histology).

Inputs: region images (PNG/JPEG, read with scikit-image) always; slides (SVS/TIFF pyramids) through
tifffile (a scikit-image dependency; JPEG-compressed slides also need ``imagecodecs``) or openslide
when importable. Value type ``rgb`` (uint8, ``(n_patches, size, size, 3)``).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage import filters, io

from .common import READ_ERRORS, RawFileError

REGION_SUFFIXES = (".png", ".jpg", ".jpeg")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".mrxs", ".vms", ".bif")
SATURATION_MIN, VALUE_MAX = 130, 170  # informative pixel: S > 130 and V < 170 (0-255)


def to_rgb_uint8(pixels: np.ndarray, path) -> np.ndarray:
    """H x W x 3 uint8 from grey, RGB or RGBA (8-bit or 16-bit)."""
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise RawFileError(path, f"expected an RGB image, got shape {pixels.shape}")
    pixels = pixels[..., :3]
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise RawFileError(path, f"expected 8-bit RGB pixels, got {pixels.dtype}")
    return np.ascontiguousarray(pixels)


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB uint8 image on the 0-255 scale (float32).

    The same numbers as ``skimage.color.rgb2hsv(rgb)[..., 1:] * 255`` (V = max channel,
    S = (max - min) / max), without computing the hue, which nothing here needs (4x faster).
    """
    high = rgb.max(axis=-1).astype(np.float32)
    low = rgb.min(axis=-1).astype(np.float32)
    saturation = np.divide((high - low) * 255, high, out=np.zeros_like(high), where=high > 0)
    return saturation, high


def informative_pixels(rgb: np.ndarray) -> np.ndarray:
    saturation, value = saturation_value(rgb)
    return (saturation > SATURATION_MIN) & (value < VALUE_MAX)


def tissue_mask(thumbnail: np.ndarray, blur: int = 5, min_saturation: float = 20.0) -> np.ndarray:
    """Otsu threshold of the median-blurred HSV saturation (0-255) of an RGB thumbnail."""
    saturation = np.rint(saturation_value(thumbnail)[0]).astype(np.uint8)
    blurred = filters.median(saturation, footprint=np.ones((blur, blur), bool))
    if blurred.min() == blurred.max():
        return np.zeros(blurred.shape, bool)
    threshold = filters.threshold_otsu(blurred)
    return blurred > max(threshold, min_saturation)


class RegionImage:
    """A whole image in memory (PNG/JPEG region, or a small single-level TIFF)."""

    def __init__(self, path, pixels: np.ndarray | None = None):
        self.path = path
        if pixels is None:
            try:
                pixels = io.imread(path)
            except READ_ERRORS + (SyntaxError,) as e:
                raise RawFileError(path, f"unreadable image ({type(e).__name__}: {e}); truncated or corrupt file?") from e
        self.pixels = to_rgb_uint8(np.asarray(pixels), path)
        self._informative_sum = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[:2]

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, int]:
        step = max(1, math.ceil(max(self.shape) / max_side))
        return self.pixels[::step, ::step], step

    def read(self, y: int, x: int, size: int) -> np.ndarray:
        return self.pixels[y:y + size, x:x + size]

    def informative_counts(self, positions: np.ndarray, size: int) -> np.ndarray:
        """Informative pixels per patch, from one summed-area table of the whole image."""
        if self._informative_sum is None:
            table = informative_pixels(self.pixels).astype(np.int64).cumsum(0).cumsum(1)
            self._informative_sum = np.pad(table, ((1, 0), (1, 0)))
        s, y, x = self._informative_sum, positions[:, 0], positions[:, 1]
        return s[y + size, x + size] - s[y, x + size] - s[y + size, x] + s[y, x]

    def close(self):
        pass


class TiffSlide:
    """A pyramidal TIFF/SVS read lazily with tifffile: thumbnail from a coarse level, patches from level 0."""

    def __init__(self, path):
        import tifffile
        import zarr
        self.path = path
        try:
            self.tiff = tifffile.TiffFile(path)
            series = self.tiff.series[0]
            self.levels = series.levels
            if series.axes not in ("YXS", "YX"):
                raise RawFileError(path, f"slide axes {series.axes!r}: expected YXS (RGB) pixels")
            self.level0 = zarr.open(series.aszarr(level=0), mode="r")
        except RawFileError:
            raise
        except READ_ERRORS + (tifffile.TiffFileError,) as e:
            raise RawFileError(path, f"unreadable slide ({type(e).__name__}: {e})") from e

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.levels[0].shape[:2])

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, int]:
        coarse = [lv for lv in self.levels if max(lv.shape[:2]) >= max_side] or [self.levels[0]]
        level = coarse[-1]
        pixels = to_rgb_uint8(self._decode(level.asarray), self.path)
        step = max(1, math.ceil(max(pixels.shape[:2]) / max_side))
        return pixels[::step, ::step], self.shape[0] // level.shape[0] * step

    def read(self, y: int, x: int, size: int) -> np.ndarray:
        return to_rgb_uint8(self._decode(lambda: self.level0[y:y + size, x:x + size]), self.path)

    def informative_counts(self, positions: np.ndarray, size: int) -> np.ndarray:
        return np.array([informative_pixels(self.read(y, x, size)).sum() for y, x in positions], np.int64)

    def _decode(self, read):
        try:
            return np.asarray(read())
        except (ValueError, RuntimeError, OSError) as e:  # e.g. JPEG tiles without imagecodecs
            raise RawFileError(self.path, f"cannot decode slide pixels ({type(e).__name__}: {e}); "
                                          "JPEG/JPEG2000 slides need 'pip install imagecodecs' or openslide") from e

    def close(self):
        self.tiff.close()


class OpenSlideSlide:
    """A whole-slide image through openslide (optional extra ``impumae[slides]``)."""

    def __init__(self, path):
        import openslide
        self.path = path
        try:
            self.slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as e:
            raise RawFileError(path, f"unreadable slide ({e})") from e

    @property
    def shape(self) -> tuple[int, int]:
        w, h = self.slide.dimensions
        return h, w

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, int]:
        h, w = self.shape
        step = max(1, math.ceil(max(h, w) / max_side))
        thumb = np.asarray(self.slide.get_thumbnail((w // step, h // step)).convert("RGB"))
        return thumb, step

    def read(self, y: int, x: int, size: int) -> np.ndarray:
        return np.asarray(self.slide.read_region((int(x), int(y)), 0, (size, size)).convert("RGB"))

    def informative_counts(self, positions: np.ndarray, size: int) -> np.ndarray:
        return np.array([informative_pixels(self.read(y, x, size)).sum() for y, x in positions], np.int64)

    def close(self):
        self.slide.close()


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def open_image(path):
    """The reader for a region image or a slide (openslide first for slides when importable)."""
    path = Path(path)
    if not path.is_file():
        raise RawFileError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in REGION_SUFFIXES:
        return RegionImage(path)
    if suffix not in SLIDE_SUFFIXES:
        raise RawFileError(path, f"unknown image type {suffix!r}: expected {REGION_SUFFIXES + SLIDE_SUFFIXES}")
    if _importable("openslide"):
        return OpenSlideSlide(path)
    if suffix in (".svs", ".tif", ".tiff") and _importable("tifffile"):
        return TiffSlide(path)
    raise RawFileError(path, f"reading {suffix} slides needs openslide or tifffile: pip install 'impumae[slides]'")


@dataclass(frozen=True)
class PatchSelection:
    patches: np.ndarray     # (n_patches, size, size, 3) uint8, best first
    positions: np.ndarray   # (n_patches, 2) top-left (y, x) at full resolution
    scores: np.ndarray      # (n_patches,) informative pixels per patch
    n_candidates: int       # distinct tissue-centred candidates drawn


def draw_candidates(tissue: np.ndarray, step: int, shape: tuple[int, int], size: int, n: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct top-left corners (y, x) of patches centred on tissue pixels of the thumbnail."""
    ty, tx = np.nonzero(tissue)
    pick = rng.integers(0, len(ty), size=n)
    centre_y = (ty[pick] + rng.random(n)) * step
    centre_x = (tx[pick] + rng.random(n)) * step
    y = np.clip(np.floor(centre_y - size / 2), 0, shape[0] - size).astype(np.int64)
    x = np.clip(np.floor(centre_x - size / 2), 0, shape[1] - size).astype(np.int64)
    return np.unique(np.stack([y, x], axis=1), axis=0)  # sorted by (y, x)


def rank_patches(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Indices by decreasing score; ties by position (top row first, then left)."""
    return np.lexsort((positions[:, 1], positions[:, 0], -scores))


@dataclass(frozen=True)
class PatchParser:
    """Turns one slide or region image into its ``n_patches`` best ``size``x``size`` RGB patches."""

    n_patches: int = 10
    size: int = 256
    n_candidates: int = 1000
    seed: int = 0
    thumbnail_side: int = 1024
    blur: int = 5
    min_saturation: float = 20.0
    value_type = "rgb"

    @property
    def feature_names(self) -> list[str]:
        return []

    @property
    def fingerprint(self) -> dict:
        return {"format": "wsi-patches", "n_patches": self.n_patches, "size": self.size,
                "n_candidates": self.n_candidates, "seed": self.seed, "thumbnail_side": self.thumbnail_side,
                "blur": self.blur, "min_saturation": self.min_saturation}

    def rng_for(self, path) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(Path(path).stem.encode())])

    def select(self, path) -> PatchSelection:
        reader = open_image(path)
        try:
            h, w = reader.shape
            if h < self.size or w < self.size:
                raise RawFileError(path, f"image {w}x{h} is smaller than one {self.size}x{self.size} patch")
            thumbnail, step = reader.thumbnail(self.thumbnail_side)
            tissue = tissue_mask(thumbnail, self.blur, self.min_saturation)
            if not tissue.any():
                raise RawFileError(path, "no tissue found (Otsu mask of the thumbnail's saturation is empty)")
            positions = draw_candidates(tissue, step, (h, w), self.size, self.n_candidates, self.rng_for(path))
            scores = reader.informative_counts(positions, self.size)
            order = rank_patches(scores, positions)[: self.n_patches]
            order = np.resize(order, self.n_patches)  # too few candidates: repeat the best ones
            patches = np.stack([reader.read(y, x, self.size) for y, x in positions[order]])
        finally:
            reader.close()
        return PatchSelection(patches, positions[order], scores[order], len(positions))

    def __call__(self, path) -> np.ndarray:
        return self.select(path).patches
