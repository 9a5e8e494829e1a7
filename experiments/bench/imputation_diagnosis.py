"""Where the cross-modal information is lost when the decoder imputes a hidden modality.

    python experiments/bench/imputation_diagnosis.py --cohort cohorts/gbmlgg.zarr --subset rna,mutations \
        --fold 0 --out diag.json [--epochs 30] [--set hide_modality_prob=0.5] [--model cross_linear=true]

For one fold's MAE (pretrained like ``experiments/bench/imputation.py`` does, or taken from the
cache under ``--storage``) and each tabular modality ``m`` with another tabular modality beside it,
on the fold's *validation* patients who have ``m`` and a source (``m`` hidden, exactly as for
imputation):

- ``decoder_r2``: the decoder's imputation, variance-weighted R^2;
- ``spread_ratio``: median over features of (std across patients of the imputation / std of the
  truth): near 0 = the decoder gives every patient about the same values (the mean);
- ``corr_median``: median over features of the correlation of imputation and truth;
- linear probes (``RidgeCV``, fitted on the MAE's own pretraining patients who have ``m`` and a
  source, with ``m`` hidden the same way; scored on the validation patients): from the raw source
  values (``probe_raw_sources``: what a linear map of the inputs can do), from the source
  modality's encoder output (``probe_source_encoder``: is it still there after the encoder?) and
  from the decoder's last states at ``m``'s own positions (``probe_decoder_states``: has the
  fusion brought it to where ``m`` is predicted?). If the last probe is near the raw one while
  ``decoder_r2`` is near 0, the output head is where it is lost; if the last probe is near 0, the
  fusion never delivered it.

Writes one JSON row per hidden modality; prints them.
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

PROBE_ALPHAS = tuple(10.0 ** k for k in range(-1, 7))


def main(argv=None) -> int:
    from pretrain_settings import space_settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True)
    p.add_argument("--subset", required=True)
    p.add_argument("--fold", type=int, required=True, help="a validation fold (>= 0)")
    p.add_argument("--out", required=True)
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "gbmlgg.yaml"))
    p.add_argument("--storage", default="runs")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.fold < 0:
        print("error: --fold takes a validation fold (>= 0)", file=sys.stderr)
        return 2

    from impumae.engine.pretrain_jobs import ensure_pretrained, job_for

    space, model, pretrain = space_settings(args)
    job, _, _ = job_for(args.cohort, args.subset, args.fold, model, pretrain, args.seed, space.transforms)
    start = time.perf_counter()
    ensure_pretrained(job, args.storage, workers=0, echo=lambda *a, **k: None)
    print(f"pretraining {time.perf_counter() - start:.0f} s (0 = cached); key {job.key}", flush=True)
    rows = diagnose(job, args.storage)
    for r in rows:
        print(json.dumps(r), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


def diagnose(job, storage: str) -> list[dict]:
    import numpy as np

    from impumae.data.cohort_view import load_cohort_arrays
    from impumae.engine.pretrain_jobs import load_pretrained
    from impumae.evaluation.imputation_quality import transformed_values
    from impumae.train.imputers import per_feature_r2

    ca = load_cohort_arrays(job.cohort_url, tuple(job.modalities))
    pretrained = load_pretrained(job, storage)
    mae = pretrained.model.eval()
    mae.cfg.skip_missing = False  # every row through every encoder, so the hooks see whole batches
    train_idx = np.flatnonzero(np.isin(ca.ids, np.asarray(pretrained.train_ids, dtype=str)))
    val_idx = ca.validation_indices(job.fold)
    tabular = [m for m in mae.names if mae.kinds[m].has_feature_names]
    rows = []
    for m in tabular:
        sources = [o for o in tabular if o != m]
        if not sources:
            continue
        sets = {}
        for part, idx in (("train", train_idx), ("validation", val_idx)):
            has_source = np.any([ca.present[o][idx] for o in sources], axis=0)
            chosen = idx[ca.present[m][idx] & has_source]
            values = transformed_values(ca, list(mae.names), pretrained.transforms, chosen)
            present = {o: ca.present[o][chosen] & (o != m) for o in mae.names}
            sets[part] = (values, present, hidden_states(mae, values, present, m, sources))
        truth = {part: np.asarray(s[0][m], np.float64) for part, s in sets.items()}
        features = {
            "probe_raw_sources": {part: np.concatenate(
                [np.asarray(s[0][o], np.float64) * s[1][o][:, None] for o in sources]
                + [s[1][o][:, None].astype(np.float64) for o in sources], axis=1) for part, s in sets.items()},
            "probe_source_encoder": {part: s[2]["source_encoder"] for part, s in sets.items()},
            "probe_decoder_states": {part: s[2]["decoder_states"] for part, s in sets.items()},
        }
        pred = sets["validation"][2]["imputation"]
        t = truth["validation"]
        sd_t, sd_p = t.std(0), pred.std(0)
        varying = sd_t > 0
        corr = [np.corrcoef(t[:, j], pred[:, j])[0, 1] if sd_p[j] > 0 else 0.0 for j in np.flatnonzero(varying)]
        row = {"modality": m, "sources": sources, "fold": job.fold, "key": job.key,
               "pretrain_epochs": job.pretrain.get("epochs"), "model": job.model, "pretrain": job.pretrain,
               "n_train": int(len(truth["train"])), "n_validation": int(len(t)),
               "decoder_r2": r2(t, pred), "decoder_r2_median": float(np.nanmedian(per_feature_r2(t, pred))),
               "spread_ratio": float(np.median(sd_p[varying] / sd_t[varying])),
               "corr_median": float(np.median(corr))}
        for name, x in features.items():
            row[name] = probe(x["train"], truth["train"], x["validation"], t)
        rows.append(row)
    return rows


def hidden_states(mae, values, present, target, sources, batch_size: int = 128) -> dict:
    """The decoder's imputation of ``target`` (hidden), its last decoder states at ``target``'s
    token positions and the sources' encoder outputs (every token visible), flattened per patient."""
    import numpy as np
    import torch

    seen = {}
    hooks = [mae.decoder_norm.register_forward_hook(lambda mod, i, o: seen.__setitem__("decoder", o))]
    for o in sources:
        hooks.append(mae.encoders[o].register_forward_hook(
            lambda mod, i, out, o=o: seen.__setitem__(o, out)))
    start_slot = sum(mae.decoder_slots[:mae.names.index(target)])
    n = len(next(iter(present.values())))
    out = {"imputation": [], "decoder_states": [], "source_encoder": []}
    try:
        with torch.no_grad():
            for begin in range(0, n, batch_size):
                rows = slice(begin, begin + batch_size)
                x = {o: torch.as_tensor(values[o][rows]) for o in mae.names}
                p = {o: torch.as_tensor(present[o][rows]) for o in mae.names}
                seen.clear()
                recon = mae.reconstruct(x, p)[target].float().numpy()
                dec = seen["decoder"][:, start_slot + 1:start_slot + mae.decoder_slots[mae.names.index(target)]]
                enc = [seen[o].reshape(len(recon), -1) * p[o][:, None].float() for o in sources
                       if o in seen and seen[o].shape[0] == len(recon)]
                out["imputation"].append(recon.reshape(len(recon), -1))
                out["decoder_states"].append(dec.reshape(len(recon), -1).float().numpy())
                out["source_encoder"].append(torch.cat(enc, 1).float().numpy() if enc else np.zeros((len(recon), 0)))
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def probe(x_train, y_train, x_val, y_val) -> float:
    """Variance-weighted R^2 on validation of a RidgeCV (standardised inputs) fitted on training."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if x_train.shape[1] == 0:
        return float("nan")
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=PROBE_ALPHAS, cv=5)).fit(x_train, y_train)
    return r2(y_val, model.predict(x_val))


def r2(truth, pred) -> float:
    from sklearn.metrics import r2_score
    return float(r2_score(truth, pred, multioutput="variance_weighted"))


if __name__ == "__main__":
    sys.exit(main())
