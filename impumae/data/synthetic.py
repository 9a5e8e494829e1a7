"""The synthetic cohort: a seeded GBM/LGG-like cohort with a known hazard (the embedded default).

Every patient has latent factors. ``K_SHARED`` factors are shared by all modalities; the first
three of them drive the hazard (``PROGNOSTIC_WEIGHTS``), the fourth is shared but not prognostic.
Each tokenised modality also has ``K_PRIVATE`` factors of its own (noise for survival). Each
modality is a noisy, modality-shaped readout of [shared, private] factors:

- ``rna`` (value type ``fpkm_uq``): log-normal expression, ``exp(baseline + loadings @ z + noise)``
  times a per-sample library-size factor; non-negative.
- ``dna`` (``beta``): ``sigmoid(baseline + loadings @ z + noise)`` with bimodal baselines (most
  CpGs near 0 or near 1), strictly inside (0, 1), and a few NaN values like real arrays.
- ``mri`` (``zscored``): a brain-like ellipsoid (zero outside) holding smooth tissue texture and a
  bright tumour blob whose radius and intensity follow the shared factors and whose position follows
  the private ones; z-scored over the non-zero voxels.
- ``wsi`` (``rgb``): H&E-like uint8 patches: pink eosin stroma, purple haematoxylin nuclei, white
  gaps; nuclear density and size follow the shared factors, stain colour the private ones.
- ``clinical``: age in years (part of the hazard), radiation and pharmaceutical treatment (0/1).

``true_risk`` = ``PROGNOSTIC_WEIGHTS @ shared + AGE_LOG_HAZARD_PER_YEAR * (age - AGE_CENTRE)`` is the
log-hazard; times are Weibull with that hazard (years, median about 1.5 y), with independent
exponential censoring capped at ``MAX_FOLLOW_UP_YEARS`` (about half the patients die).
Missingness follows GBM/LGG (``PRESENT_RATE``), correlated through one availability factor per
patient (plus less RNA for GBM-like patients, as in TCGA), and every patient keeps at least one
tokenised modality. ``project`` is ``GBM`` or ``LGG``, drawn from the risk.

Determinism: cohort-level draws come from ``SeedSequence([seed, stream])`` and each patient's
modality arrays from ``SeedSequence([seed, PATIENT_STREAM, patient_index, modality_code])``, so the
same seed gives the same arrays bit for bit, and patients are generated one at a time (streaming;
paper-scale WSI are never all in memory).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import expit

from impumae.data.store import Cohort, CohortPlan, write_cohort, write_options
from impumae.modalities import ModalitySpec

# Bump when the generated values or the stored specs (patches) change: the default-cohort cache
# name encodes it. 2: tiny rna/dna patches 64/96 (4 tokens each; docs/evidence.md, pretraining).
GENERATOR_VERSION = 2

HELP = "a seeded synthetic GBM/LGG-like cohort with a known hazard (rna, dna, mri, wsi, clinical)"

SCALES: dict[str, dict[str, ModalitySpec]] = {
    "tiny": {
        # 4 tokens each: with one output head shared by all positions, fewer and larger tokens learn
        # within the default budget (8 and 6 tokens stayed at ~0.9 recon_vs_mean; docs/evidence.md)
        "rna": ModalitySpec("rna", "tabular", (256,), patch=64, depth=2),
        "dna": ModalitySpec("dna", "tabular", (384,), patch=96, depth=2),
        "mri": ModalitySpec("mri", "volume", (16, 16, 16), patch=8, depth=1),
        "wsi": ModalitySpec("wsi", "image", (3, 32, 32, 3), dtype="uint8", patch=8, depth=1),
        "clinical": ModalitySpec("clinical", "clinical", (3,)),
    },
    "paper": {
        "rna": ModalitySpec("rna", "tabular", (16_304,), patch=512, depth=6),
        "dna": ModalitySpec("dna", "tabular", (25_978,), patch=1024, depth=6),
        "mri": ModalitySpec("mri", "volume", (64, 64, 64), patch=16, depth=4),
        "wsi": ModalitySpec("wsi", "image", (10, 256, 256, 3), dtype="uint8", patch=16, depth=4),
        "clinical": ModalitySpec("clinical", "clinical", (3,)),
    },
}
MODALITIES = ("rna", "dna", "mri", "wsi", "clinical")
TOKENISED = ("rna", "dna", "mri", "wsi")
VALUE_TYPES = {"rna": "fpkm_uq", "dna": "beta", "mri": "zscored", "wsi": "rgb", "clinical": "clinical"}
CLINICAL_FEATURES = ["age_years", "radiation", "pharmaceutical"]
MODALITY_CODE = {"rna": 1, "dna": 2, "mri": 3, "wsi": 4, "clinical": 5}

# Latent factors and the hazard.
K_SHARED = 4
K_PRIVATE = 2
PROGNOSTIC_WEIGHTS = np.array([0.9, -0.7, 0.5, 0.0])
AGE_CENTRE = 55.0
AGE_LOG_HAZARD_PER_YEAR = 0.03
WEIBULL_SHAPE = 1.3
WEIBULL_SCALE_YEARS = 2.2  # with the risk spread above: Kaplan-Meier median survival about 1.5-1.7 y
CENSORING_RATE_PER_YEAR = 0.35
MAX_FOLLOW_UP_YEARS = 15.0

# Present rates of the TCGA GBM/LGG cohort (reference notes 5) and how strongly missingness is shared.
PRESENT_RATE = {"rna": 0.60, "dna": 0.84, "mri": 0.15, "wsi": 0.79}
AVAILABILITY_LOADING = 0.6
GBM_RNA_SHIFT = 0.8  # GBM-like patients lack RNA more often (TCGA: GBM has RNA for 152 of 592)

# Tabular readouts.
LOADING_SD = 0.4
RNA_NOISE_SD = 1.0
RNA_LIBRARY_SIZE_SD = 0.2
DNA_NOISE_SD = 1.0
DNA_NAN_RATE = 0.005
BETA_EPS = 1e-4

# Images: how the shared factors move tumour and tissue features (one weight per shared factor).
MRI_RADIUS_LOADING = np.array([0.30, -0.15, 0.10, 0.20])
MRI_INTENSITY_LOADING = np.array([0.40, -0.30, 0.20, -0.25])
WSI_NUCLEAR_COVERAGE = 0.15  # fraction of tissue covered by nuclei at average risk (any patch size)
WSI_DENSITY_LOADING = np.array([0.35, -0.25, 0.20, 0.25])
WSI_NUCLEUS_SIZE_LOADING = np.array([0.15, 0.00, 0.10, -0.15])
EOSIN_RGB = np.array([234.0, 150.0, 190.0])
HAEMATOXYLIN_RGB = np.array([85.0, 45.0, 130.0])
WHITE_RGB = np.array([242.0, 238.0, 242.0])

COHORT_STREAM, PARAMETER_STREAM, PATIENT_STREAM = 1, 2, 3


@dataclass
class SyntheticCohort:
    """A generated cohort before it is written: labels, presence, and a per-patient generator."""

    scale: str
    seed: int
    specs: dict[str, ModalitySpec]
    labels: pd.DataFrame  # index patient id; time, event, true_risk, project
    present: pd.DataFrame  # bool [patients x MODALITIES]
    shared: np.ndarray  # [N, K_SHARED]
    private: dict[str, np.ndarray]  # modality -> [N, K_PRIVATE]
    clinical: np.ndarray  # [N, 3] float32
    parameters: dict[str, dict] = field(repr=False)

    @property
    def feature_names(self) -> dict[str, list[str]]:
        return {"rna": [f"GENE{j:05d}" for j in range(self.specs["rna"].shape[0])],
                "dna": [f"cg{j:08d}" for j in range(self.specs["dna"].shape[0])],
                "clinical": list(CLINICAL_FEATURES)}

    def patient(self, index: int, modalities=MODALITIES) -> dict[str, np.ndarray | None]:
        """One patient's arrays (None = missing), generated from the patient's own seed; an absent
        modality is not generated."""
        arrays: dict[str, np.ndarray | None] = {}
        for name in modalities:
            if not self.present.iat[index, self.present.columns.get_loc(name)]:
                arrays[name] = None
            elif name == "clinical":
                arrays[name] = self.clinical[index]
            else:
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, PATIENT_STREAM, index, MODALITY_CODE[name]]))
                latent = np.concatenate([self.shared[index], self.private[name][index]])
                arrays[name] = GENERATORS[name](self.specs[name], self.parameters.get(name, {}), latent, rng)
        return arrays

    def patients(self) -> Iterator[dict[str, np.ndarray | None]]:
        for index in range(len(self.labels)):
            yield self.patient(index)


def simulate(n_patients: int = 600, scale: str = "tiny", seed: int = 0) -> SyntheticCohort:
    """Draw the cohort-level quantities (factors, clinical, survival, presence) of a synthetic cohort."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    specs = SCALES[scale]
    rng = np.random.default_rng(np.random.SeedSequence([seed, COHORT_STREAM]))
    n = n_patients
    shared = rng.standard_normal((n, K_SHARED))
    private = {name: rng.standard_normal((n, K_PRIVATE)) for name in TOKENISED}

    age = np.clip(AGE_CENTRE + 8.0 * shared[:, 0] + 12.0 * rng.standard_normal(n), 18.0, 89.0)
    true_risk = shared @ PROGNOSTIC_WEIGHTS + AGE_LOG_HAZARD_PER_YEAR * (age - AGE_CENTRE)

    # Weibull times: S(t) = exp(-(t / scale)^k * exp(risk)); independent exponential censoring.
    unit_exponential = rng.exponential(1.0, n)
    death_time = WEIBULL_SCALE_YEARS * (unit_exponential * np.exp(-true_risk)) ** (1.0 / WEIBULL_SHAPE)
    censor_time = np.minimum(rng.exponential(1.0 / CENSORING_RATE_PER_YEAR, n), MAX_FOLLOW_UP_YEARS)
    event = death_time <= censor_time
    time = np.maximum(np.where(event, death_time, censor_time), 1.0 / 365.0)

    # GBM-like patients are the higher-risk ones (about half of the cohort, as in TCGA).
    is_gbm = rng.random(n) < expit(1.5 * (true_risk - np.median(true_risk)))
    radiation = rng.random(n) < np.where(is_gbm, 0.85, 0.70)
    pharmaceutical = rng.random(n) < np.where(is_gbm, 0.80, 0.62)
    clinical = np.stack([age, radiation, pharmaceutical], axis=1).astype(np.float32)

    present = _draw_presence(rng, is_gbm)
    ids = [f"SYN-{i:05d}" for i in range(n)]
    labels = pd.DataFrame({"time": time.astype(np.float32), "event": event.astype(np.int8),
                           "true_risk": true_risk.astype(np.float32),
                           "project": np.where(is_gbm, "GBM", "LGG")}, index=pd.Index(ids, name="patient_id"))
    return SyntheticCohort(scale=scale, seed=seed, specs=dict(specs), labels=labels,
                           present=pd.DataFrame(present, index=labels.index, columns=list(MODALITIES)),
                           shared=shared, private=private, clinical=clinical,
                           parameters=_draw_parameters(specs, seed))


