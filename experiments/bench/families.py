"""Time per fold and validation scores of the scikit-survival model families, in process (no Ray).

Each family of :mod:`impumae.engine.families` (default settings) is fitted on each validation fold
of a cohort exactly as a search trial fits it (:func:`impumae.engine.families.fit_sksurv_fold`:
the fold's training patients with the anchor modality, the fold-fitted transforms, the common
grid) and scored on the fold's validation patients. Printed: per family, the wall-clock seconds
per fold (transforms + features + fit + scoring) and the mean ± SD over folds of the validation
C-index (Antolini) and CS-score. The holdout is never read.

    python experiments/bench/families.py --cohort /work/cohorts/gbmlgg.zarr --subset rna
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from impumae.engine.cohort_view import load_cohort_arrays
from impumae.engine.families import SKSURV_FAMILIES, fit_sksurv_fold
from impumae.modalities import parse_subset


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--subset", default="rna")
    parser.add_argument("--families", default=",".join(SKSURV_FAMILIES))
    parser.add_argument("--transforms", default='{"tabular_scaling": "rank_gauss"}',
                        help="the space's transforms: options as JSON (default: default.yaml's)")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args(argv)
    subset = parse_subset(args.subset)
    ca = load_cohort_arrays(args.cohort, subset)
    options = json.loads(args.transforms)
    out = {}
    for family in args.families.split(","):
        seconds, fit_seconds, c_index, cs = [], [], [], []
        for fold in range(ca.n_folds):
            started = time.perf_counter()
            fit = fit_sksurv_fold(ca, subset, fold, family, seed=fold, transform_options=options)
            seconds.append(time.perf_counter() - started)
            fit_seconds.append(fit.history[0]["fit_seconds"])
            c_index.append(fit.history[0]["val_c_index"])
            cs.append(fit.history[0]["val_cs_score"])
        out[family] = {"seconds_per_fold": float(np.mean(seconds)), "fit_seconds": float(np.mean(fit_seconds)), "val_c_index": [float(np.mean(c_index)), float(np.std(c_index))],
            "val_cs_score": [float(np.mean(cs)), float(np.std(cs))], "n_train": int(len(fit.train_rows))}
        print(f"{family:<7} {np.mean(seconds):7.2f} s/fold (fit {np.mean(fit_seconds):6.2f} s)   val C {np.mean(c_index):.3f} ± {np.std(c_index):.3f}   "
              f"val CS {np.mean(cs):.3f} ± {np.std(cs):.3f}   ({ca.n_folds} folds)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
