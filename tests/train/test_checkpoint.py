"""Checkpoints: atomic save through impumae.storage (local and fsspec), weights-only load, one rebuild."""
import pytest
import torch

from impumae.data.transforms import FoldTransforms
from impumae.model import MAEConfig, MultimodalMAE
from impumae.modalities import ModalitySpec
from impumae.train import checkpoint

SPECS = {"rna": ModalitySpec("rna", "tabular", (32,), patch=16, depth=1),
         "mri": ModalitySpec("mri", "volume", (8, 8, 8), patch=4, depth=1)}
TINY = MAEConfig(width=32, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_pretrained_round_trip_rebuilds_the_same_model(tmp_path, where):
    url = str(tmp_path / "a" / "mae.pt") if where == "local" else "memory://checkpoint-test/a/mae.pt"
    torch.manual_seed(0)
    model = MultimodalMAE(SPECS, TINY)
    transforms = FoldTransforms({}, ["p1"])
    checkpoint.save_pretrained(url, model, transforms, {"fold": 0}, ["p1", "p2"], [{"epoch": 0, "loss": 1.0}])
    loaded = checkpoint.load_pretrained(url)
    for (name, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.train_ids == ["p1", "p2"] and loaded.job == {"fold": 0} and loaded.transforms.train_ids == ["p1"]
    if where == "local":
        assert [p.name for p in (tmp_path / "a").iterdir()] == ["mae.pt"]  # no temporary file left


def test_fresh_weights_are_seeded_without_touching_the_global_rng(tmp_path):
    url = str(tmp_path / "mae.pt")
    checkpoint.save_pretrained(url, MultimodalMAE(SPECS, TINY), FoldTransforms(), {}, [], [])
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    a = checkpoint.load_pretrained(url, load_weights=False, seed=3).model
    assert torch.equal(torch.rand(2), expected)
    b = checkpoint.load_pretrained(url, load_weights=False, seed=3).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_wrong_or_missing_checkpoints_are_clear_errors(tmp_path):
    url = str(tmp_path / "other.pt")
    checkpoint.save(url, {"format": "something-else"})
    with pytest.raises(ValueError, match="not a pretrained impumae MAE"):
        checkpoint.load_pretrained(url)
    with pytest.raises(ValueError, match="not an impumae pretraining checkpoint"):
        checkpoint.load_resume(url)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(str(tmp_path / "absent.pt"))
