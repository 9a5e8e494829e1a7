"""The real open TCGA GBM/LGG cohort, built from the offline data folder (``../shared/data``).

Patients, survival, clinical variables and the authors' split come from the impuTMAE authors' own
table (``tcga_gbmlgg_mtcp_cohort/dataset_with_dna.csv.gz``: 1,104 patients; ``group`` train/test
is the holdout, ``splits`` 0-4 the folds). The modality values are the real public values found
offline, so the missingness is real, not simulated:

| modality | source | patients | spec |
|---|---|---|---|
| rna | PORPOISE ``*_rnaseq`` (cBioPortal RSEM z-scores, 1,544 genes) | 568 | tabular (1544,), patch 64 (25 tokens), depth 2 |
| dna | MethylMix ``METcancer`` gene-level betas (14 genes) | 249 | tabular (14,), patch 1 (14 tokens), depth 1 |
| mutations | UCI glioma grading, 20 genes MUTATED/NOT_MUTATED -> 1/0 | 851 | tabular (20,), patch 1 (20 tokens), depth 2 |
| mri | BrainLesion TCGA-LGG, T1c, 64^3 crop on the tumour centroid | 2 | volume (64,64,64), patch 16, depth 4 |
| wsi | PathomicFusion 1024^2 H&E ROIs, 10 best 256^2 tiles | 3 | image (10,256,256,3), patch 16, depth 4 |
| clinical | age (days / 365), radiation and pharmaceutical yes/no -> 1/0 (NaN kept) | 1,104 | clinical (3,) |

Patch sizes are chosen for these small real feature counts (a few tokens each), not the paper's.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from impumae.data.store import Cohort, CohortError, CohortPlan, write_cohort, write_options
from impumae.modalities import PAPER, ModalitySpec

HELP = "the real open TCGA GBM/LGG cohort (1,104 patients; real RNA, DNAm, mutations, MRI, WSI values) from ../shared/data"
DEFAULT_SHARED = "../shared/data"

COHORT_TABLE = "tcga_gbmlgg_mtcp_cohort/dataset_with_dna.csv.gz"
RNA_TABLE = "porpoise_tcga_gbmlgg_omics/tcga_gbmlgg_all_clean.csv.gz"
DNA_TABLE = "methylmix_tcga_gbm_dnam/METcancer.csv"
MUTATION_TABLE = "uci_glioma_grading_mutations/TCGA_GBM_LGG_Mutations_all.csv"
MRI_FOLDER = "tcga_lgg_mri_brainlesion"
WSI_FOLDER = "tcga_gbmlgg_he_rois_pathomicfusion/imgs"

SPECS = {
    "rna": ModalitySpec("rna", "tabular", (1544,), patch=64, depth=2),
    "dna": ModalitySpec("dna", "tabular", (14,), patch=1, depth=1),
    "mri": PAPER["mri"],
    "wsi": PAPER["wsi"],
    "mutations": PAPER["mutations"],
    "clinical": PAPER["clinical"],
}
VALUE_TYPES = {"rna": "zscore", "dna": "beta", "mri": "zscored", "wsi": "rgb", "mutations": "binary", "clinical": "clinical"}
CLINICAL_FEATURES = ["age_years", "radiation", "pharmaceutical"]
DAYS_PER_YEAR = 365.0  # the authors' table: time = days / 365
YES_NO = {"yes": 1.0, "no": 0.0}
MUTATION_STATUS = {"MUTATED": 1.0, "NOT_MUTATED": 0.0}
MUTATION_GENES = ("IDH1", "TP53", "ATRX", "PTEN", "EGFR", "CIC", "MUC16", "PIK3CA", "NF1", "PIK3R1", "FUBP1",
                        "RB1", "NOTCH1", "BCOR", "CSMD3", "SMARCA4", "GRIN2A", "IDH2", "FAT4", "PDGFRA")

MRI_SEQUENCES = ("t1c", "t1n", "t2w", "t2f")
WSI_TILE = 256
# Reference notes 2: a tile's score is the number of stained, dark pixels (HSV S > 130 and V < 170, 0..255).
WSI_SATURATION_MIN = 130
WSI_VALUE_MAX = 170


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def _require(shared: Path, relative: str) -> Path:
    path = shared / relative
    if not path.exists():
        raise CohortError(f"{path}: not found; --shared must point at the shared data folder (it holds {relative})")
    return path


def _require_columns(frame: pd.DataFrame, columns, path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CohortError(f"{path}: column {missing[0]!r} is missing")


def _yes_no(values: pd.Series, path: Path, column: str) -> np.ndarray:
    text = values.astype("string").str.strip().str.lower()
    bad = text.notna() & ~text.isin(list(YES_NO))
    if bad.any():
        patient = values.index[bad.to_numpy()][0]
        raise CohortError(f"{path}: patient {patient!r}, column {column!r} is {values[patient]!r}; expected yes/no or empty")
    return text.map(YES_NO).astype(float).to_numpy()


def read_cohort_table(shared: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Labels (time, event, project, group, fold) and clinical values [N, 3] of the 1,104 patients."""
    path = _require(shared, COHORT_TABLE)
    table = pd.read_csv(path, low_memory=False)
    columns = ["submitter_id", "project_id", "time", "event", "group", "splits", "age_at_diagnosis",
               "treatments_radiation_treatment_or_therapy", "treatments_pharmaceutical_treatment_or_therapy"]
    _require_columns(table, columns, path)
    duplicated = table["submitter_id"].duplicated()
    if duplicated.any():
        raise CohortError(f"{path}: patient {table['submitter_id'][duplicated].iloc[0]!r} appears twice")
    table = table.set_index("submitter_id")
    labels = pd.DataFrame({"time": table["time"].astype(float), "event": table["event"].astype(int),
                           "project": table["project_id"].astype(str), "group": table["group"].astype(str),
                           "fold": table["splits"]}, index=pd.Index(table.index.astype(str), name="patient_id"))
    clinical = np.stack([
        table["age_at_diagnosis"].astype(float).to_numpy() / DAYS_PER_YEAR,
        _yes_no(table["treatments_radiation_treatment_or_therapy"], path, "treatments_radiation_treatment_or_therapy"),
        _yes_no(table["treatments_pharmaceutical_treatment_or_therapy"], path, "treatments_pharmaceutical_treatment_or_therapy"),
    ], axis=1).astype(np.float32)
    return labels, clinical


