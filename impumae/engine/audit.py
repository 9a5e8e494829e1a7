"""An audit trail of which patients each stage saw.

Every stage (pretraining, fine-tuning and validation of each fold, refit, holdout evaluation)
writes the patient ids it used to ``<search dir>/audit/<stage>.json``. The honest protocol is then
checkable after the fact: holdout ids must appear in the holdout stage and nowhere else
(``check_holdout_isolation``).
"""
from __future__ import annotations

import json

from impumae import storage


META = "_meta"   # the key of a record's provenance (which search launched the stage, which context it ran)


def record(search_dir: str, stage: str, meta: dict | None = None, **patient_ids) -> None:
    """Write the ids each role of ``stage`` used (atomically: a reader never sees half a file).
    ``meta``: provenance stored beside the ids (a trial fold's: the search that launched it and
    the search whose context it ran with; :func:`check_launches`)."""
    payload = {role: sorted(str(p) for p in ids) for role, ids in patient_ids.items()}
    if meta:
        payload[META] = meta
    storage.write_bytes(storage.join(search_dir, "audit", f"{stage}.json"), json.dumps(payload).encode())


def load_records(search_dir: str) -> dict[str, dict]:
    """Every record of ``search_dir``'s audit as written: ``{stage: {role: ids, "_meta": {...}}}``."""
    folder = storage.Location(search_dir)
    fs, root = folder.fs, folder.path.rstrip("/")
    if not fs.exists(f"{root}/audit"):
        return {}
    out = {}
    for path in fs.glob(f"{root}/audit/*.json"):
        with fs.open(path) as f:
            out[path.rsplit("/", 1)[-1][:-5]] = json.load(f)
    return out


def load(search_dir: str) -> dict[str, dict[str, list[str]]]:
    """``{stage: {role: patient ids}}`` of ``search_dir``'s audit (provenance left out)."""
    return {stage: {role: ids for role, ids in roles.items() if role != META}
            for stage, roles in load_records(search_dir).items()}


def check_launches(search_dir: str) -> list[str]:
    """Stages recorded in ``search_dir`` (each trial fold records into the directory of the search
    that launched it) that ran with another search's context: its data, its folds, its outer test
    split. Empty when every trial ran the search that started it. Concurrent searches in one Ray
    driver once mixed their trainables this way (Tune registers a trainable by name, cluster-wide)."""
    strays = []
    for stage, roles in load_records(search_dir).items():
        meta = roles.get(META) or {}
        if "launched_by" in meta and meta.get("context") != meta["launched_by"]:
            strays.append(f"{stage} (launched by {meta['launched_by']}, ran with {meta.get('context')})")
    return strays


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
