"""Tiny model sizes and random inputs shared by the model tests (every kind of modality)."""
import torch

from impumae.modalities import ModalitySpec

SPECS = {
    "rna": ModalitySpec("rna", "tabular", (250,), patch=32, depth=2),   # 8 tokens, the last one padded
    "dna": ModalitySpec("dna", "tabular", (128,), patch=64, depth=2),   # 2 tokens; 2 blocks (freezing tests)
    "mri": ModalitySpec("mri", "volume", (16, 16, 16), patch=8, depth=1),
    "wsi": ModalitySpec("wsi", "image", (3, 32, 32, 3), dtype="uint8", patch=8, depth=1),
}
TINY = dict(width=32, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64)


def random_inputs(b: int, seed: int, present_rate: float):
    """(x, present, generator): one random sample of every modality, each present with ``present_rate``."""
    g = torch.Generator().manual_seed(seed)
    x = {"rna": torch.randn(b, 250, generator=g), "dna": torch.rand(b, 128, generator=g),
         "mri": torch.randn(b, 16, 16, 16, generator=g),
         "wsi": torch.randint(0, 256, (b, 3, 32, 32, 3), generator=g, dtype=torch.uint8)}
    present = {n: torch.rand(b, generator=g) < present_rate for n in x}
    return x, present, g
