"""Reference imputers (fitted on training rows only), per-feature R^2 and the validation-only choice."""

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from impumae.train.imputers import (
    CHOOSABLE, REFERENCES, RIDGE_ALPHAS, ImputerError, ReferenceImputer, choose_imputers, fit_chosen,
    impute_with_references, imputation_provenance, per_feature_r2, r2_summary, unvalidated)


def linked(n=240, seed=0):
    """RNA (12 features) a linear function of mutations (5 flags) plus noise; some rows miss one."""
    rng = np.random.default_rng(seed)
    mut = (rng.random((n, 5)) < 0.4).astype(np.float64)
    w = rng.normal(size=(5, 12))
    rna = mut @ w + 0.5 * rng.normal(size=(n, 12))
    present = {"rna": rng.random(n) > 0.2, "mutations": rng.random(n) > 0.15}
    present["mutations"][~present["rna"]] = True   # every patient has at least one
    return {"rna": rna, "mutations": mut}, present


@pytest.mark.parametrize("method", REFERENCES)
def test_references_read_training_rows_only(method):
    values, present = linked()
    train, evaluate = np.arange(160), np.arange(160, 240)
    imputer = ReferenceImputer(method, "rna", ("mutations",)).fit(values, present, train)
    rows = evaluate[5:]
    first = imputer.predict(values, present, rows)
    # anything outside the training rows changes: a refit gives the same imputer
    spoiled = {m: v.copy() for m, v in values.items()}
    spoiled["rna"][evaluate] = 1e3
    spoiled["mutations"][evaluate[:5]] = 7.0
    again = ReferenceImputer(method, "rna", ("mutations",)).fit(spoiled, present, train)
    np.testing.assert_allclose(again.predict(spoiled, present, rows), first, rtol=1e-6, atol=1e-6)
    # ...and the imputed rows' own target is never read (kNN's tie-breaking between equally near
    # binary neighbours can depend on the batch's shape, so the same rows are compared)
    assert first.shape == (75, 12)
    np.testing.assert_allclose(imputer.predict(spoiled, present, rows), first, rtol=1e-6, atol=1e-6)


def test_ridge_is_sklearn_ridgecv_on_the_training_rows_and_learns_the_map():
    values, present = linked()
    train, evaluate = np.arange(160), np.arange(160, 240)
    imputer = ReferenceImputer("ridge", "rna", ("mutations",)).fit(values, present, train)
    usable = train[present["rna"][train] & present["mutations"][train]]
    x = np.concatenate([values["mutations"][usable], np.ones((len(usable), 1))], axis=1)
    reference = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, cv=KFold(5, shuffle=True, random_state=0)))
    reference.fit(x, values["rna"][usable])
    assert imputer.info["alpha"] == reference[-1].alpha_
    both = evaluate[present["rna"][evaluate] & present["mutations"][evaluate]]
    xe = np.concatenate([values["mutations"][both], np.ones((len(both), 1))], axis=1)
    np.testing.assert_allclose(imputer.predict(values, present, both), reference.predict(xe), rtol=1e-6, atol=1e-8)
    truth = values["rna"][both]
    assert r2_score(truth, imputer.predict(values, present, both), multioutput="variance_weighted") > 0.6
    mean = ReferenceImputer("mean", "rna", ()).fit(values, present, train)
    np.testing.assert_allclose(mean.predict(values, present, both)[0], values["rna"][train][present["rna"][train]].mean(0))


def test_iterative_beats_the_mean_on_a_linear_map():
    values, present = linked()
    train = np.arange(160)
    both = np.arange(160, 240)[present["rna"][160:] & present["mutations"][160:]]
    truth = values["rna"][both]
    scores = {m: r2_score(truth, ReferenceImputer(m, "rna", ("mutations",)).fit(values, present, train)
                          .predict(values, present, both), multioutput="variance_weighted")
              for m in ("iterative", "mean")}
    assert scores["iterative"] > scores["mean"] + 0.3


