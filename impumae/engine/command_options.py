"""The options that name one (modality subset, fold) and its pretrained MAE, shared by the
commands that work on one fold (``experiments/pretrain.py``, ``experiments/finetune.py``)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_SPACE = str(Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml")


def add_fold_arguments(p: argparse.ArgumentParser) -> None:
    """Options that decide which pretrained MAE a (subset, fold) uses."""
    p.add_argument("--cohort", default=None, help="cohort store path or fsspec URL; default: the embedded "
                   "synthetic cohort (built and cached on first use)")
    p.add_argument("--subset", default="rna,dna,mri", help="modalities, comma-separated, anchor first (default %(default)s)")
    p.add_argument("--fold", default="0", help="validation fold whose training patients are used (0..K-1), "
                   "or 'refit' for every non-holdout patient (default %(default)s)")
    p.add_argument("--space", default=DEFAULT_SPACE, help="search space YAML; its model and pretrain sections "
                   "configure the MAE (default %(default)s)")
    p.add_argument("--storage", default=os.environ.get("IMPUMAE_STORAGE", "runs"),
                   help="where pretraining checkpoints live (default: $IMPUMAE_STORAGE or ./runs)")
    p.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")
