"""The decoded-image cache of an image folder: fixed-size uint8 records in
shard files on disk, read back by position at constant memory.

An image folder is decoded once per (folder listing, image size, decoding
options) into a cache directory (``~/.cache/kerasalex/folders/<key>/`` or
under ``$KERASALEX_CACHE_DIR``)::

    manifest.json          format version, image shape, shards, fingerprint,
                           unreadable files (written last: its presence
                           means the directory is complete)
    labels.npy             int32 (N,) the label of each record
    ok.npy                 bool (files,) which listed files were decoded
    crc32.npy              uint32 (N,) each record's CRC-32
    images-00000.bin ...   the records: H*W*3 uint8 bytes each, in file order

Why raw records read with ``os.preadv``: a training batch is a random gather
of (seed, epoch)-ordered indices, which TFRecord shards (sequential reads
through a shuffle buffer) cannot replay exactly, so ``--resume`` would no
longer be exact; a ``np.memmap`` gathers them too, but every page it touches
is counted in the process's resident memory (RSS), which then grows with the
data (measured by ``benchmarks/bench_data_scale.py``, part 5); ``pread``
copies through the page cache, which the kernel reclaims, so the process
holds only the batches in flight.

Every record is checked against its CRC-32 when read: a damaged shard gives a
one-line :class:`CacheError` (and the cache is removed, so the next run
rebuilds it), never a wrong image.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import uuid
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

FORMAT = "kerasalex-decoded-images"
# Bumped whenever the files' layout changes: a cache of another version is
# rebuilt, never read.
FORMAT_VERSION = 1
# Records per shard file: at most ~1 GiB each whatever the image size (an
# ImageNet-size folder at 224 px: ~180 files, each kept open once read).
SHARD_BYTES = 2**30
MANIFEST = "manifest.json"
# In-order reads (fingerprints, evaluation, np.asarray) go this many bytes at a time.
CHUNK_BYTES = 16 * 2**20


class CacheError(ValueError):
    """The cache cannot be used or written (damaged, disk full, folder changed
    while read); the message is one line naming the file and what to do."""


# The last damaged-cache error raised while reading: a read inside a tf.data
# generator reaches the caller wrapped in TensorFlow's error (a traceback);
# the command line reports this one line instead (see raised_by_a_read).
_LAST_READ_ERROR: list[CacheError] = []


def raised_by_a_read(exc: BaseException) -> CacheError | None:
    """The :class:`CacheError` behind ``exc`` when ``exc`` is TensorFlow's
    wrapping of one raised by a read in a tf.data generator (its message
    quotes ours); None otherwise."""
    for err in reversed(_LAST_READ_ERROR):
        if str(err) in str(exc):
            return err
    return None


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


class _Shards:
    """The record files of one cache directory, opened lazily, read by
    position with ``os.preadv`` (thread-safe: no shared file offset)."""

    def __init__(self, folder: Path, manifest: dict, crc: np.ndarray):
        self.folder = Path(folder)
        self.shape = tuple(int(d) for d in manifest["shape"])
        self.record = int(np.prod(self.shape))
        self.per_shard = int(manifest["records_per_shard"])
        self.files = [self.folder / s["file"] for s in manifest["shards"]]
        self.count = int(manifest["count"])
        self.crc = crc
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self.images_read = 0

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    try:
                        fd = os.open(self.files[shard], os.O_RDONLY)
                    except FileNotFoundError:
                        raise self.damaged(f"{self.files[shard].name} is missing") from None
                    # other errors (too many open files, permissions) are not damage: raised as they are
                    self._fds[shard] = fd
        return fd

    def damaged(self, what: str) -> CacheError:
        remove(self.folder)
        err = CacheError(f"decoded-image cache {self.folder} is damaged: {what}; it was removed, "
                         "run the command again to rebuild it from the image files")
        del _LAST_READ_ERROR[:-4]
        _LAST_READ_ERROR.append(err)
        return err

    def read_into(self, out: np.ndarray, positions: np.ndarray) -> None:
        """Reads records ``positions`` into ``out`` (len(positions), *shape)
        uint8, checking each record's CRC-32."""
        flat = out.reshape(len(positions), self.record)
        for i, p in enumerate(positions):
            p = int(p)
            if not 0 <= p < self.count:
                raise IndexError(f"image {p} is out of bounds for the {self.count} images of {self.folder}")
            shard, k = divmod(p, self.per_shard)
            view = memoryview(flat[i])
            fd, got = self._fd(shard), 0
            while got < self.record:  # a network file system may return short reads
                n = os.preadv(fd, [view[got:]], k * self.record + got)
                if n == 0:
                    raise self.damaged(f"{self.files[shard].name} is truncated (image {p})")
                got += n
            if zlib.crc32(view) != int(self.crc[p]):
                raise self.damaged(f"image {p} in {self.files[shard].name} fails its checksum")
        self.images_read += len(positions)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()

    def __del__(self):
        self.close()


