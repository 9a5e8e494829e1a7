"""Fault injection for the retry path of a search, kept out of the engine's configuration.

Ray runs trials in separate worker processes, so a test installs :func:`install` as Ray's
``worker_process_setup_hook`` and names a folder in ``$IMPUMAE_TEST_FAIL_ONCE_DIR`` (both through
``ray.init(runtime_env=...)``, see :func:`runtime_env`): every trial then raises once, at its
second fold, leaving a marker file per trial in that folder.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "IMPUMAE_TEST_FAIL_ONCE_DIR"


ROOT = Path(__file__).resolve().parents[1]


def runtime_env(folder: str | Path) -> dict:
    """Every Ray worker (trials and pretraining tasks alike) imports this module for its setup hook,
    so the project root goes on the workers' PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {ENV: str(folder), "PYTHONPATH": path},
            "worker_process_setup_hook": "tests.fault_injection.install"}


def install() -> None:
    from impumae.engine import trial
    trial.before_fold = fail_once_at_second_fold


def fail_once_at_second_fold(fold: int) -> None:
    from ray import tune

    folder = os.environ.get(ENV)
    if not folder or fold != 1:
        return
    marker = Path(folder) / f"{tune.get_context().get_trial_id()}.failed"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("injected")
        raise RuntimeError(f"injected failure at fold {fold} (tests/fault_injection.py)")


POISON_ENV = "IMPUMAE_TEST_POISON_FAMILY"


def poison_runtime_env(family: str) -> dict:
    """Every Ray worker's scikit-survival fits of ``family`` predict NaN survival curves (what
    CoxNet's overflow gave on two public cohorts), so its trials fail inside the model."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {POISON_ENV: family, "PYTHONPATH": path},
            "worker_process_setup_hook": "tests.fault_injection.install_poison"}


def install_poison() -> None:
    poison(os.environ.get(POISON_ENV, ""))


def poison(family: str):
    """Make ``family``'s fitted scikit-survival folds predict NaN (in this process); returns the
    original method so a test can restore it."""
    import numpy as np

    from impumae.families.sksurv import SksurvFoldFit

    original = SksurvFoldFit.survival

    def survival(self, rows):
        out = original(self, rows)
        return np.full_like(out, np.nan) if self.family == family else out

    SksurvFoldFit.survival = survival
    return original