def read_rna(shared: Path) -> pd.DataFrame:
    """PORPOISE RNA z-scores, one row per patient (the file has one row per slide), columns = genes."""
    path = _require(shared, RNA_TABLE)
    table = pd.read_csv(path, low_memory=False)
    _require_columns(table, ["case_id"], path)
    genes = [c for c in table.columns if c.endswith("_rnaseq")]
    values = table[["case_id", *genes]]
    distinct = values.groupby("case_id")[genes].nunique(dropna=False).max(axis=1)
    if (distinct > 1).any():
        raise CohortError(f"{path}: patient {distinct.index[(distinct > 1).to_numpy()][0]!r} has rows with different RNA values")
    rna = values.drop_duplicates("case_id").set_index("case_id")
    rna.columns = [g[: -len("_rnaseq")] for g in genes]
    return rna.astype(np.float32)


def read_dna(shared: Path) -> pd.DataFrame:
    """MethylMix gene-level betas, rows = patients (``TCGA.02.0001`` -> ``TCGA-02-0001``), columns = genes."""
    path = _require(shared, DNA_TABLE)
    table = pd.read_csv(path, index_col=0)
    dna = table.T
    dna.index = [c.replace(".", "-") for c in dna.index]
    if not dna.index.is_unique:
        raise CohortError(f"{path}: patient {dna.index[dna.index.duplicated()][0]!r} appears twice")
    outside = (dna < 0) | (dna > 1)
    if outside.to_numpy().any():
        patient, gene = next((p, g) for p, row in outside.iterrows() for g in row.index[row.to_numpy()])
        raise CohortError(f"{path}: patient {patient!r}, gene {gene!r}: beta {dna.at[patient, gene]} is outside [0, 1]")
    return dna.astype(np.float32)


