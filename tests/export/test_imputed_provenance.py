"""predict.py --imputed-out: the store says what filled each modality (readable like impute.py's)."""

from impumae.train.imputers import imputation_provenance
from impumae.export.align import align_cohort
from impumae.export.predict import write_imputed

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
