"""An audit trail of which patients each stage saw.

Every stage (pretraining, fine-tuning and validation of each fold, refit, holdout evaluation)
writes the patient ids it used to ``<search dir>/audit/<stage>.json``. The honest protocol is then
checkable after the fact: holdout ids must appear in the holdout stage and nowhere else
(``check_holdout_isolation``).
"""
from __future__ import annotations

import json

from impumae import storage


def record(search_dir: str, stage: str, **patient_ids) -> None:
    """Write the ids each role of ``stage`` used (atomically: a reader never sees half a file)."""
    payload = {role: sorted(str(p) for p in ids) for role, ids in patient_ids.items()}
    storage.write_bytes(storage.join(search_dir, "audit", f"{stage}.json"), json.dumps(payload).encode())


def load(search_dir: str) -> dict[str, dict[str, list[str]]]:
    folder = storage.Location(search_dir)
    fs, root = folder.fs, folder.path.rstrip("/")
    if not fs.exists(f"{root}/audit"):
        return {}
    out = {}
    for path in fs.glob(f"{root}/audit/*.json"):
        with fs.open(path) as f:
            out[path.rsplit("/", 1)[-1][:-5]] = json.load(f)
    return out


def check_holdout_isolation(search_dir: str, holdout_ids) -> list[str]:
    """Stages (other than ``holdout*``) that saw a holdout patient; empty when the protocol held."""
    holdout = set(map(str, holdout_ids))
    leaks = []
    for stage, roles in load(search_dir).items():
        if stage.startswith("holdout"):
            continue
        for role, ids in roles.items():
            if holdout.intersection(ids):
                leaks.append(f"{stage}:{role}")
    return leaks
