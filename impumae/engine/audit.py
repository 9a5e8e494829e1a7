"""An audit trail of which patients each stage saw.

Every stage (pretraining, fine-tuning and validation of each fold, refit, holdout evaluation)
writes the patient ids it used to ``<search dir>/audit/<stage>.json``. The honest protocol is then
checkable after the fact: holdout ids must appear in the holdout stage and nowhere else
(``check_holdout_isolation``).
"""
from __future__ import annotations

import json
import uuid

import fsspec


def _fs_and_path(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def record(search_dir: str, stage: str, **patient_ids) -> None:
    fs, root = _fs_and_path(search_dir)
    fs.makedirs(f"{root}/audit", exist_ok=True)
    payload = {role: sorted(str(p) for p in ids) for role, ids in patient_ids.items()}
    final, tmp = f"{root}/audit/{stage}.json", f"{root}/audit/.{stage}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "w") as f:
        json.dump(payload, f)
    fs.mv(tmp, final)


def load(search_dir: str) -> dict[str, dict[str, list[str]]]:
    fs, root = _fs_and_path(search_dir)
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
