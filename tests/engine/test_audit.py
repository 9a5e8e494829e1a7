"""The audit trail: what each stage saw, and the check that the holdout reached no other stage."""
from impumae.engine import audit


def test_record_and_load_round_trip(tmp_path):
    audit.record(str(tmp_path), "pretrain-rna-fold0", train=["b", "a"])
    audit.record(str(tmp_path), "holdout", anchor=["h1"])
    assert audit.load(str(tmp_path)) == {"pretrain-rna-fold0": {"train": ["a", "b"]}, "holdout": {"anchor": ["h1"]}}
    assert not [p for p in (tmp_path / "audit").iterdir() if not p.name.endswith(".json")]  # no temporary file


def test_check_catches_a_holdout_id_outside_the_holdout_stage(tmp_path):
    audit.record(str(tmp_path), "finetune-t1-fold0", train=["p1", "p2"], validate=["p3"])
    audit.record(str(tmp_path), "holdout", anchor=["h1", "h2"])
    assert audit.check_holdout_isolation(str(tmp_path), ["h1", "h2"]) == []
    audit.record(str(tmp_path), "refit-finetune", train=["p1", "h2"])
    assert audit.check_holdout_isolation(str(tmp_path), ["h1", "h2"]) == ["refit-finetune:train"]


def test_an_empty_search_folder_has_no_audit(tmp_path):
    assert audit.load(str(tmp_path / "nothing")) == {}