def test_bad_requests_are_refused():
    values, present = linked()
    with pytest.raises(ImputerError, match="unknown reference imputer"):
        ReferenceImputer("lasso", "rna", ("mutations",))
    with pytest.raises(ImputerError, match="needs at least one other modality"):
        ReferenceImputer("ridge", "rna", ())
    with pytest.raises(ImputerError, match="its own sources"):
        ReferenceImputer("knn", "rna", ("rna",))
    with pytest.raises(ImputerError, match="only 3 training patients"):
        ReferenceImputer("ridge", "rna", ("mutations",)).fit(values, present, np.flatnonzero(present["rna"])[:3])
    with pytest.raises(ImputerError, match="not fitted"):
        ReferenceImputer("ridge", "rna", ("mutations",)).predict(values, present, np.arange(3))


def test_per_feature_r2_matches_sklearn_and_marks_constant_features():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(30, 4))
    truth[:, 2] = 1.0
    pred = truth + 0.3 * rng.normal(size=truth.shape)
    got = per_feature_r2(truth, pred)
    for j in (0, 1, 3):
        assert got[j] == pytest.approx(r2_score(truth[:, j], pred[:, j]))
    assert np.isnan(got[2])
    summary = r2_summary(got)
    assert summary["n_features_r2_defined"] == 3 and summary["n_features_r2_above_0.3"] == 3
    assert summary["r2_median"] == pytest.approx(np.median(got[[0, 1, 3]]))


def rows_for(scores: dict, folds=(0, 1, 2), modality="rna"):
    return [{"modality": modality, "method": m, "fold": f, "n_patients": 10, "r2": s + 0.01 * f,
             "r2_per_feature": [s, s + 0.1]} for m, s in scores.items() for f in folds]


def test_choice_is_the_best_mean_validation_r2_and_records_it():
    rows = rows_for({"decoder": -0.01, "mean": -0.005, "knn": -0.1, "ridge": 0.06, "iterative": 0.5})
    choice = choose_imputers(rows)
    c = choice["rna"]
    assert c["method"] == "ridge"                # iterative is a reference, not a choosable imputer
    assert c["validation_r2"] == pytest.approx(0.07)
    assert set(c["validation_r2_by_method"]) == set(CHOOSABLE)
    assert c["folds"] == [0, 1, 2] and c["n_patients"] == 30
    assert c["validation_r2_per_feature"] == pytest.approx([0.06, 0.16])


def test_choice_never_reads_the_holdout_and_needs_every_fold():
    rows = rows_for({"decoder": 0.2, "ridge": 0.1})
    with pytest.raises(ImputerError, match="validation folds only"):
        choose_imputers(rows + [{"modality": "rna", "method": "decoder", "fold": -1, "n_patients": 5, "r2": 0.9}])
    with pytest.raises(ImputerError, match="validation folds only"):
        choose_imputers([{"modality": "rna", "method": "decoder", "n_patients": 5, "r2": 0.9}])
    # a method missing on one fold (or NaN there) is not compared
    partial = [r for r in rows if not (r["method"] == "decoder" and r["fold"] == 2)]
    assert choose_imputers(partial)["rna"]["method"] == "ridge"
    with pytest.raises(ImputerError, match="no validation rows"):
        choose_imputers([])


def test_fitted_choice_imputes_the_missing_rows_and_provenance_reads_back():
    values, present = linked()
    choice = {"rna": {"method": "ridge"}, "mutations": {"method": "decoder"}}
    fitted = fit_chosen(choice, ["rna", "mutations"], values, present, np.arange(160))
    assert set(fitted) == {"rna"}
    out = impute_with_references(fitted, values, present)
    rows, imputed = out["rna"]
    np.testing.assert_array_equal(rows, np.flatnonzero(~present["rna"]))
    assert imputed.shape == (len(rows), 12) and np.isfinite(imputed).all()
    provenance = {"imputers": unvalidated(["rna"], reason="no fold checkpoints")}
    assert imputation_provenance(provenance)["rna"]["validation_r2"] is None
    assert imputation_provenance({}) == {}