def _draw_presence(rng: np.random.Generator, is_gbm: np.ndarray) -> np.ndarray:
    """Present flags [N, MODALITIES]: a shared availability factor makes missingness correlated;
    thresholds are the score quantiles that hit ``PRESENT_RATE``; nobody is left without a
    tokenised modality (such a patient gets the modality they were closest to having)."""
    n = len(is_gbm)
    availability = rng.standard_normal(n)
    scores = np.empty((n, len(TOKENISED)))
    for j, name in enumerate(TOKENISED):
        scores[:, j] = AVAILABILITY_LOADING * availability + np.sqrt(1 - AVAILABILITY_LOADING**2) * rng.standard_normal(n)
        if name == "rna":
            scores[:, j] += GBM_RNA_SHIFT * is_gbm
    thresholds = np.array([np.quantile(scores[:, j], PRESENT_RATE[name]) for j, name in enumerate(TOKENISED)])
    tokenised = scores <= thresholds
    none = ~tokenised.any(axis=1)
    closest = np.argmin(scores - thresholds, axis=1)
    tokenised[none, closest[none]] = True
    return np.concatenate([tokenised, np.ones((n, 1), dtype=bool)], axis=1)


def _draw_parameters(specs: dict[str, ModalitySpec], seed: int) -> dict[str, dict]:
    """Cohort-wide readout parameters: loadings and baselines of the tabular modalities."""
    parameters = {}
    n_latent = K_SHARED + K_PRIVATE
    for name, baseline_draw in (("rna", _rna_baseline), ("dna", _dna_baseline)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, PARAMETER_STREAM, MODALITY_CODE[name]]))
        n_features = specs[name].shape[0]
        parameters[name] = {"loadings": LOADING_SD * rng.standard_normal((n_features, n_latent)),
                            "baseline": baseline_draw(rng, n_features)}
    return parameters


