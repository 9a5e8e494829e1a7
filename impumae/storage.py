"""Where things are stored: local paths and fsspec URLs (``file://``, ``memory://``, ``s3://``, ...).

The one place that resolves a storage location, asks whether something exists there, and writes a
file or moves a folder into place atomically (write to a temporary name, then rename), so that a
crash never leaves a half-written checkpoint, report or cohort store behind. Cohort stores,
pretraining checkpoints, search folders and scripts all go through it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from typing import Iterator

import fsspec

CLOUD_EXTRA = "pip install 'impumae[cloud]'"


class MissingFilesystemError(ImportError):
    """A URL whose fsspec filesystem needs a package that is not installed (s3fs, gcsfs...); the
    message names the URL and the install command."""


def resolve(url: str | os.PathLike) -> str:
    """A local path made absolute (``~`` expanded, ``file://`` dropped); any other URL unchanged
    (without a trailing slash), so two spellings of one place give one string."""
    url = os.fspath(url)
    if url.startswith("file://"):
        url = url[len("file://"):]
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    return url.rstrip("/")


def filesystem(url: str):
    """``(fs, path)`` for ``url``; a missing fsspec backend (s3fs, gcsfs) is a clear ``ImportError``."""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        protocol = url.split("://", 1)[0]
        raise MissingFilesystemError(f"{url}: the {protocol}:// filesystem needs an extra package ({e}); "
                                     f"install it with {CLOUD_EXTRA}") from e


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


class Location:
    """A place in storage: a local directory or file (``os`` calls) or a path in an fsspec filesystem."""

    def __init__(self, url: str | os.PathLike):
        self.url = resolve(url)
        self.is_local = "://" not in self.url
        if self.is_local:
            self.fs, self.path = fsspec.filesystem("file"), self.url
        else:
            self.fs, self.path = filesystem(self.url)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def sibling(self, suffix: str) -> "Location":
        """The location ``<this url><suffix>`` (temporary names, backups)."""
        return Location(self.url + suffix)

    def child(self, *parts: str) -> "Location":
        return Location(join(self.url, *parts))

    def exists(self) -> bool:
        return os.path.exists(self.url) if self.is_local else self.fs.exists(self.path)

    def remove(self) -> None:
        if self.is_local:
            if os.path.isdir(self.url):
                shutil.rmtree(self.url)
            elif os.path.exists(self.url):
                os.remove(self.url)
        elif self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    def move_to(self, other: "Location") -> None:
        if self.is_local:
            os.replace(self.url, other.url)
        else:
            self.fs.mv(self.path, other.path, recursive=True)

    def bytes_on_disk(self) -> int:
        if self.is_local:
            if os.path.isfile(self.url):
                return os.path.getsize(self.url)
            return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(self.url) for f in files)
        return int(self.fs.du(self.path, total=True))

    def read_bytes(self) -> bytes:
        with self.fs.open(self.path, "rb") as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        """Write a file atomically: a temporary sibling first, then a rename over the target."""
        parent = self.path.rsplit("/", 1)[0] if "/" in self.path else ""
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        tmp = self.sibling(f".tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with tmp.fs.open(tmp.path, "wb") as f:
                f.write(data)
            tmp.move_to(self)
        except BaseException:
            tmp.remove()
            raise

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())


def exists(url: str) -> bool:
    return Location(url).exists()


def read_bytes(url: str) -> bytes:
    return Location(url).read_bytes()


def write_bytes(url: str, data: bytes) -> None:
    Location(url).write_bytes(data)


def replace(temporary: Location, target: Location) -> None:
    """Move a finished folder (a store built at a temporary name) into place; an old one at the
    target is removed only once the new one is there, and restored if the move fails."""
    if not target.exists():
        temporary.move_to(target)
        return
    backup = target.sibling(f".old-{secrets.token_hex(4)}")
    target.move_to(backup)
    try:
        temporary.move_to(target)
    except BaseException:
        backup.move_to(target)
        raise
    backup.remove()


@contextlib.contextmanager
def staged(target: Location, prefix: str = ".tmp-") -> Iterator[Location]:
    """Build a folder at a temporary sibling of ``target`` and move it into place (``replace``) when
    the block completes; if anything fails the temporary folder is removed and ``target`` is untouched.

        with staged(Location(url)) as temporary:
            write_everything(temporary.url)
    """
    temporary = target.sibling(f"{prefix}{secrets.token_hex(4)}")
    try:
        yield temporary
        replace(temporary, target)
    except BaseException:
        temporary.remove()
        raise
