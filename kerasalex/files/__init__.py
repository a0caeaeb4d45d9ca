"""Kill-safe file writing, ``.keras`` archives and checked model loading.

Every file kerasalex writes goes to a temporary file in the same folder, is
flushed to disk and then renamed over the target, so a kill at any moment
leaves either the old file or the new one, never a torn one.

The files layer imports nothing from the rest of kerasalex
(``tests/test_registry.py`` checks it): what model files may hold beyond
stock Keras, and the metadata a model carries, come from the model table as a
:class:`ModelFileRules`, which :mod:`kerasalex.models` installs with
:func:`set_model_file_rules` when it is imported. Without it the checked
loader accepts stock Keras layers only.

- this module: atomic writes, disk-full errors, temporary files;
- :mod:`kerasalex.files.archive`: the ``.keras`` writer and its metadata;
- :mod:`kerasalex.files.checks`: the checks of a user-supplied ``.keras``
  file and the checked loader.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_MARKER = ".tmp-"
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def error_line(exc: BaseException | str, limit: int = 240) -> str:
    """An error's message as one line for a user: its first non-empty line,
    never cut inside a word. A line longer than ``limit`` keeps its start and
    its end (where "[Errno -2] Name or service not known" and other causes
    are), joined by " ... ".

    Args:
        exc: the exception (its type name stands in for an empty message) or a text.
        limit: the most characters to return (at least 20).

    Example:
        >>> error_line(Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/"
        ...     "keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- "
        ...     "[Errno -2] Name or service not known"), 80)
        'URL fetch failure on ... None -- [Errno -2] Name or service not known'
    """
    text = str(exc).strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if not line:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    limit = max(20, int(limit))
    if len(line) <= limit:
        return line
    words = line.split(" ")
    budget = limit - len(" ... ")
    tail: list[str] = []
    used = 0
    for w in reversed(words):  # the end holds the cause: give it two thirds
        if used + len(w) + 1 > budget * 2 // 3:
            break
        tail.insert(0, w)
        used += len(w) + 1
    head: list[str] = []
    for w in words[: len(words) - len(tail)]:
        if used + len(w) + 1 > budget:
            break
        head.append(w)
        used += len(w) + 1
    if not tail:  # one enormous word: cut it, marked
        return line[: limit - 3] + "..."
    return " ".join(head) + " ... " + " ".join(tail) if head else "... " + " ".join(tail)


class DiskFullError(OSError):
    """Raised when a write fails because the disk (or a file size limit) is full."""


class ModelFileError(ValueError):
    """A model file that cannot or must not be loaded."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full_errno(exc: BaseException) -> int | None:
    """ENOSPC / EFBIG / EDQUOT anywhere in ``exc``'s chain (h5py and Keras wrap
    the OSError of the failed write in their own exceptions), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _raise_disk_full(exc: BaseException, path: Path) -> None:
    code = _disk_full_errno(exc)
    if code is not None:
        raise DiskFullError(
            code,
            f"disk full while writing {path} ({os.strerror(code)}); "
            "the previous file, if any, is unchanged",
        ) from exc


@contextlib.contextmanager
def _folder_lock(folder: Path, exclusive: bool) -> Iterator[bool]:
    """An advisory ``flock`` on ``folder``: writers hold it shared while their
    temporary file exists, :func:`remove_stale_temps` takes it exclusively, so a
    sweep never deletes the temporary file of a live writer (in any process or
    container on this host). Yields False when an exclusive lock is not free
    right now; True when held, or when the file system has no locks."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (not POSIX)
        yield True
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            yield False
            return
        except OSError:  # no flock on this file system
            pass
        yield True
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it over ``path`` on success.

    Args:
        path: the final file.
        suffix: extra suffix for the temporary name (Keras insists on
            ``.keras`` / ``.weights.h5`` endings).

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temporary files of writers killed earlier go first, so none accumulate.
    remove_stale_temps(path.parent)
    with _folder_lock(path.parent, exclusive=False):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            yield tmp_path
            _fsync_file(tmp_path)
            os.replace(tmp_path, path)
            _fsync_dir(path.parent)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            if isinstance(exc, Exception):
                _raise_disk_full(exc, path)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Publishes ``src`` at ``dst`` atomically (a hard link when possible: our
    files are only ever replaced, never modified in place)."""
    import shutil

    dst = Path(dst)
    with atomic_path(dst, suffix=Path(src).suffix) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like one of :func:`atomic_path`'s temporary files."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARKER in name


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Deletes temporary files left in ``folder`` by killed writers; returns the count.

    Nothing is deleted while a live writer holds a temporary file in
    ``folder`` (see :func:`_folder_lock`); the next write sweeps instead.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    with _folder_lock(folder, exclusive=True) as free:
        if not free:
            return 0
        for p in folder.iterdir():
            if is_temp_file(p) and (p.is_symlink() or p.is_file()):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


# The model-file half (imported last: it uses the helpers above).
from kerasalex.files.archive import (  # noqa: E402
    LEGACY_METADATA_MEMBER,
    MAX_METADATA_BYTES,
    METADATA_KEY,
    ModelFileRules,
    float32_policies,
    model_file_rules,
    read_model_metadata,
    save_model,
    set_model_file_rules,
)
from kerasalex.files.checks import (  # noqa: E402
    ALLOWED_FUNCTIONS,
    HDF5_MAGIC,
    MAX_COMPRESSION_RATIO,
    MAX_DECLARED_BYTES,
    MAX_MODEL_BYTES,
    MAX_MODEL_MEMBERS,
    MODEL_MEMBERS,
    REFUSED_LAYERS,
    STOCK_LAYERS,
    allowed_layers,
    check_model_file,
    load_model,
)

__all__ = [
    "ALLOWED_FUNCTIONS", "HDF5_MAGIC", "LEGACY_METADATA_MEMBER", "MAX_COMPRESSION_RATIO", "MAX_DECLARED_BYTES",
    "MAX_METADATA_BYTES", "MAX_MODEL_BYTES", "MAX_MODEL_MEMBERS", "METADATA_KEY", "MODEL_MEMBERS", "REFUSED_LAYERS",
    "STOCK_LAYERS", "TEMP_MARKER", "DiskFullError", "ModelFileError", "ModelFileRules", "allowed_layers",
    "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_model_file", "copy_file",
    "error_line", "float32_policies", "is_temp_file", "load_model", "model_file_rules", "read_model_metadata",
    "remove_stale_temps", "save_model", "set_model_file_rules",
]
