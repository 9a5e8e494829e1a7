import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ACCEPT_CALLBACK_INDEPENDENT_TRAINER_CHECKPOINTS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not available")
    return SHARED_DATA


@pytest.fixture
def no_s3fs(monkeypatch):
    """fsspec as if s3fs were not installed, whether or not it is."""
    registry = sys.modules["fsspec.registry"]
    monkeypatch.setitem(registry.known_implementations, "s3",
                        {"class": "impumae_tests_absent_s3fs.S3FileSystem", "err": "Install s3fs to access S3"})
    monkeypatch.delitem(registry._registry, "s3", raising=False)
