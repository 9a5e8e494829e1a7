"""The one registry of modalities.

A modality is data, not a branch of ``if`` statements: its name, how a patient's sample is shaped
in the cohort store, how it is cut into tokens and how deep its encoder is. The cohort store records
the spec of each modality it holds (``ModalitySpec.to_dict``), and the model builds one input adapter
and one output adapter per spec. Adding a modality means adding a spec (and, for a new ``kind``, one
adapter pair in ``impumae.model.adapters``).

Kinds:
- ``tabular``: one vector per patient, shape ``(n_features,)``; tokens = zero-padded patches of
  ``patch`` features (RNA, DNAm, mutations, any user matrix).
- ``volume``: one cube per patient, shape ``(D, D, D)``; tokens = ``patch**3`` cubes (MRI).
- ``image``: ``P`` RGB patches per patient, shape ``(P, H, W, 3)`` uint8; tokens = ``patch x patch``
  squares of one image (WSI). Pretraining draws one image per patient; fine-tuning uses all P.
- ``clinical``: a short vector joined at the survival head, never tokenised (age, treatments).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

KINDS = ("tabular", "volume", "image", "clinical")


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    patch: int = 1
    depth: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"modality {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind == "volume" and (len(self.shape) != 3 or any(s % self.patch for s in self.shape)):
            raise ValueError(f"modality {self.name!r}: volume shape {self.shape} must be 3-D and divisible by patch {self.patch}")
        if self.kind == "image" and (len(self.shape) != 4 or self.shape[3] != 3 or self.shape[1] % self.patch or self.shape[2] % self.patch):
            raise ValueError(f"modality {self.name!r}: image shape {self.shape} must be (P, H, W, 3) with H, W divisible by patch {self.patch}")
        if self.kind in ("tabular", "clinical") and len(self.shape) != 1:
            raise ValueError(f"modality {self.name!r}: {self.kind} shape must be (n_features,), got {self.shape}")

    @property
    def tokenised(self) -> bool:
        return self.kind != "clinical"

    @property
    def n_tokens(self) -> int:
        """Tokens per sample (per image for ``image``)."""
        if self.kind == "tabular":
            return math.ceil(self.shape[0] / self.patch)
        if self.kind == "volume":
            return math.prod(s // self.patch for s in self.shape)
        if self.kind == "image":
            return (self.shape[1] // self.patch) * (self.shape[2] // self.patch)
        return 0

    @property
    def patch_dim(self) -> int:
        """Values in one token's patch (what an output adapter reconstructs)."""
        return {"tabular": self.patch, "volume": self.patch**3, "image": self.patch * self.patch * 3}.get(self.kind, 0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModalitySpec":
        return cls(**{**d, "shape": tuple(d["shape"])})

    def with_(self, **changes) -> "ModalitySpec":
        return replace(self, **changes)


# Paper-scale defaults (reference notes, section 1). Feature counts are placeholders that a cohort
# overrides with its own (``spec.with_(shape=(n_features,))``).
PAPER = {
    "rna": ModalitySpec("rna", "tabular", (16_304,), patch=512, depth=6),
    "dna": ModalitySpec("dna", "tabular", (25_978,), patch=1024, depth=6),
    "mri": ModalitySpec("mri", "volume", (64, 64, 64), patch=16, depth=4),
    "wsi": ModalitySpec("wsi", "image", (10, 256, 256, 3), dtype="uint8", patch=16, depth=4),
    "clinical": ModalitySpec("clinical", "clinical", (3,)),
    "mutations": ModalitySpec("mutations", "tabular", (20,), patch=4, depth=2),
}

ALIASES = {"dnam": "dna", "methylation": "dna", "rnaseq": "rna", "mut": "mutations", "cln": "clinical",
           "clin": "clinical", "he": "wsi", "histology": "wsi"}


def canonical(name: str) -> str:
    n = name.strip().lower()
    return ALIASES.get(n, n)


def parse_subset(text: str, known: list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """``"rna,dnam,mri"`` -> ``("rna", "dna", "mri")``; order kept (the first is the anchor modality)."""
    names = tuple(canonical(p) for p in text.split(",") if p.strip())
    if not names:
        raise ValueError("empty modality subset")
    if len(set(names)) != len(names):
        raise ValueError(f"modality subset {text!r} names a modality twice")
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r} in subset {text!r}; this cohort has {sorted(known)}")
    return names
