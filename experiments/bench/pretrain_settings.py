"""Measure pretraining settings on one fold: validation recon_vs_mean per modality and seconds.

    python experiments/bench/pretrain_settings.py --fold 0 --set epochs=30 batch_size=16 lr=2e-3 \
        --model width=64 --patch rna=8 dna=16

Runs one pretraining job in this process (no Ray, nothing cached: a fresh temporary storage), on
the cohort's fold training patients, with the search space's ``model:``/``pretrain:`` sections
overridden by ``--model`` / ``--set``. ``--patch NAME=P`` re-tokenises a tabular modality for the
measurement only (the store is not changed), to compare token sizes before rebuilding a cohort.
Prints one line: the settings, recon_vs_mean per modality at the end, seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pairs(items: list[str]) -> dict:
    """``["lr=2e-3", "bf16=false", "name=x"]`` -> ``{"lr": 0.002, "bf16": False, "name": "x"}``."""
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out



def space_settings(args):
    """The search space of ``args.space`` with its ``model:`` and ``pretrain:`` sections overridden by
    ``--model`` / ``--set`` (and ``--epochs``, where the command has it): ``(space, model, pretrain)``."""
    from impumae.engine.space import SearchSpace

    space = SearchSpace.load(args.space)
    model = {**space.model, **pairs(args.model)}
    pretrain = {**space.pretrain, **pairs(args.set)}
    if getattr(args, "epochs", None) is not None:
        pretrain["epochs"] = args.epochs
    return space, model, pretrain

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", default=None)
    p.add_argument("--subset", default="rna,dna,mri")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "default.yaml"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="pretrain: overrides")
    p.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE", help="model: overrides")
    p.add_argument("--patch", nargs="*", default=[], metavar="NAME=P", help="re-tokenise for this measurement")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)

    import torch

    from impumae.data.cohort_view import resolve_cohort
    from impumae.engine.pretrain_jobs import job_for, train_job
    from impumae.engine.space import SearchSpace

    if args.threads:
        torch.set_num_threads(args.threads)
    space = SearchSpace.load(args.space)
    model, pretrain = {**space.model, **pairs(args.model)}, {**space.pretrain, **pairs(args.set)}
    job, ca, _ = job_for(resolve_cohort(args.cohort, echo=lambda *a: None), args.subset, args.fold, model, pretrain, 0)
    for name, patch in pairs(args.patch).items():  # the resident arrays train_job reads are this object
        ca.specs[name] = ca.specs[name].with_(patch=int(patch))
    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        meta = train_job(job, storage, torch.device("cpu"))
        seconds = time.perf_counter() - started
    last = meta["history"][-1]
    scores = {k.removeprefix("recon_vs_mean_"): round(v, 3) for k, v in last.items() if k.startswith("recon_vs_mean_")}
    print(json.dumps({"pretrain": pairs(args.set), "model": pairs(args.model), "patch": pairs(args.patch),
                      "recon_vs_mean": scores, "loss": round(last["loss"], 4), "seconds": round(seconds, 1),
                      "cpu_seconds": round(time.process_time(), 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
