"""What every raw-format parser shares: the error it raises and how it opens possibly gzipped text.

A parser turns one raw file (or one case folder) into one patient's array. When the file is bad it
raises :class:`RawFileError` naming the file and the reason; the ingest loop adds the patient and
modality, records it in the per-patient report and marks that modality missing (or stops the build
under ``--strict``).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

# What reading a damaged file raises, whichever library does the reading.
READ_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError, ValueError)


class RawFileError(ValueError):
    """A raw input file that cannot be used: ``file`` and ``reason`` are kept for the report."""

    def __init__(self, file: str | os.PathLike, reason: str):
        self.file = str(file)
        self.reason = reason
        super().__init__(f"{self.file}: {reason}")


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its name says)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def compression_of(path: str | os.PathLike) -> str | None:
    """The ``compression=`` value for ``pandas.read_csv``: sniffed from the bytes, not the name."""
    return "gzip" if is_gzip(path) else None


def first_line(path: str | os.PathLike) -> str:
    """The first text line of a possibly gzipped file (without its newline)."""
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except READ_ERRORS as e:
        raise RawFileError(path, f"unreadable ({type(e).__name__}: {e}); truncated or corrupt file?") from e


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` through a temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hash_strings(items) -> str:
    """A short stable digest of a list of names (feature lists in cache fingerprints)."""
    return hashlib.sha1("\n".join(items).encode()).hexdigest()[:16]
