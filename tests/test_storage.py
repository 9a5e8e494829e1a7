"""impumae.storage: resolving locations, atomic writes, replacing a folder, missing cloud packages."""
from __future__ import annotations

import os

import fsspec
import pytest

from impumae import storage


def test_resolve_normalises_file_urls_home_and_trailing_slashes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert storage.resolve(f"file://{tmp_path}/c.zarr") == str(tmp_path / "c.zarr")
    assert storage.resolve("~/c.zarr") == str(tmp_path / "c.zarr")
    assert storage.resolve("c.zarr/") == str(tmp_path / "c.zarr")
    assert storage.resolve("memory://bucket/c.zarr/") == "memory://bucket/c.zarr"
    assert storage.Location("c.zarr") == storage.Location(f"file://{tmp_path}/c.zarr/")


def test_write_bytes_is_atomic_and_leaves_nothing_half_written_on_failure(tmp_path, monkeypatch):
    target = storage.Location(tmp_path / "sub" / "report.json")
    target.write_text("old")
    assert target.read_bytes() == b"old"

    class Boom(Exception):
        pass

    real_open = target.fs.open

    def failing_open(path, mode="rb", **kwargs):
        handle = real_open(path, mode, **kwargs)
        if "w" in mode:
            handle.write(b"half")  # some bytes reach the temporary file, then the write fails
            handle.close()
            raise Boom()
        return handle

    monkeypatch.setattr(target.fs, "open", failing_open)
    with pytest.raises(Boom):
        target.write_bytes(b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path / "sub") == ["report.json"]  # no temporary file left


def test_write_bytes_to_a_memory_url():
    storage.write_bytes("memory://impumae-test-storage/a/b.txt", b"x")
    assert storage.read_bytes("memory://impumae-test-storage/a/b.txt") == b"x"
    assert storage.exists("memory://impumae-test-storage/a/b.txt")
    storage.Location("memory://impumae-test-storage").remove()


def make_folder(path, text):
    path.mkdir()
    (path / "data.txt").write_text(text)
    return storage.Location(path)


def test_replace_swaps_in_the_new_folder_and_removes_the_old(tmp_path):
    target = make_folder(tmp_path / "store", "old")
    storage.replace(make_folder(tmp_path / "store.tmp-1", "new"), target)
    assert (tmp_path / "store" / "data.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_replace_restores_the_old_folder_when_the_move_fails(tmp_path, monkeypatch):
    target = make_folder(tmp_path / "store", "old")
    temporary = make_folder(tmp_path / "store.tmp-1", "new")
    real_move = storage.Location.move_to

    def move_to(self, other):
        if self == temporary:
            raise OSError("disk full")
        real_move(self, other)

    monkeypatch.setattr(storage.Location, "move_to", move_to)
    with pytest.raises(OSError, match="disk full"):
        storage.replace(temporary, target)
    assert (tmp_path / "store" / "data.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["store", "store.tmp-1"]  # the backup is moved back


def test_staged_moves_a_complete_folder_into_place_or_leaves_the_target_alone(tmp_path):
    target = make_folder(tmp_path / "store", "old")
    with pytest.raises(RuntimeError):
        with storage.staged(target) as temporary:
            make_folder(tmp_path / os.path.basename(temporary.url), "half")
            raise RuntimeError("failed half-way")
    assert (tmp_path / "store" / "data.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["store"]
    with storage.staged(target) as temporary:
        make_folder(tmp_path / os.path.basename(temporary.url), "new")
    assert (tmp_path / "store" / "data.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_s3_without_s3fs_names_the_extra_to_install(no_s3fs):
    with pytest.raises(ImportError, match=r"s3://bucket/c\.zarr: the s3:// filesystem needs an extra package.*"
                                          r"pip install 'impumae\[cloud\]'") as raised:
        storage.Location("s3://bucket/c.zarr")
    assert isinstance(raised.value, storage.MissingFilesystemError)
    assert fsspec.filesystem("memory") is not None  # other filesystems unaffected
