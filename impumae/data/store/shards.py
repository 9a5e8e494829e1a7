"""The direct reader of the modality arrays that ``write_cohort`` writes (``ShardReader``).

``Cohort.load`` and ``Cohort.read`` read the shards of layouts that ``write_cohort`` produces directly:
the zarr v3 ``sharding_indexed`` format with the index at the end; whole shards for ``load``,
concurrently; single chunks by byte range for ``read``; each chunk decoded straight into the output
array. zarr 3.1's general path spends about 0.4 ms of CPU per chunk (asyncio hops per chunk; ~1 ms
wall on a loaded 2-core machine), which dominated per-patient reads (a WSI patient is 10 chunks) and
whole-modality loads: measured on 128 paper-scale patients, the direct reader loads 3-10x faster and
reads one patient 2-10x faster than zarr's slicing. Any other layout (another codec, a transpose, an
older store) falls back to zarr (``ShardReader.for_array`` returns None). The direct reader checks the
shard index checksum and is tested against zarr's own reads.
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr

from impumae.storage import Location

from .schema import CohortError

_EMPTY_INT = 2**64 - 1  # the sharding index marks an absent chunk with offset = nbytes = 2^64 - 1


class ShardReader:
    """Reads the modality arrays that ``write_cohort`` writes without zarr's per-chunk machinery.

    Supported layout (anything else: ``for_array`` returns None and the caller uses zarr): zarr v3,
    one ``sharding_indexed`` codec with the index at the end (``bytes`` little-endian + ``crc32c``),
    shards that span whole patients (``(S, *shape)``), inner chunks of one patient row
    (``(1, *shape)``) or one leading sub-block of a patient (``(1, 1, *shape[1:])``), inner codecs
    ``bytes`` plus at most one of zstd, Blosc or gzip. Every inner chunk is then one contiguous block
    of a C-ordered ``[N, *shape]`` array, so it is decoded (or, uncompressed and local, ``preadv``-ed)
    straight into the output. Shard indexes are cached per shard file (local files: checked against
    the file's size, mtime and inode on each read).
    """

    def __init__(self, array: zarr.Array, location: Location, path: str, decode, per_row: int):
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)
        self.fill = array.fill_value
        self.location, self.path = location, path
        self.shard_rows = int(array.metadata.chunk_grid.chunk_shape[0])
        self.per_row = per_row                   # inner chunks per patient
        self.chunks_per_shard = self.shard_rows * per_row
        self.chunk_items = int(np.prod(self.shape[1:], dtype=np.int64)) // per_row
        self.chunk_nbytes = self.chunk_items * self.dtype.itemsize
        self.index_nbytes = 16 * self.chunks_per_shard + 4
        self.decode = decode                      # None: stored uncompressed
        self.n_shards = -(-self.shape[0] // self.shard_rows)
        self._keys = [array.metadata.encode_chunk_key((k,) + (0,) * (len(self.shape) - 1)) for k in range(self.n_shards)]
        self._indexes: dict[int, tuple[Any, np.ndarray]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_array(cls, array: zarr.Array, location: Location, path: str) -> "ShardReader | None":
        try:
            from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec
            from zarr.codecs.sharding import ShardingCodecIndexLocation

            meta = array.metadata
            if meta.zarr_format != 3 or sys.byteorder != "little" or len(meta.codecs) != 1:
                return None
            sharding = meta.codecs[0]
            if not isinstance(sharding, ShardingCodec) or sharding.index_location != ShardingCodecIndexLocation.end:
                return None
            index_codecs = tuple(sharding.index_codecs)
            if (len(index_codecs) != 2 or not isinstance(index_codecs[0], BytesCodec)
                    or not isinstance(index_codecs[1], Crc32cCodec) or str(index_codecs[0].endian.value) != "little"):
                return None
            shape, shard, chunk = tuple(array.shape), tuple(meta.chunk_grid.chunk_shape), tuple(sharding.chunk_shape)
            if shard[1:] != shape[1:] or len(shape) < 2:
                return None
            if chunk == (1, *shape[1:]):
                per_row = 1
            elif len(shape) >= 3 and chunk == (1, 1, *shape[2:]):
                per_row = shape[1]
            else:
                return None
            inner = tuple(sharding.codecs)
            if not inner or not isinstance(inner[0], BytesCodec):
                return None
            if np.dtype(array.dtype).itemsize > 1 and (inner[0].endian is None or str(inner[0].endian.value) != "little"):
                return None
            if len(inner) == 1:
                decode = None
            elif len(inner) == 2 and isinstance(inner[1], (ZstdCodec, BloscCodec, GzipCodec)):
                import numcodecs
                decoder = {ZstdCodec: numcodecs.Zstd, BloscCodec: numcodecs.Blosc, GzipCodec: numcodecs.GZip}[type(inner[1])]()
                decode = decoder.decode
            else:
                return None
            return cls(array, location, path, decode, per_row)
        except Exception:  # an unexpected zarr layout or version: use zarr's own reader
            return None

    # -- bytes -------------------------------------------------------------------------------------
    def _file(self, k: int) -> str:
        base = self.location.url if self.location.is_local else self.location.path
        return "/".join((base, self.path, self._keys[k]))

    def _index(self, k: int, fd: int | None = None) -> np.ndarray | None:
        """[chunks_per_shard, 2] (offset, nbytes) of shard ``k``; None when the shard file is absent."""
        if fd is not None:
            stat = os.fstat(fd)
            stamp = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        else:
            stamp = None
        cached = self._indexes.get(k)
        if cached is not None and (fd is None or cached[0] == stamp):
            return cached[1]
        if fd is not None:
            size = stamp[0]
            raw = os.pread(fd, self.index_nbytes, size - self.index_nbytes) if size >= self.index_nbytes else b""
        else:
            try:
                raw = self.location.fs.cat_file(self._file(k), start=-self.index_nbytes)
            except FileNotFoundError:
                return None
        index = self._parse_index(raw, k)
        with self._lock:
            self._indexes[k] = (stamp, index)
        return index

    def _parse_index(self, raw: bytes, k: int) -> np.ndarray:
        if len(raw) != self.index_nbytes:
            raise CohortError(f"{self.location.url}: {self.path}/{self._keys[k]}: truncated shard index")
        try:
            import google_crc32c
        except ImportError:  # zarr depends on it; checked anyway
            google_crc32c = None
        if google_crc32c is not None and np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
            raise CohortError(f"{self.location.url}: {self.path}/{self._keys[k]}: shard index checksum mismatch")
        return np.frombuffer(raw, dtype="<u8", count=2 * self.chunks_per_shard).reshape(self.chunks_per_shard, 2)

    def _put(self, data, view: np.ndarray) -> None:
        """Decode one chunk's bytes into ``view`` (a contiguous block of the output)."""
        if self.decode is None:
            self._check_nbytes(len(data))
            view.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
        else:
            self.decode(data, out=view.reshape(-1))

    def _chunk_view(self, out: np.ndarray, row: int, chunk: int) -> np.ndarray:
        """The output block of inner chunk ``chunk`` (shard-local, C order) written to output row ``row``."""
        return out[row] if self.per_row == 1 else out[row, chunk % self.per_row]

    # -- reads -------------------------------------------------------------------------------------
    def _read_shard_rows(self, k: int, out: np.ndarray, out_rows: np.ndarray, local_rows: np.ndarray,
                         whole: bool) -> None:
        """Rows ``local_rows`` (shard-local) of shard ``k`` into ``out[out_rows]``; ``whole``: read the shard at once."""
        chunks = (local_rows[:, None] * self.per_row + np.arange(self.per_row)[None, :]).reshape(-1).tolist()
        views = [self._chunk_view(out, row, chunk) for row, chunk in zip(np.repeat(out_rows, self.per_row).tolist(), chunks)]
        if self.location.is_local:
            try:
                fd = os.open(self._file(k), os.O_RDONLY)
            except FileNotFoundError:
                out[out_rows] = self.fill
                return
            try:
                entries = self._index(k, fd)[chunks].tolist()
                if self.decode is None:  # uncompressed: straight from the file into the output
                    for view, (offset, nbytes) in zip(views, entries):
                        if offset == _EMPTY_INT:
                            view[...] = self.fill
                        else:
                            self._check_nbytes(nbytes)
                            _preadv_all(fd, view.reshape(-1).view(np.uint8), offset)
                    return
                if whole:
                    data = memoryview(_pread_all(fd, os.fstat(fd).st_size, 0))
                    pieces = [None if offset == _EMPTY_INT else data[offset:offset + nbytes] for offset, nbytes in entries]
                else:
                    pieces = [None if offset == _EMPTY_INT else _pread_all(fd, nbytes, offset) for offset, nbytes in entries]
            finally:
                os.close(fd)
        else:
            index = self._index(k)
            if index is None:
                out[out_rows] = self.fill
                return
            entries = index[chunks].tolist()
            fs, name = self.location.fs, self._file(k)
            if whole:
                data = memoryview(fs.cat_file(name))
                pieces = [None if offset == _EMPTY_INT else data[offset:offset + nbytes] for offset, nbytes in entries]
            else:
                wanted = [j for j, (offset, _) in enumerate(entries) if offset != _EMPTY_INT]
                got = fs.cat_ranges([name] * len(wanted), [entries[j][0] for j in wanted],
                                    [entries[j][0] + entries[j][1] for j in wanted]) if wanted else []
                pieces = [None] * len(entries)
                for j, piece in zip(wanted, got):
                    pieces[j] = piece
        for view, piece in zip(views, pieces):
            if piece is None:
                view[...] = self.fill
            else:
                self._put(piece, view)

    def _check_nbytes(self, nbytes: int) -> None:
        if nbytes != self.chunk_nbytes:
            raise CohortError(f"{self.location.url}: {self.path}: a chunk of {nbytes} bytes, expected {self.chunk_nbytes}")

    def rows(self, rows: np.ndarray, threads: int | None = None) -> np.ndarray:
        """``out[i] = array[rows[i]]`` (any order, repeats allowed); shards mostly wanted are read whole."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        shard_of = rows // self.shard_rows
        tasks = []
        for k in np.unique(shard_of):
            positions = np.flatnonzero(shard_of == k)
            local = rows[positions] - k * self.shard_rows
            in_shard = min(self.shard_rows, self.shape[0] - k * self.shard_rows)
            tasks.append((int(k), positions, local, len(np.unique(local)) * 2 > in_shard))
        workers = min(len(tasks), threads if threads is not None else _default_threads())
        if workers <= 1:
            for task in tasks:
                self._read_shard_rows(task[0], out, *task[1:])
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="impumae-shards") as pool:
                list(pool.map(lambda task: self._read_shard_rows(task[0], out, *task[1:]), tasks))
        return out

    def load(self, threads: int | None = None) -> np.ndarray:
        return self.rows(np.arange(self.shape[0]), threads=threads)


def _default_threads() -> int:
    """Shard-reading threads: file reads and decompression release the GIL."""
    return max(2, min(8, os.cpu_count() or 1))


def _pread_all(fd: int, nbytes: int, offset: int) -> bytes:
    data = os.pread(fd, nbytes, offset)
    if len(data) == nbytes:
        return data
    parts = [data]
    done = len(data)
    while done < nbytes:
        more = os.pread(fd, nbytes - done, offset + done)
        if not more:
            raise CohortError(f"short read: {done} of {nbytes} bytes at offset {offset}")
        parts.append(more)
        done += len(more)
    return b"".join(parts)


def _preadv_all(fd: int, target: np.ndarray, offset: int) -> None:
    """Fill the uint8 array ``target`` from the file at ``offset`` (no intermediate copy where possible)."""
    view, done = memoryview(target), 0
    while done < len(view):
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], offset + done)
        else:  # pragma: no cover - platforms without preadv
            piece = os.pread(fd, len(view) - done, offset + done)
            view[done:done + len(piece)] = piece
            got = len(piece)
        if got <= 0:
            raise CohortError(f"short read: {done} of {len(view)} bytes at offset {offset}")
        done += got