class DiskImages:
    """uint8 images (N, H, W, 3) kept on disk, read by index like an array.

    Supports what the pipelines use: ``shape``, ``dtype``, ``ndim``,
    ``len()``, ``x[i]``, ``x[a:b]``, ``x[index_array]`` (int or bool),
    :meth:`subset` (a view: nothing read), :meth:`chunks` (in-order reads of
    bounded size) and ``np.asarray(x)`` (reads everything: the in-memory
    path). Reads return new uint8 arrays; the files are never written.

    Attributes:
        images_read: images read so far through every view of these files
            (how a multi-worker test shows each worker reads its own part).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, shards: _Shards, index: np.ndarray | None = None, fingerprint: str | None = None):
        self._shards = shards
        self._index = index  # positions into the files; None = all, in order
        self._fingerprint = fingerprint if index is None else None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self._shards.shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self._shards.record

    @property
    def folder(self) -> Path:
        return self._shards.folder

    @property
    def images_read(self) -> int:
        return self._shards.images_read

    @property
    def stored_fingerprint(self) -> str | None:
        """The fingerprint (:func:`kerasalex.data.fingerprint`) of the whole
        cache in order, stored when it was written; None for a subset."""
        return self._fingerprint

    def __len__(self) -> int:
        return self._shards.count if self._index is None else int(len(self._index))

    def _positions(self, idx: np.ndarray) -> np.ndarray:
        return idx if self._index is None else self._index[idx]

    def _read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *self._shards.shape), np.uint8)
        self._shards.read_into(out, self._positions(idx))
        return out

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} is out of bounds for {n} images")
            return self._read(np.array([i]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(n)))
        if isinstance(key, tuple):
            raise TypeError("DiskImages takes one index (an int, a slice or an index array); "
                            "read the images first (x[a:b]) to index pixels")
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} does not match {n} images")
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"DiskImages indices must be integers or booleans. Received dtype {idx.dtype}")
        return self._read(self._checked(idx.reshape(-1))).reshape(*idx.shape, *self._shards.shape)

    def _checked(self, idx: np.ndarray) -> np.ndarray:
        """Integer indices with negatives counted from the end, bounds checked."""
        n = len(self)
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"an index is out of bounds for {n} images")
        return idx

    def subset(self, idx) -> "DiskImages":
        """The images at ``idx`` (an int array; negatives count from the end),
        as a view: nothing is read.

        Raises:
            IndexError: an index out of bounds. TypeError: not integers.
        """
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu" and idx.size:
            raise TypeError(f"DiskImages.subset takes integer indices. Received dtype {idx.dtype}")
        return DiskImages(self._shards, self._positions(self._checked(idx.astype(np.int64).reshape(-1))))

    def chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        """The images in order, ``size`` at a time (default: 16 MiB of images),
        at constant memory."""
        size = size or max(1, CHUNK_BYTES // self._shards.record)
        for i in range(0, len(self), size):
            yield self[i : i + size]

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.uint8)
        step = max(1, CHUNK_BYTES // self._shards.record)
        for i in range(0, len(self), step):
            out[i : i + step] = self[i : i + step]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"DiskImages(shape={self.shape}, folder={str(self.folder)!r})"


def is_disk_images(x) -> bool:
    return isinstance(x, DiskImages)


# --------------------------------------------------------------------------
# Opening, writing, removing
# --------------------------------------------------------------------------


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kerasalex")
    except Exception:  # pragma: no cover - not installed (a source tree on sys.path)
        return "unknown"


class Opened:
    """A cache opened for reading: images, labels, and which listed files
    were decoded (``ok``) or skipped (with the reason)."""

    def __init__(self, images: DiskImages, labels: np.ndarray, ok: np.ndarray, skipped: list[str], reasons: list[str]):
        self.images, self.labels, self.ok, self.skipped, self.reasons = images, labels, ok, skipped, reasons


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


ARRAYS = ("labels.npy", "ok.npy", "crc32.npy")


def open_cache(folder: Path, files_listed: int, say=None, shape: Sequence[int] | None = None) -> Opened | None:
    """Opens the cache in ``folder``; None when there is none.

    A cache of another format version, or one whose files do not match its
    manifest (a shard missing, truncated or grown), is removed and None is
    returned (the caller rebuilds it), with a line through ``say``.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return None

    def rebuild(why: str) -> None:
        if say is not None:
            say(f"decoded-image cache {folder} {why}: rebuilding it")
        remove(folder)
        return None

    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return rebuild("has an unreadable manifest")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        return rebuild(f"was written by another kerasalex (format {manifest.get('format_version')!r}, "
                       f"kerasalex {manifest.get('kerasalex', '?')}; this one reads format {FORMAT_VERSION})")
    try:
        if shape is not None and [int(d) for d in manifest["shape"]] != [int(d) for d in shape]:
            return rebuild(f"holds images of shape {manifest['shape']}, not {list(shape)}")
        for name in ARRAYS:
            if _sha256(folder / name) != manifest["sha256"][name]:
                return rebuild(f"has a damaged {name} (checksum)")
        record = int(np.prod(manifest["shape"]))
        count = int(manifest["count"])
        int(manifest["records_per_shard"])
        for s in manifest["shards"]:
            size = (folder / s["file"]).stat().st_size
            if size != int(s["count"]) * record:
                return rebuild(f"has a damaged shard ({s['file']}: {size} bytes, expected {int(s['count']) * record})")
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        ok = np.load(folder / "ok.npy", allow_pickle=False)
        crc = np.load(folder / "crc32.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return rebuild(f"is incomplete ({type(exc).__name__}: {exc})")
    if len(labels) != count or len(crc) != count or int(ok.sum()) != count or len(ok) != files_listed:
        return rebuild("does not match its manifest")
    shards = _Shards(folder, manifest, crc)
    images = DiskImages(shards, fingerprint=manifest.get("fingerprint"))
    return Opened(images, labels.astype(np.int32), ok.astype(bool), list(manifest.get("skipped", [])),
                  list(manifest.get("reasons", [])))


def check_space(root: Path, need: int) -> None:
    """Raises :class:`CacheError` when ``root``'s disk has less than ``need``
    bytes (plus 64 MiB) free."""
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need + 64 * 2**20:
        raise CacheError(f"not enough disk space for the decoded-image cache in {root}: it needs "
                         f"{need / 1e9:.2f} GB, {free / 1e9:.2f} GB are free; free some space or set "
                         "KERASALEX_CACHE_DIR to a folder on a larger disk")


class Writer:
    """Writes a cache directory record by record; :meth:`commit` makes it
    visible (atomic rename), :meth:`abort` removes it. Nothing is visible
    under the final name until every file is complete.

    Raises :class:`CacheError` (one line) when the disk fills up.
    """

    def __init__(self, final: Path, shape: Sequence[int], files_listed: int):
        self.final = Path(final)
        self.shape = tuple(int(d) for d in shape)
        self.record = int(np.prod(self.shape))
        self.per_shard = max(1, SHARD_BYTES // self.record)
        remove_dead_partials(self.final)
        self.tmp = self.final.with_name(f"{self.final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.tmp.mkdir(parents=True)
        self.files_listed = files_listed
        self.crc: list[int] = []
        self.labels: list[int] = []
        self.shards: list[dict] = []
        self._fh = None

    def _space(self, exc: OSError) -> CacheError:
        self.abort()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return CacheError(f"the disk filled up while writing the decoded-image cache in {self.final.parent} "
                              f"({exc.strerror}); the partial cache was removed; free some space or set "
                              "KERASALEX_CACHE_DIR to a folder on a larger disk")
        return CacheError(f"cannot write the decoded-image cache in {self.final.parent}: {exc.strerror or exc}")

    def add(self, images: np.ndarray, labels: Sequence[int]) -> None:
        """Appends uint8 images (k, *shape) with their labels."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        try:
            for img, label in zip(images, labels):
                if self._fh is None or self.shards[-1]["count"] >= self.per_shard:
                    self._next_shard()
                buf = memoryview(img.reshape(-1))
                self._fh.write(buf)
                self.crc.append(zlib.crc32(buf))
                self.labels.append(int(label))
                self.shards[-1]["count"] += 1
        except OSError as exc:
            raise self._space(exc) from None

    def _close_shard(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def _next_shard(self) -> None:
        self._close_shard()
        name = f"images-{len(self.shards):05d}.bin"
        self._fh = open(self.tmp / name, "wb")
        self.shards.append({"file": name, "count": 0})

    def commit(self, ok: np.ndarray, skipped: Sequence[str], reasons: Sequence[str], fingerprint_fn) -> Opened:
        """Finishes the files, computes the fingerprint (``fingerprint_fn(images)``,
        reading the records back in chunks) and renames the directory into
        place; returns it opened. When another process committed the same
        cache first, that one is used and ours removed."""
        try:
            self._close_shard()
            arrays = {"labels.npy": np.asarray(self.labels, np.int32), "ok.npy": np.asarray(ok, bool),
                      "crc32.npy": np.asarray(self.crc, np.uint32)}
            for name, a in arrays.items():
                with open(self.tmp / name, "wb") as f:
                    np.save(f, a)
                    f.flush()
                    os.fsync(f.fileno())
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "kerasalex": _version(),
                "shape": list(self.shape), "count": len(self.labels), "records_per_shard": self.per_shard,
                "shards": self.shards, "skipped": list(skipped), "reasons": list(reasons),
                "sha256": {name: _sha256(self.tmp / name) for name in arrays},
            }
            images = DiskImages(_Shards(self.tmp, manifest, np.asarray(self.crc, np.uint32)))
            manifest["fingerprint"] = fingerprint_fn(images)
            images._shards.close()
            with open(self.tmp / MANIFEST, "w") as f:
                json.dump(manifest, f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise self._space(exc) from None
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if not (self.final / MANIFEST).is_file():
                remove(self.final)  # a cache whose removal stopped part-way: ours replaces it
                try:
                    os.rename(self.tmp, self.final)
                except OSError:
                    pass
            remove(self.tmp)  # another process renamed the same cache into place first
        opened = open_cache(self.final, self.files_listed, shape=self.shape)
        if opened is None:
            raise CacheError(f"the decoded-image cache {self.final} could not be read back after writing it")
        return opened

    def abort(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        remove(self.tmp)


def remove_dead_partials(final: Path) -> list[Path]:
    """Removes the partial directories of ``final``'s cache left by writers
    that were killed (``<key>.partial-<pid>-*`` whose process is gone);
    returns them. A live writer's partial directory is left alone."""
    removed = []
    for p in Path(final).parent.glob(f"{Path(final).name}.partial-*"):
        try:
            pid = int(p.name.split(".partial-")[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # still writing
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        remove(p)
        removed.append(p)
    return removed