def _rna_baseline(rng: np.random.Generator, n_features: int) -> np.ndarray:
    return rng.normal(1.5, 1.2, n_features)  # log expression: from barely expressed to highly expressed


def _dna_baseline(rng: np.random.Generator, n_features: int) -> np.ndarray:
    state = rng.choice(3, size=n_features, p=[0.45, 0.40, 0.15])  # unmethylated, methylated, intermediate
    return np.array([-2.5, 2.2, 0.0])[state] + 0.5 * rng.standard_normal(n_features)


def _linear_readout(parameters: dict, latent: np.ndarray, noise_sd: float, rng: np.random.Generator) -> np.ndarray:
    baseline = parameters["baseline"]
    return baseline + parameters["loadings"] @ latent + noise_sd * rng.standard_normal(len(baseline))


def generate_rna(spec: ModalitySpec, parameters: dict, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    library_size = np.exp(RNA_LIBRARY_SIZE_SD * rng.standard_normal())
    return (library_size * np.exp(_linear_readout(parameters, latent, RNA_NOISE_SD, rng))).astype(np.float32)


def generate_dna(spec: ModalitySpec, parameters: dict, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    beta = np.clip(expit(_linear_readout(parameters, latent, DNA_NOISE_SD, rng)), BETA_EPS, 1 - BETA_EPS).astype(np.float32)
    beta[rng.random(beta.shape) < DNA_NAN_RATE] = np.nan
    return beta


def generate_mri(spec: ModalitySpec, parameters: dict, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = spec.shape[0]
    shared, private = latent[:K_SHARED], latent[K_SHARED:]
    grid = (np.arange(size) + 0.5) / size - 0.5  # voxel centres in [-0.5, 0.5]
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    brain = (z / 0.44) ** 2 + (y / 0.48) ** 2 + (x / 0.40) ** 2 <= 1.0

    coarse = rng.standard_normal((4, 4, 4))
    tissue = ndimage.zoom(coarse, size / 4, order=1, mode="nearest")[:size, :size, :size]
    volume = 1.0 + 0.3 * tissue + 0.15 * rng.standard_normal(spec.shape)

    radius = np.clip(0.10 * np.exp(MRI_RADIUS_LOADING @ shared), 0.05, 0.22)
    intensity = 2.0 + MRI_INTENSITY_LOADING @ shared + 0.2 * private[0]
    centre = 0.15 * np.tanh(np.array([private[0], private[1], rng.standard_normal()]))
    distance2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    volume += intensity * np.exp(-distance2 / (2 * radius**2))

    inside = volume[brain]
    normalised = np.zeros(spec.shape, dtype=np.float32)
    normalised[brain] = (inside - inside.mean()) / inside.std()
    return normalised


def generate_wsi(spec: ModalitySpec, parameters: dict, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n_patches, height, width, _ = spec.shape
    shared, private = latent[:K_SHARED], latent[K_SHARED:]
    nucleus_sigma = max(0.8, width / 80.0 * np.exp(WSI_NUCLEUS_SIZE_LOADING @ shared))
    nucleus_area = 2.0 * np.pi * nucleus_sigma**2
    nuclei_per_pixel = WSI_NUCLEAR_COVERAGE * np.exp(WSI_DENSITY_LOADING @ shared) / nucleus_area
    haematoxylin = HAEMATOXYLIN_RGB + np.array([12.0, 6.0, -10.0]) * private[0]
    eosin = EOSIN_RGB + np.array([-6.0, 10.0, 4.0]) * private[1]
    patches = np.empty(spec.shape, dtype=np.uint8)
    for p in range(n_patches):
        centres = rng.poisson(nuclei_per_pixel, (height, width)).astype(np.float64)
        nuclei = np.clip(ndimage.gaussian_filter(centres, nucleus_sigma) * nucleus_area, 0.0, 1.0)
        gaps = ndimage.zoom(rng.standard_normal((5, 5)), (height / 4, width / 4), order=1, mode="nearest")[:height, :width]
        tissue = expit((gaps + 1.3) * 4.0)  # about 10% white gaps
        stain = (1 - nuclei)[..., None] * eosin + nuclei[..., None] * haematoxylin
        rgb = (1 - tissue)[..., None] * WHITE_RGB + tissue[..., None] * stain + 6.0 * rng.standard_normal((height, width, 3), dtype=np.float32)
        patches[p] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return patches


GENERATORS = {"rna": generate_rna, "dna": generate_dna, "mri": generate_mri, "wsi": generate_wsi}


def synthetic_plan(n_patients: int = 600, scale: str = "tiny", seed: int = 0, command: str | None = None):
    """``(CohortPlan, patients iterator)`` for ``write_cohort``."""
    cohort = simulate(n_patients, scale, seed)
    provenance = {"source": "synthetic", "generator": "impumae.data.synthetic",
                  "generator_version": GENERATOR_VERSION, "scale": scale, "seed": int(seed),
                  "n_patients": int(n_patients), "command": command or _python_call(n_patients, scale, seed)}
    plan = CohortPlan(labels=cohort.labels, specs=[cohort.specs[m] for m in MODALITIES],
                      feature_names=cohort.feature_names, provenance=provenance, value_types=dict(VALUE_TYPES))
    return plan, cohort.patients()


def build_synthetic(out: str, n_patients: int = 600, scale: str = "tiny", seed: int = 0, overwrite: bool = False,
                    command: str | None = None, **write_kwargs) -> Cohort:
    """Generate a synthetic cohort and write it to ``out`` (a path or fsspec URL); returns the Cohort.
    ``write_kwargs`` go to ``write_cohort`` (shard_patients, split_seed, test_frac, n_folds, progress)."""
    plan, patients = synthetic_plan(n_patients, scale, seed, command=command)
    return write_cohort(str(out), plan, patients, overwrite=overwrite, **write_kwargs)


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMPUMAE_CACHE") or Path.home() / ".cache" / "impumae")


def default_cohort(cache_dir: str | os.PathLike | None = None) -> Cohort:
    """The embedded default cohort (tiny, 600 patients, seed 0): built on first use, reused after.

    The store name encodes scale, size, seed and ``GENERATOR_VERSION``. ``write_cohort`` builds under
    a temporary name and renames, so a store at the final name is complete. Concurrent first uses
    take a lock file (POSIX) so one process builds and the others open its store."""
    n_patients, scale, seed = 600, "tiny", 0
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"synthetic-{scale}-n{n_patients}-seed{seed}-v{GENERATOR_VERSION}.zarr"
    if not path.exists():
        with _exclusive_lock(path.with_name(path.name + ".lock")):
            if not path.exists():  # nobody built it while we waited for the lock
                build_synthetic(str(path), n_patients=n_patients, scale=scale, seed=seed, progress=False)
    return Cohort.open(str(path))


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path):
    """An exclusive advisory lock on ``lock_path`` (no-op where ``fcntl`` is missing: the
    temporary-name-then-rename build still keeps a half-written store from being seen)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _python_call(n_patients: int, scale: str, seed: int) -> str:
    return f"impumae.data.synthetic.build_synthetic(n_patients={n_patients}, scale={scale!r}, seed={seed})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", type=int, default=600, help="number of patients (default 600)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny",
                        help="tiny: small shapes for tests and CPUs; paper: the paper's shapes (default tiny)")
    parser.add_argument("--seed", type=int, default=0,
                        help="generator seed (default 0). It draws the generator's loadings and hazard too, so another "
                             "seed is another population (other gene-factor relations and risks), not new patients "
                             "of the same one")


def build(args: argparse.Namespace, out: str, overwrite: bool) -> Cohort:
    return build_synthetic(out, n_patients=args.patients, scale=args.scale, seed=args.seed, overwrite=overwrite,
                           command=shlex.join(sys.argv), **write_options(args))