def read_mutations(shared: Path) -> pd.DataFrame:
    """UCI mutation status of 20 genes as 1/0, rows = patients."""
    path = _require(shared, MUTATION_TABLE)
    table = pd.read_csv(path, encoding="utf-8-sig")
    genes = list(MUTATION_GENES)
    _require_columns(table, ["Case_ID", *genes], path)
    table = table.set_index("Case_ID")
    if not table.index.is_unique:
        raise CohortError(f"{path}: patient {table.index[table.index.duplicated()][0]!r} appears twice")
    status = table[genes]
    bad = ~status.isin(list(MUTATION_STATUS))
    if bad.to_numpy().any():
        patient, gene = next((p, g) for p, row in bad.iterrows() for g in row.index[row.to_numpy()])
        raise CohortError(f"{path}: patient {patient!r}, gene {gene!r} is {status.at[patient, gene]!r}; "
                            "expected MUTATED or NOT_MUTATED")
    return status.apply(lambda column: column.map(MUTATION_STATUS)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def crop_on_tumour(volume: np.ndarray, segmentation: np.ndarray, size: int = 64) -> np.ndarray:
    """A ``size``^3 crop centred on the centroid of ``segmentation > 0`` (zero-padded where it leaves
    the volume), z-scored over its non-zero voxels (reference notes 2)."""
    if volume.shape != segmentation.shape:
        raise ValueError(f"volume shape {volume.shape} differs from segmentation shape {segmentation.shape}")
    tumour = np.argwhere(segmentation > 0)
    if len(tumour) == 0:
        raise ValueError("the segmentation has no tumour voxel (seg > 0)")
    start = np.rint(tumour.mean(axis=0)).astype(int) - size // 2
    crop = np.zeros((size,) * 3, dtype=np.float32)
    source = tuple(slice(max(s, 0), min(s + size, n)) for s, n in zip(start, volume.shape))
    target = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(source, start))
    crop[target] = volume[source]
    brain = crop != 0
    if brain.any():
        values = crop[brain]
        crop[brain] = (values - values.mean()) / max(float(values.std()), 1e-6)
    return crop


def read_mri(folder: Path, patient: str, sequence: str = "t1c", size: int = 64) -> np.ndarray:
    import nibabel as nib

    image_path, seg_path = folder / f"{patient}-{sequence}.nii.gz", folder / f"{patient}-seg.nii.gz"
    for path in (image_path, seg_path):
        if not path.exists():
            raise CohortError(f"{path}: not found (patient {patient!r}, MRI)")
    volume = np.asarray(nib.load(image_path).dataobj, dtype=np.float32)
    segmentation = np.asarray(nib.load(seg_path).dataobj)
    try:
        return crop_on_tumour(volume, segmentation, size)
    except ValueError as error:
        raise CohortError(f"{image_path}: patient {patient!r}: {error}") from error


def best_tiles(image: np.ndarray, n_tiles: int = 10, tile: int = WSI_TILE) -> np.ndarray:
    """Cut an RGB image into non-overlapping ``tile``^2 tiles (row-major) and keep the ``n_tiles`` with
    the most pixels of HSV S > 130 and V < 170; ties go to the lower tile index. Returns best first."""
    from skimage.color import rgb2hsv

    rgb = np.asarray(image)[..., :3]
    rows, cols = rgb.shape[0] // tile, rgb.shape[1] // tile
    if rows * cols < n_tiles:
        raise ValueError(f"image {rgb.shape[:2]} holds {rows * cols} tiles of {tile}^2, fewer than {n_tiles}")
    tiles = (rgb[: rows * tile, : cols * tile].reshape(rows, tile, cols, tile, 3)
             .swapaxes(1, 2).reshape(rows * cols, tile, tile, 3))
    hsv = rgb2hsv(tiles.reshape(-1, tile, 3)).reshape(tiles.shape) * 255.0
    scores = ((hsv[..., 1] > WSI_SATURATION_MIN) & (hsv[..., 2] < WSI_VALUE_MAX)).sum(axis=(1, 2))
    order = np.lexsort((np.arange(len(scores)), -scores))  # score descending, then tile index
    return np.ascontiguousarray(tiles[order[:n_tiles]]).astype(np.uint8)


def read_wsi(path: Path, n_tiles: int = 10) -> np.ndarray:
    import skimage.io

    image = skimage.io.imread(path)
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise CohortError(f"{path}: expected an 8-bit RGB image, got shape {image.shape} dtype {image.dtype}")
    try:
        return best_tiles(image, n_tiles)
    except ValueError as error:
        raise CohortError(f"{path}: {error}") from error


def _mri_patients(shared: Path) -> dict[str, Path]:
    folder = _require(shared, MRI_FOLDER)
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.startswith("TCGA-")}


def _wsi_files(shared: Path) -> dict[str, Path]:
    folder = _require(shared, WSI_FOLDER)
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.png")):
        patient = path.name[:12]  # TCGA-XX-XXXX
        files.setdefault(patient, path)  # one ROI per patient here; the first by name if more
    return files


