"""The one registry of modalities.

A modality is data, not a branch of ``if`` statements: its name, its kind, how a patient's sample
is shaped in the cohort store, how it is cut into tokens and how deep its encoder is. The cohort
store records the spec of each modality it holds (``ModalitySpec.to_dict``), and the model builds
one input adapter and one output adapter per spec. What depends on the kind (validation, tokens,
adapters, fold-fitted transforms, baseline summaries, storage) is asked of the kind object,
``impumae.kinds.get(spec.kind)``: built-in kinds ``tabular`` (F,), ``volume`` (D, H, W), ``image``
(P, H, W, 3) uint8 and ``clinical`` (F,) (never tokenised). Adding a modality of a known kind means
adding a spec; a new kind is one ``impumae.kinds.register(...)`` call (see ``impumae/kinds``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from impumae import kinds


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    patch: int = 1
    depth: int = 0

    def __post_init__(self):
        try:
            kind = kinds.get(self.kind)
        except ValueError as error:
            raise ValueError(f"modality {self.name!r}: {error}") from None
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        kind.validate(self)

    @property
    def kind_object(self) -> kinds.Kind:
        """The registered :class:`impumae.kinds.Kind` named ``self.kind``."""
        return kinds.get(self.kind)

    @property
    def tokenised(self) -> bool:
        return self.kind_object.tokenised

    @property
    def n_tokens(self) -> int:
        """Tokens per sample (per item of a stacked kind: per image for ``image``)."""
        return self.kind_object.n_tokens(self)

    @property
    def patch_dim(self) -> int:
        """Values in one token's patch (what an output adapter reconstructs)."""
        return self.kind_object.patch_dim(self)

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
