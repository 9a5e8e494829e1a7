"""experiments/bench/oracle_ratio.py: a search's holdout Harrell C against the synthetic cohort's
true risk, read from the files a search writes."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sksurv.metrics import concordance_index_censored

from impumae.data.store import Cohort
from impumae.data.synthetic import build_synthetic

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("oracle_ratio", ROOT / "experiments" / "bench" / "oracle_ratio.py")
oracle_ratio = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oracle_ratio)


def test_the_ratio_is_harrells_c_of_the_saved_curves_over_the_true_risks(tmp_path):
    url = str(build_synthetic(str(tmp_path / "c.zarr"), n_patients=120, seed=4, progress=False).url)
    labels = Cohort.open(url).labels
    rows = labels.iloc[:40]
    time, event = rows["time"].to_numpy(float), rows["event"].to_numpy(bool)
    cuts = np.linspace(0, time.max(), 6)
    noisy = rows["true_risk"].to_numpy(float) + np.random.default_rng(0).normal(0, 1.0, len(rows))
    survival = np.exp(-np.exp(noisy)[:, None] * cuts[None, :] / time.mean())   # higher risk, lower curve
    search = tmp_path / "search"
    search.mkdir()
    np.savez(search / "holdout_predictions.npz", patient_id=rows.index.to_numpy().astype(str), survival=survival,
             cuts=cuts, time=time, event=event)
    r = oracle_ratio.oracle_ratio(str(search), url)
    oracle = concordance_index_censored(event, time, rows["true_risk"].to_numpy(float))[0]
    assert r["n"] == 40 and r["oracle_harrell_c"] == pytest.approx(oracle)
    assert r["ratio"] == pytest.approx(r["model_harrell_c"] / oracle) and 0.5 < r["ratio"] < 1.2
    with pytest.raises(SystemExit, match="not in this cohort"):
        np.savez(search / "holdout_predictions.npz", patient_id=np.array(["nobody"] * 40), survival=survival,
                 cuts=cuts, time=time, event=event)
        oracle_ratio.oracle_ratio(str(search), url)
