"""Survival C on the patients whose anchor modality is missing, with and without imputing it.

    python experiments/bench/anchor_missing.py --cohort cohorts/gbmlgg.zarr --subset rna,mutations \
        --fold 0 1 2 3 4 --storage runs --model cross_linear=ridge --out rows.json

Population: each validation fold's patients who have the other modalities of the subset but not
its anchor (the first, here RNA). The search never scores them (its populations need the anchor).
Per fold, everything fitted on the fold's training patients only, in the model space of the fold's
pretrained MAE (its checkpoint under ``--storage``, pretrained by ``experiments/bench/imputation.py``
with the same ``--model``/``--set``; the checkpoint's fold-fitted transforms):

- ``observed_only``: CoxNet (the report's baseline: elastic net, penalty by inner CV on the training
  patients; ``impumae.survival.baselines``) on the modalities the population has, trained on every
  training patient who has them;
- ``coxnet+<imputer>``: CoxNet on every modality of the subset, trained on the training patients who
  have them all (measured), applied to the population with the anchor imputed by ``<imputer>``:
  ``ridge`` (the reference, fitted on the training patients), ``decoder`` (the MAE's own imputation)
  and ``mean`` (the training mean: the model's other coefficients alone).

C is Antolini's time-dependent C on real times (``impumae.survival.metrics.concordance_antolini``).
impuTMAE fine-tuned with its imputation is not in this bench (a fine-tuning per fold; see
docs/results-gbmlgg.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments" / "bench"))


def main(argv=None) -> int:
    from pretrain_settings import space_settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True)
    p.add_argument("--subset", required=True, help="the anchor first, e.g. rna,mutations")
    p.add_argument("--fold", type=int, nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "gbmlgg.yaml"))
    p.add_argument("--storage", default="runs")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if any(k < 0 for k in args.fold):
        print("error: --fold takes validation folds (>= 0)", file=sys.stderr)
        return 2

    import warnings

    import numpy as np
    import torch

    from impumae.data.cohort_view import load_cohort_arrays
    from impumae.engine.pretrain_jobs import job_for, load_pretrained
    from impumae.survival.baselines import fit_predict_baseline
    from impumae.survival.metrics import concordance_antolini
    from impumae.train.imputers import ReferenceImputer

    warnings.filterwarnings("ignore")
    space, model, pretrain = space_settings(args)
    rows = []
    for fold in args.fold:
        job, _, subset = job_for(args.cohort, args.subset, fold, model, pretrain, args.seed, space.transforms)
        anchor, others = subset[0], [m for m in subset[1:]]
        ca = load_cohort_arrays(args.cohort, tuple(subset))
        pretrained = load_pretrained(job, args.storage)
        mae = pretrained.model.eval()
        values = pretrained.transforms.apply({m: ca.arrays[m] for m in subset}, ca.present)
        present = {m: np.asarray(ca.present[m], bool) for m in subset}
        train = np.asarray(pretrained.train_ids, dtype=str)
        train_idx = np.flatnonzero(np.isin(ca.ids, train))
        val_idx = ca.validation_indices(fold)
        assert not np.isin(ca.ids[val_idx], train).any()
        has_others = np.all([present[m] for m in others], axis=0)
        population = val_idx[has_others[val_idx] & ~present[anchor][val_idx]]
        train_others = train_idx[has_others[train_idx]]
        train_all = train_others[present[anchor][train_others]]
        time_, event = ca.time, ca.event

        def features(idx, anchor_values=None):
            blocks = [values[m][idx] for m in others]
            if anchor_values is not None:
                blocks = [anchor_values] + blocks
            return np.concatenate(blocks, axis=1).astype(np.float64)

        imputations = {
            "ridge": ReferenceImputer("ridge", anchor, tuple(others)).fit(values, present, train_idx)
            .predict(values, present, population),
            "mean": np.broadcast_to(values[anchor][train_idx[present[anchor][train_idx]]].mean(0),
                                    (len(population), values[anchor].shape[1])),
        }
        with torch.no_grad():
            x = {m: torch.as_tensor(values[m][population]) for m in mae.names}
            p_ = {m: torch.as_tensor(present[m][population]) for m in mae.names}
            imputations["decoder"] = mae.reconstruct(x, p_)[anchor].float().numpy()

        def score(pred):
            return float(concordance_antolini(pred.surv, pred.surv_times, time_[population], event[population]))

        start = time.perf_counter()
        results = {"observed_only": score(fit_predict_baseline(
            "coxnet", features(train_others), time_[train_others], event[train_others], features(population),
            seed=args.seed))}
        from impumae.survival.baselines import fit_baseline, predict_baseline
        full = fit_baseline("coxnet", features(train_all, values[anchor][train_all]), time_[train_all],
                            event[train_all], seed=args.seed)
        for name, imputed in imputations.items():
            results[f"coxnet+{name}"] = score(predict_baseline(full, features(population, imputed)))
        row = {"fold": fold, "subset": ",".join(subset), "anchor": anchor, "key": job.key,
               "n_population": int(len(population)), "events_population": int(event[population].sum()),
               "n_train_observed_only": int(len(train_others)), "n_train_all": int(len(train_all)),
               "fit_seconds": round(time.perf_counter() - start, 1), **results}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    if len(rows) > 1:
        for k in [k for k in rows[0] if k == "observed_only" or k.startswith("coxnet+")]:
            print(f"mean {k}: {np.mean([r[k] for r in rows]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
