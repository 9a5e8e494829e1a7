"""A search's holdout C-index against the oracle's, on a synthetic cohort (which knows its true risk).

    python experiments/bench/oracle_ratio.py SEARCH_DIR [--cohort URL]   # default: the embedded cohort

SEARCH_DIR is a finished search (``cv_search.py`` prints it: ``storage .../<search name>``); its
``holdout_predictions.npz`` holds the refit's survival curves for the holdout patients with the
anchor modality. The model's risk is :func:`impumae.survival.metrics.survival_risk` of those curves
(what the holdout, the report and the exported models use); the oracle's is the cohort's
``true_risk`` (the log-hazard the synthetic times were drawn from). Both are scored with Harrell's C
on the same patients, and the ratio model / oracle is printed (issue #12's target: >= 0.95 on the
embedded default). Only synthetic cohorts have ``true_risk``.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from impumae import storage
from impumae.data.store import Cohort
from impumae.data.cohort_view import resolve_cohort
from impumae.engine.holdout import PREDICTIONS_FILE, saved_survival
from impumae.survival.metrics import concordance_harrell, survival_risk

ROOT = Path(__file__).resolve().parents[2]


def oracle_ratio(search_dir: str, cohort: str | None = None) -> dict:
    with np.load(io.BytesIO(storage.read_bytes(storage.join(search_dir, PREDICTIONS_FILE)))) as f:
        predictions = {k: f[k] for k in f.files}
    url = resolve_cohort(cohort, echo=lambda *_: None)
    labels = Cohort.open(url).labels
    if "true_risk" not in labels.columns:
        raise SystemExit(f"{url}: the cohort has no true_risk column (only synthetic cohorts know their true risk)")
    ids = predictions["patient_id"].astype(str)
    true_risk_by_id = labels["true_risk"].set_axis(labels.index.astype(str))  # ids compared as text on both sides
    missing = sorted(set(ids) - set(true_risk_by_id.index))
    if missing:
        raise SystemExit(f"{url}: holdout patients {missing[:5]} of {search_dir} are not in this cohort")
    true_risk = true_risk_by_id.reindex(ids).to_numpy(np.float64)
    time, event = predictions["time"], predictions["event"]
    model_c = concordance_harrell(survival_risk(saved_survival(predictions), predictions["cuts"]), time, event)
    oracle_c = concordance_harrell(true_risk, time, event)
    return {"search_dir": search_dir, "cohort": url, "n": len(ids), "events": int(event.sum()),
            "model_harrell_c": model_c, "oracle_harrell_c": oracle_c, "ratio": model_c / oracle_c}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("search_dir")
    p.add_argument("--cohort", default=None, help="the cohort store the search ran on (default: the embedded default cohort, as cv_search.py)")
    args = p.parse_args(argv)
    r = oracle_ratio(args.search_dir, args.cohort)
    print(f"{r['search_dir']}: holdout patients with the anchor n = {r['n']} ({r['events']} deaths); "
          f"Harrell's C model {r['model_harrell_c']:.3f}, oracle (true_risk) {r['oracle_harrell_c']:.3f}; "
          f"ratio {r['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
