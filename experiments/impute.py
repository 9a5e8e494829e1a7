"""Fill a cohort's missing modalities with a pretrained MAE's decoder or the reference imputer that
beat it on validation folds, into a NEW cohort store.

    python experiments/impute.py --cohort cohort.zarr --checkpoint runs/pretrain/<key>/mae.pt --out imputed.zarr \
        [--imputer auto|decoder|ridge|knn|mean] [--pretrain-folds] [--validation-rows rows.json]

Which imputer (``--imputer auto``, the default): the fold checkpoints of the same pretraining that
are cached beside the checkpoint (``--storage``; ``--pretrain-folds`` trains the missing ones) are
scored on their validation patients (``impumae.evaluation.imputation_quality``), and per modality the
best of decoder, ridge, kNN and mean by mean validation R^2 is used (``imputation_choice``); a
reference imputer is then fitted on the checkpoint's own training patients, in its model space.
Where no fold checkpoint exists the decoder fills the modality and the store says it is not
validated. ``provenance["imputers"][modality]`` records the method, whether it was forced, its
validation R^2 (variance-weighted, by method, and per feature) and the folds
(``impumae.train.imputers.imputation_provenance`` reads it).

For every patient and every tokenised modality of the checkpoint that the patient lacks, the MAE
reconstructs the modality from the modalities the patient has (deterministic: eval mode, nothing
masked but what is missing). The reconstruction lives in the model's space (the checkpoint's
fold-fitted transforms: feature filter, log1p + per-sample median for fpkm_uq, NaN fill, images
/255) and is mapped back to the store's input space with ``FoldTransforms.inverse`` (fpkm_uq:
``expm1(x * m)`` with m the training median of per-sample medians; features dropped by the filter:
their training raw mean; images: x255 -> uint8). A patient with none of the checkpoint's modalities
gets the decoder's reconstruction from mask tokens alone (its population-level guess).

The new store is the source store plus the imputed values, with
- ``present`` exactly as in the source (True = measured), so nothing downstream mistakes an
  imputed value for a measured one;
- ``imputed`` bool [patients, modalities] (column order = attrs.modalities): True where the value
  is the decoder's (``imputed == ~present`` on the checkpoint's modalities, False elsewhere);
- the same labels, splits (copied, with their attributes), feature names and value types;
  provenance records the source store, its provenance and the checkpoint.

Atomic: the store is written by ``impumae.data.store.write_imputed_cohort`` under a temporary name
beside ``--out`` and only then moved to ``--out``; on any failure the temporary store is removed.
The source store is only read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True, help="source cohort store (path or fsspec URL); left untouched")
    p.add_argument("--checkpoint", required=True, help="a pretrained MAE checkpoint (<storage>/pretrain/<key>/mae.pt)")
    p.add_argument("--out", required=True, help="the new cohort store to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--imputer", default="auto", choices=("auto", "decoder", "ridge", "knn", "mean"),
                   help="auto (default): per modality, the best of decoder, ridge, kNN and mean by validation R^2 over "
                        "the fold checkpoints of the same pretraining; or force one (recorded as forced)")
    p.add_argument("--storage", default=None,
                   help="where the fold checkpoints live (default: the checkpoint's own storage, <storage>/pretrain/<key>/mae.pt)")
    p.add_argument("--validation-rows", default=None,
                   help="JSON rows of experiments/bench/imputation.py (validation folds) to choose from instead")
    p.add_argument("--pretrain-folds", action="store_true",
                   help="pretrain the fold checkpoints the choice needs when they are not cached")
    p.add_argument("--batch-size", type=int, default=128, help="patients per forward pass (default %(default)s)")
    p.add_argument("--shard-patients", type=int, default=64, help="patients per zarr shard (default %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from impumae import storage
    from impumae.data.store import Cohort, CohortError, write_imputed_cohort
    from impumae.train.imputation import invertible_transforms, load_imputer
    from impumae.engine.pretrain_jobs import PretrainJob
    from impumae.evaluation import imputation_choice as ic
    from impumae.train.imputers import ImputerError

    try:
        source = Cohort.open(args.cohort)
        target = storage.Location(args.out)
        if target == storage.Location(source.url):
            raise ValueError("--out is the source store; impute.py writes a new store and never modifies the source")
        if target.exists() and not args.overwrite:
            raise ValueError(f"output path {target.url} already exists; pass --overwrite to replace it")
        pretrained = load_imputer(args.checkpoint)
        mae, transforms = pretrained.model, pretrained.transforms
        names = list(mae.names)
        missing = [m for m in names if m not in source.modalities]
        if missing:
            raise ValueError(f"the checkpoint's modality {missing[0]!r} is not in the cohort ({source.modalities})")
        for m in names:
            if transforms.transforms[m].output_spec(source.specs[m]).shape != mae.specs[m].shape:
                raise ValueError(f"modality {m!r}: the cohort's shape {source.specs[m].shape} does not match the checkpoint")
        job = pretrained.job
        print(f"source cohort {source.url}: {len(source)} patients, modalities {source.modalities}")
        print(f"checkpoint {args.checkpoint}: modalities {names}, fold "
              f"{'refit' if job.get('fold') == -1 else job.get('fold')}, {len(pretrained.train_ids)} pretraining patients")

        arrays = {m: source.load(m) for m in source.modalities}
        present_df = source.present
        present = {m: present_df[m].to_numpy(bool) for m in source.modalities}
        transforms = invertible_transforms(transforms, names, source, arrays, present, pretrained.train_ids)
        none_of_them = int((~np.any([present[m] for m in names], axis=0)).sum())
        rows = []
        if args.validation_rows:
            rows = ic.read_validation_rows(args.validation_rows, PretrainJob.from_dict(job), source.url)
        else:  # also for a forced method: its validation R^2 is recorded where the folds have it
            storage_url = args.storage or str(Path(args.checkpoint).resolve().parents[2])
            rows = ic.validation_rows(PretrainJob.from_dict(job), storage_url, cohort_url=source.url,
                                      pretrain_missing=args.pretrain_folds)
        choice = ic.choose(rows, names, args.imputer)
        for m, c in choice.items():
            r2 = c.get("validation_r2")
            print(f"  {m}: {c['method']}" + (" (forced)" if c.get("forced") else "")
                  + (f", validation R2 {r2:+.3f} over folds {c['folds']}" if r2 is not None else ", not validated")
                  + (f"; by method {', '.join(f'{k} {v:+.3f}' for k, v in c['validation_r2_by_method'].items())}"
                     if c.get("validation_r2_by_method") else ""))
        train_idx = (ic.training_indices(source.patient_ids, pretrained.train_ids)
                     if any(c["method"] != "decoder" for c in choice.values()) else np.zeros(0, np.int64))
        filled, choice = ic.impute_chosen(mae, transforms, arrays, present, train_idx, choice, args.batch_size)
        imputed = np.zeros((len(source), len(source.modalities)), dtype=bool)
        values = {m: arrays[m] for m in source.modalities}
        for m, (rows, v) in filled.items():
            if len(rows):
                values[m] = arrays[m].copy()
                values[m][rows] = v.astype(values[m].dtype)
                imputed[rows, source.modalities.index(m)] = True
                print(f"  {m}: imputed {len(rows)} patients")
        if none_of_them:
            print(f"  ({none_of_them} patients have none of {names}: their imputations come from mask tokens alone)")

        out = write_imputed_cohort(
            source, target.url, values, imputed,
            provenance={"checkpoint": str(args.checkpoint), "checkpoint_job": job, "command": " ".join(sys.argv),
                        **ic.provenance_entry(choice)},
            imputed_modalities=names, overwrite=args.overwrite, shard_patients=args.shard_patients)
    except (ValueError, FileNotFoundError, CohortError, ImputerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out.url}: {len(out)} patients; imputed values: "
          + ", ".join(f"{m} {int(imputed[:, j].sum())}" for j, m in enumerate(out.modalities) if imputed[:, j].any())
          + "; `present` = measured (as in the source), `imputed` = filled by the decoder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