# ---------------------------------------------------------------------------------------------
# the cohort
# ---------------------------------------------------------------------------------------------
def _readme_commit(readme: Path) -> str | None:
    if not readme.exists():
        return None
    match = re.search(r"commit\s+`([0-9a-f]{7,40})`", readme.read_text(encoding="utf-8"))
    return match.group(1) if match else None


def _provenance(shared: Path, mri_sequence: str, command: str | None) -> dict:
    files = {"cohort": COHORT_TABLE, "rna": RNA_TABLE, "dna": DNA_TABLE, "mutations": MUTATION_TABLE,
             "mri": f"{MRI_FOLDER}/<patient>/<patient>-{mri_sequence}.nii.gz (+ -seg.nii.gz)", "wsi": f"{WSI_FOLDER}/*.png"}
    sources = {}
    for modality, relative in files.items():
        folder = relative.split("/")[0]
        sources[modality] = {"folder": folder, "files": relative,
                             "source_commit": _readme_commit(shared / folder / "README.md")}
    return {"source": "tcga-gbmlgg-open", "shared": str(shared.resolve()), "sources": sources,
            "mri_sequence": mri_sequence, "wsi_tiles": "10 best 256^2 tiles by HSV S>130 & V<170 pixel count",
            "command": command or f"impumae.data.tcga_open.build_tcga_open({str(shared)!r})"}


def tcga_open_plan(shared: str | Path = DEFAULT_SHARED, mri_sequence: str = "t1c", command: str | None = None):
    """``(CohortPlan, patients iterator)`` for ``write_cohort``."""
    shared = Path(shared)
    if mri_sequence not in MRI_SEQUENCES:
        raise ValueError(f"unknown MRI sequence {mri_sequence!r}; expected one of {MRI_SEQUENCES}")
    labels, clinical = read_cohort_table(shared)
    tables = {"rna": read_rna(shared), "dna": read_dna(shared), "mutations": read_mutations(shared)}
    mri_folders = _mri_patients(shared)
    wsi_files = _wsi_files(shared)
    feature_names = {name: [str(c) for c in table.columns] for name, table in tables.items()}
    feature_names["clinical"] = list(CLINICAL_FEATURES)
    specs = dict(SPECS)
    for name, table in tables.items():
        spec = specs[name].with_(shape=(table.shape[1],))
        specs[name] = spec.with_(patch=spec.kind_object.default_patch(spec))

    # per tabular modality: the values and each cohort patient's row in them (-1 = no values)
    rows = {name: (table.to_numpy(np.float32), table.index.get_indexer(labels.index)) for name, table in tables.items()}

    def patients() -> Iterator[dict[str, np.ndarray | None]]:
        for row, patient in enumerate(labels.index):
            arrays: dict[str, np.ndarray | None] = {"clinical": clinical[row]}
            for name, (values, position) in rows.items():
                arrays[name] = values[position[row]] if position[row] >= 0 else None
            arrays["mri"] = read_mri(mri_folders[patient], patient, mri_sequence) if patient in mri_folders else None
            arrays["wsi"] = read_wsi(wsi_files[patient]) if patient in wsi_files else None
            yield arrays

    plan = CohortPlan(labels=labels, specs=list(specs.values()), feature_names=feature_names,
                      provenance=_provenance(shared, mri_sequence, command), value_types=dict(VALUE_TYPES))
    return plan, patients()


def build_tcga_open(shared: str | Path = DEFAULT_SHARED, out: str = "tcga_gbmlgg_open.zarr", overwrite: bool = False,
                    mri_sequence: str = "t1c", command: str | None = None, **write_kwargs) -> Cohort:
    """Build the open TCGA GBM/LGG cohort store at ``out``; returns the Cohort. ``write_kwargs`` go to
    ``write_cohort`` (shard_patients, progress; the holdout and folds are the authors')."""
    plan, patients = tcga_open_plan(shared, mri_sequence, command)
    return write_cohort(str(out), plan, patients, overwrite=overwrite, **write_kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared", default=DEFAULT_SHARED, help=f"the shared data folder (default {DEFAULT_SHARED})")
    parser.add_argument("--mri-sequence", choices=MRI_SEQUENCES, default="t1c",
                        help="MRI sequence: t1c (post-contrast T1, the paper's), t1n, t2w, t2f (default t1c)")


def build(args: argparse.Namespace, out: str, overwrite: bool) -> Cohort:

    return build_tcga_open(args.shared, out, overwrite=overwrite, mri_sequence=args.mri_sequence,
                           command=shlex.join(sys.argv), **write_options(args))
