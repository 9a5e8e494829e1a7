"""predict.py --imputed-out: the store says what filled each modality (readable like impute.py's)."""

from impumae.train.imputers import imputation_provenance
from impumae.export.align import align_cohort
from impumae.export.predict import cohort_imputation_lines, write_imputed

from .conftest import external_store


def test_imputed_out_records_the_decoder_as_unvalidated(refit, tmp_path):
    _, model, *_ = refit
    source, _ = external_store(tmp_path / "source.zarr", seed=5, drop={"rna": 0.1})
    imputed, _ = write_imputed(model, align_cohort(model, source), source, str(tmp_path / "imputed.zarr"))
    recorded = imputation_provenance(imputed)
    filled = [m for m in source.modalities if imputed.imputed[m].to_numpy().any()]
    assert filled and sorted(recorded) == sorted(filled)
    for entry in recorded.values():
        assert entry["method"] == "decoder" and entry["validation_r2"] is None and entry["note"]
    assert entry["decoder_cross_linear"] == model.predictor.model.mae.cfg.cross_linear
    # predict.py reads it back when such a store is its --cohort
    lines = cohort_imputation_lines(imputed)
    assert "holds imputed values" in lines[0]
    assert any(line.strip().startswith(f"{m}: imputed by decoder, not validated") for m in filled for line in lines[1:])
    assert cohort_imputation_lines(source) == []                      # measured values only: nothing to say


def test_a_validated_choice_is_described_with_its_r2_and_good_features():
    from impumae.train.imputers import describe_provenance
    entry = {"method": "ridge", "forced": False, "validation_r2": 0.0534, "folds": [0, 1, 2, 3, 4],
             "validation_r2_per_feature": [0.5, 0.1, None, 0.31]}
    assert describe_provenance({"rna": entry}) == [
        "rna: imputed by ridge, validation R2 +0.053 over folds [0, 1, 2, 3, 4], 2/3 features above 0.3"]
