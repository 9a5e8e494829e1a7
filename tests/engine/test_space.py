"""Search spaces from YAML: sections, validation, 'extends', and the shipped files."""
from pathlib import Path

import pytest

from impumae.engine.space import SearchSpace

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("files, error", [
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "loops back"),
    ({"a.yaml": "extends: missing.yaml\n"}, "missing.yaml does not exist"),
    ({"a.yaml": "searchh: {}\n"}, r"a.yaml: unknown section\(s\) \['searchh'\]"),
    ({"a.yaml": "search:\n  lr: {type: gaussian, low: 1, high: 2}\n"}, "a.yaml"),
    ({"a.yaml": "- a list\n"}, "expected a mapping"),
], ids=["extends-loop", "missing-parent", "unknown-section", "unknown-type", "not-a-mapping"])
def test_extends_loop_and_bad_files_are_named(tmp_path, files, error):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=error):
        SearchSpace.load(tmp_path / "a.yaml")


@pytest.mark.parametrize("name", ["default.yaml", "gbmlgg.yaml"])
def test_the_default_and_real_cohort_spaces_search_the_regularisation_and_fix_the_schedule(name):
    space = SearchSpace.load(ROOT / "search_spaces" / name)
    search = space.search
    assert search["lr"] == {"type": "loguniform", "low": 1e-4, "high": 3e-3}
    assert search["weight_decay"] == {"type": "loguniform", "low": 1e-4, "high": 1e-1}
    assert search["freeze"] == {"type": "categorical", "choices": ["paper", "none"]}
    assert search["linear_l2"] == {"type": "loguniform", "low": 0.1, "high": 3.0}
    assert search["linear_lr_mult"] == {"type": "loguniform", "low": 1.0, "high": 10.0}
    # the epoch is fixed from each configuration's mean validation curve: the schedule is not searched
    assert "epochs" not in search and space.finetune["epochs"] == 12
    assert space.finetune["linear_path"] is True and space.finetune["km_init"] is True


def test_the_real_cohort_space_extends_the_default():
    default = SearchSpace.load(ROOT / "search_spaces" / "default.yaml")
    gbmlgg = SearchSpace.load(ROOT / "search_spaces" / "gbmlgg.yaml")
    assert "extends" in gbmlgg.source and (gbmlgg.model, gbmlgg.pretrain) == (default.model, default.pretrain)


def test_the_space_says_whether_its_trials_use_pretraining():
    assert SearchSpace().pretraining() == "on"
    assert SearchSpace.load(ROOT / "search_spaces" / "gbmlgg.yaml").pretraining() == "searched"
    assert SearchSpace(search={"pretrained": {"type": "categorical", "choices": [False]}}).pretraining() == "off"
    assert SearchSpace(finetune={"pretrained": False}).pretraining() == "off"
