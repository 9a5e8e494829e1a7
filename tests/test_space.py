"""Search spaces from YAML: sections, validation, 'extends', and the shipped files."""
from pathlib import Path

import pytest

from impumae.engine.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_loads_and_samples(path):
    space = SearchSpace.load(path)
    assert space.model and space.pretrain and space.search
    assert set(space.optuna_distributions()) >= set(space.search)


def test_extends_adds_and_replaces_parameters_of_the_parent():
    default = SearchSpace.load(ROOT / "search_spaces" / "default.yaml")
    freeze = SearchSpace.load(ROOT / "search_spaces" / "default_freeze_searched.yaml")
    no_decoder = SearchSpace.load(ROOT / "search_spaces" / "default_without_decoder_imputation.yaml")
    assert (freeze.model, freeze.pretrain, freeze.finetune) == (default.model, default.pretrain, default.finetune)
    assert freeze.search == {**default.search, "freeze": {"type": "categorical", "choices": ["paper", "none"]}}
    assert no_decoder.search["imputation"]["choices"] == ["mask_token", "drop"]
    assert {k: v for k, v in no_decoder.search.items() if k != "imputation"} == \
        {k: v for k, v in default.search.items() if k != "imputation"}
    assert "extends" in freeze.source and "default.yaml" in freeze.source


def test_extends_loop_and_bad_files_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        SearchSpace.load(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ValueError, match="missing.yaml does not exist"):
        SearchSpace.load(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("searchh: {}\n")
    with pytest.raises(ValueError, match=r"d.yaml: unknown section\(s\) \['searchh'\]"):
        SearchSpace.load(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("search:\n  lr: {type: gaussian, low: 1, high: 2}\n")
    with pytest.raises(ValueError, match="e.yaml"):
        SearchSpace.load(tmp_path / "e.yaml")
    (tmp_path / "f.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        SearchSpace.load(tmp_path / "f.yaml")
