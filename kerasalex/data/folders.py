"""Image folders: which files are taken (and which left out, with the reason),
the train/test layout, and decoding a class-per-subfolder tree into a cached
uint8 :class:`~kerasalex.data.Split`."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from kerasalex.data.decoding import DECODING_VERSION, ResizeRule, _image_cms, decode_image, max_image_pixels
from kerasalex.data.splits import ImageData, Split

# --------------------------------------------------------------------------
# Image folders: which files are taken
# --------------------------------------------------------------------------

# The extensions a folder scan takes (case-insensitive): the raster formats
# Pillow reads. A file with another extension is left out and named, with
# what it is when Pillow can read it anyway.
IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
}


def _not_an_image_reason(path: Path) -> str:
    from PIL import Image

    ext = path.suffix.lower()
    try:
        with Image.open(path) as img:
            fmt = img.format
    except Exception:
        fmt = None
    if fmt:
        return (f"a {fmt} image, but its extension {ext or '(none)'!r} is not one the scan takes "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); rename it to use it")
    if ext in (".heic", ".heif", ".avif", ".jxl"):
        return f"{ext} images are not read (Pillow has no decoder for them here); convert it to JPEG or PNG"
    return f"not an image file (extension {ext or '(none)'!r})"


def list_image_files(folder: Path, left_out: list[dict] | None = None) -> list[Path]:
    """The image files under ``folder`` at any depth, sorted.

    Taken: files whose extension is in :data:`IMAGE_EXTENSIONS`. Left out, and
    appended to ``left_out`` as ``{"path", "reason"}``: anything with a path
    component starting with ``.`` below ``folder`` (``.ipynb_checkpoints/``,
    ``.DS_Store``: one entry per hidden folder), and every other file.
    """
    folder = Path(folder)
    taken: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        d = Path(dirpath)
        for name in sorted(dirnames):
            if name.startswith("."):
                count = sum(len(f) for _, _, f in os.walk(d / name))
                if left_out is not None:
                    left_out.append({"path": str(d / name) + os.sep,
                                     "reason": f"hidden folder (name starts with '.'): its {count} file(s) are not read"})
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in sorted(filenames):
            p = d / name
            if name.startswith("."):
                if left_out is not None:
                    left_out.append({"path": str(p), "reason": "hidden file (name starts with '.')"})
            elif p.suffix.lower() in IMAGE_EXTENSIONS:
                taken.append(p)
            elif left_out is not None:
                left_out.append({"path": str(p), "reason": _not_an_image_reason(p)})
    return sorted(taken)


def _class_folders(root: Path, left_out: list[dict] | None = None) -> list[Path]:
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            out.append(p)
        elif left_out is not None:
            kind = "folder" if p.is_dir() else "file"
            why = (f"hidden {kind} (name starts with '.')" if p.name.startswith(".")
                   else "not inside a class folder (each class is a subfolder)")
            left_out.append({"path": str(p) + (os.sep if p.is_dir() else ""), "reason": why})
    return out


def describe_left_out(left_out: Sequence[dict], where: str = "") -> str:
    """One line summarising files left out, by reason (the full list goes to the run's config.json)."""
    if not left_out:
        return ""
    kinds: dict[str, int] = {}
    for e in left_out:
        r = e["reason"]
        key = ("hidden" if r.startswith("hidden") else "not an image file" if r.startswith("not an image file")
               else "not inside a class folder" if r.startswith("not inside") else "unreadable" if r.startswith("unreadable")
               else "readable image with another extension (rename it)" if " image, but its extension" in r
               else r.split(";")[0])
        kinds[key] = kinds.get(key, 0) + 1
    first = "; ".join(f"{Path(e['path']).name}: {e['reason']}" for e in left_out[:3])
    more = f"; ... ({len(left_out) - 3} more)" if len(left_out) > 3 else ""
    by = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return f"left out {len(left_out)} file(s){' under ' + where if where else ''} ({by}): {first}{more}"


def _cache_dir() -> Path:
    return Path(os.environ.get("KERASALEX_CACHE_DIR", Path.home() / ".cache" / "kerasalex")) / "folders"


def _folder_key(root: Path, files: Sequence[Path], rule: ResizeRule) -> str:
    """Keyed on every decoding option and the decoding rule's version, so a
    cache written by another rule (or an older kerasalex) is never reused."""
    import PIL

    from kerasalex.data.cache import FORMAT_VERSION

    h = hashlib.sha1(
        f"{root.resolve()}|{rule.size}|{rule.resize}|{rule.interpolation}|v{DECODING_VERSION}|f{FORMAT_VERSION}|"
        f"cms={_image_cms() is not None}|max_pixels={max_image_pixels()}|pillow={PIL.__version__}".encode()
    )
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _warn_skipped(root: Path, skipped: Sequence[str], reasons: Sequence[str] = ()) -> None:
    if skipped:
        items = [r or s for s, r in zip(skipped, list(reasons) + [""] * len(skipped))]
        shown = "; ".join(items[:10]) + (f"; ... ({len(items) - 10} more)" if len(items) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) in {root}: {shown}", stacklevel=3)


class FolderScan(NamedTuple):
    """What :func:`scan_folder` found.

    Attributes:
        split: the decoded images, labels and ``ids`` (paths relative to the root).
        class_names: the class of each label index.
        skipped: image files that could not be decoded (corrupt, too large).
        left_out: every file not used, ``{"path", "reason"}`` (the skipped ones included).
    """

    split: "Split"
    class_names: list[str]
    skipped: list[str]
    left_out: list[dict]


# A folder whose decoded images take more than this stays on disk (read by
# position from its cache); smaller ones are read into memory. Measured
# (README, "Larger-than-memory folders", benchmarks/bench_data_scale.py):
# both paths train equally fast, so the rule is about memory alone.
IN_MEMORY_LIMIT_BYTES = 2**30
STORAGES = ("auto", "memory", "disk")


def choose_storage(storage: str, images: int, size: int) -> str:
    """``"memory"`` or ``"disk"``: the storage a folder of ``images`` images
    decoded at ``size`` x ``size`` gets. ``auto`` (the default): memory when
    the decoded images take at most :data:`IN_MEMORY_LIMIT_BYTES` (1 GiB:
    e.g. 114,130 images at 56 px, 7,133 at 224 px), disk otherwise.

    Raises:
        ValueError: an unknown ``storage``.
    """
    if storage not in STORAGES:
        raise ValueError(f"data cache must be one of {', '.join(STORAGES)}. Received: {storage!r}")
    if storage != "auto":
        return storage
    return "memory" if images * size * size * 3 <= IN_MEMORY_LIMIT_BYTES else "disk"


def scan_folder(
    root: Path,
    size: int | ResizeRule,
    class_names: Sequence[str] | None = None,
    workers: int | None = None,
    storage: str = "auto",
) -> FolderScan:
    """Decodes a folder with one subfolder per class into a uint8 :class:`Split`.

    Args:
        root: the folder.
        size: the side images are fed at, or the whole :class:`ResizeRule`.
        class_names: the model's classes, for a test folder: its class
            folders must be among them (matched by name; a class may be
            absent) and labels are indices into them. None: the class folders
            found, sorted, are the classes.
        workers: decoding processes for the first decode (default: the CPUs).
        storage: ``auto``, ``memory`` or ``disk`` (see :func:`choose_storage`):
            with ``disk`` the split's ``x`` is a
            :class:`~kerasalex.data.cache.DiskImages` read from the cache by
            position (constant memory), otherwise an in-memory array.

    Returns:
        A :class:`FolderScan`. The decoded images are cached on disk
        (``~/.cache/kerasalex/folders/<key>/`` or under
        ``$KERASALEX_CACHE_DIR``, see :mod:`kerasalex.data.cache`), keyed by
        the files' names, sizes and mtimes and every decoding option: a
        changed folder gets a new cache.

    Raises:
        ValueError: no such folder, fewer than two classes, a class folder
            the model does not know, a class without readable images.
        kerasalex.data.cache.CacheError: (a ValueError) with ``disk`` storage,
            a cache that cannot be written (disk full); in any storage, a
            folder changed while it was being decoded.
    """
    from kerasalex.data import cache as C

    rule = size if isinstance(size, ResizeRule) else ResizeRule(int(size))
    root = Path(root)
    if not root.exists():
        raise ValueError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"dataset must be a folder with one subfolder per class. Received a file: {root}")
    left_out: list[dict] = []
    class_names, found, files, labels = _class_files(root, class_names, left_out)
    ids_all = [f.relative_to(root).as_posix() for f in files]
    x, y, ok, skipped, reasons = decode_cached(root, files, labels, rule, storage, workers)
    _check_classes(root, found, class_names, y, reasons)
    _warn_skipped(root, skipped, reasons)  # every run names them, not only the first
    left_out += [{"path": s, "reason": "unreadable: " + r} for s, r in zip(skipped, reasons)]
    ids = [i for i, k in zip(ids_all, ok) if k]
    return FolderScan(Split(x, y, ids), list(class_names), skipped, left_out)


def decode_cached(root: Path, files: Sequence[Path], labels: Sequence[int], rule: ResizeRule,
                  storage: str = "auto", workers: int | None = None, progress: bool = True):
    """``files`` (under ``root``) decoded by ``rule`` through the decode
    cache: read back when it holds them, else decoded (in parallel) and
    written to it. The cache is keyed by ``root``, the files' names, sizes
    and mtimes and every decoding option.

    Returns:
        ``(images, labels, ok, skipped, reasons)``: the decoded images (an
        array, or :class:`~kerasalex.data.cache.DiskImages` when ``storage``
        resolves to disk, see :func:`choose_storage`), their int32 labels,
        which of ``files`` were decoded, the unreadable ones and why. The
        labels are always ``labels`` (the caller's listing), never the
        cache's: the same files cached by ``predict`` (no labels) or under
        another model's class list give the right labels.
        progress: a progress bar on stdout for a first decode of 2,000
            images or more (``predict --json`` turns it off).

    Raises:
        kerasalex.data.cache.CacheError: see :func:`scan_folder`.
    """
    from kerasalex.data import cache as C

    where = choose_storage(storage, len(files), rule.size)
    key = _folder_key(root, files, rule)
    final = _cache_dir() / key
    y_all = np.asarray(labels, dtype=np.int32)
    opened = C.open_cache(final, len(files), say=_say, shape=(rule.size, rule.size, 3))
    if opened is None:
        opened, x_mem = _decode_into_cache(root, files, y_all, rule, final, key, where, workers, progress)
        if x_mem is not None:  # memory storage: the images just decoded
            x, ok, reasons = x_mem
            return x, y_all[ok], ok, [str(f) for f, k in zip(files, ok) if not k], reasons
    y = y_all[opened.ok]
    images = opened.images
    if not np.array_equal(y, opened.labels):
        images = C.DiskImages(images._shards)  # labels differ from the cached ones: no stored fingerprint
    x = images if where == "disk" else np.asarray(images)
    return x, y, opened.ok, opened.skipped, opened.reasons


def _say(msg: str) -> None:
    import sys

    print(f"[kerasalex] {msg}", file=sys.stderr, flush=True)


def _check_classes(root: Path, found, class_names, y: np.ndarray, reasons) -> None:
    for name in found:
        if not np.any(y == list(class_names).index(name)):
            raise ValueError(f"class folder {root / name} holds no readable image (all unreadable: "
                             f"{reasons[0] if reasons else 'corrupt'})")


def _class_files(root: Path, class_names: Sequence[str] | None, left_out: list[dict]):
    """The classes, the class folders found, and every image file with its
    label, checked against ``class_names`` when given (see :func:`scan_folder`)."""
    folders = _class_folders(root, left_out)
    found = [f.name for f in folders]
    if class_names is None:
        class_names = found
        if not folders:
            raise ValueError(f"no class subfolders in {root}; expected one subfolder of images per class")
        if len(folders) == 1:
            raise ValueError(f"only one class folder ({folders[0].name!r}) in {root}; expected at least 2 classes")
    else:
        unknown = [n for n in found if n not in class_names]
        if unknown:
            raise ValueError(f"class folders of {root} {unknown[:12]} are not among the model's classes "
                             f"{list(class_names)[:12]}; a test folder may lack classes, but not add any")
        if not folders:
            raise ValueError(f"no class subfolders in {root}; expected subfolders named like the model's classes {list(class_names)[:12]}")
    files: list[Path] = []
    labels: list[int] = []
    for name in found:
        fs = list_image_files(root / name, left_out)
        if not fs:
            raise ValueError(f"class folder {root / name} holds no image files (expected files ending in "
                             f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += fs
        labels += [list(class_names).index(name)] * len(fs)
    return class_names, found, files, labels


# Images per decoding task (at most; fewer for large images, see
# _chunk_size): large enough to amortise a process round trip, small enough
# to keep a bounded number in flight.
DECODE_CHUNK = 256
DECODE_CHUNK_BYTES = 16 * 2**20


def _chunk_size(size: int) -> int:
    return max(1, min(DECODE_CHUNK, DECODE_CHUNK_BYTES // (size * size * 3)))


def _decode_chunk(paths: Sequence[str], size: int, resize: str, interpolation: str):
    """Decodes ``paths`` (a worker process's task): (uint8 images, ok mask, reasons)."""
    x = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    ok = np.ones(len(paths), dtype=bool)
    reasons: list[str] = []
    for i, p in enumerate(paths):
        try:
            x[i] = decode_image(p, size, resize, interpolation)
        except ValueError as exc:
            ok[i] = False
            reasons.append(str(exc))
    return x, ok, reasons


# Set in the environment the decode worker processes start with.
WORKER_ENV = "KERASALEX_DECODE_WORKER"


def decode_workers(workers: int | None = None) -> int:
    """Processes for a first decode: ``workers`` or the CPUs this process may use."""
    if workers:
        return max(1, int(workers))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def decode_files(files: Sequence[Path], rule: ResizeRule, workers: int | None = None, progress: bool = False):
    """Decodes ``files`` in order, in chunks of :data:`DECODE_CHUNK` spread
    over ``workers`` processes (Pillow's decoding holds Python's GIL for
    much of its work, so threads use one core; processes use them all).
    At most ``2 x workers`` chunks are in flight: memory stays bounded.

    Yields:
        (start, images uint8 (k, size, size, 3), ok bool (k,), reasons of the failed ones).
    """
    import concurrent.futures
    import multiprocessing

    n = len(files)
    workers = decode_workers(workers)
    bar = _progress(n) if progress else None
    step = _chunk_size(rule.size)
    chunks = [(i, [str(f) for f in files[i : i + step]]) for i in range(0, n, step)]
    args = (rule.size, rule.resize, rule.interpolation)
    if workers == 1 or len(chunks) == 1:
        for start, paths in chunks:
            x, ok, reasons = _decode_chunk(paths, *args)
            if bar is not None:
                bar.add(len(paths))
            yield start, x, ok, reasons
        return
    # spawn: a forked child of a process running TensorFlow's threads can deadlock
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: list = []
        it = iter(chunks)
        # The workers start on the first submit and inherit this marker: their
        # `import kerasalex` skips TensorFlow (see kerasalex._in_worker_process).
        os.environ[WORKER_ENV] = "1"
        try:
            for start, paths in it:
                pending.append((start, pool.submit(_decode_chunk, paths, *args)))
                if len(pending) >= 2 * workers:
                    break
        finally:
            os.environ.pop(WORKER_ENV, None)
        while pending:
            start, fut = pending.pop(0)
            x, ok, reasons = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt[0], pool.submit(_decode_chunk, nxt[1], *args)))
            if bar is not None:
                bar.add(len(ok))
            yield start, x, ok, reasons


def _progress(n: int):
    import sys

    import keras

    print(f"[kerasalex] decoding {n} images into the cache (once per folder, size and decoding options)", flush=True)
    # (stdout, with Keras's bar; the one-line notes of _say go to stderr). Not a
    # terminal (a log file, nohup, CI): one plain line at the end (verbose=2),
    # not a bar redrawn with ANSI codes, as fit() does.
    tty = sys.stdout.isatty()
    return keras.utils.Progbar(n, unit_name="image", interval=0.5 if tty else 30.0, verbose=1 if tty else 2)


def _decode_into_cache(root: Path, files: Sequence[Path], y_all: np.ndarray, rule: ResizeRule, final: Path,
                       key: str, where: str, workers: int | None, progress: bool = True):
    """The first decode of a folder, written to its cache as it goes.

    Returns ``(opened cache or None, in memory or None)``: with memory
    storage the decoded ``(images, ok, reasons)`` (the cache is then an
    optimisation: None when it could not be written, e.g. a full disk);
    with disk storage ``(opened cache, None)``.
    """
    from kerasalex.data import cache as C
    from kerasalex.data.splits import fingerprint

    n = len(files)
    record = rule.size * rule.size * 3
    writer = None
    try:
        C.check_space(final.parent, n * record)
        writer = C.Writer(final, (rule.size, rule.size, 3), n)
    except (C.CacheError, OSError) as exc:
        if where == "disk":
            raise exc if isinstance(exc, C.CacheError) else C.CacheError(f"cannot write the decoded-image cache in {final.parent}: {exc}") from None
    x_mem = np.empty((n, rule.size, rule.size, 3), np.uint8) if where == "memory" else None
    ok_all = np.ones(n, dtype=bool)
    reasons_all: list[str] = []
    try:
        for start, x, ok, reasons in decode_files(files, rule, workers, progress=progress and n >= 2000):
            ok_all[start : start + len(ok)] = ok
            reasons_all += reasons
            if x_mem is not None:
                x_mem[start : start + len(ok)] = x
            if writer is not None:
                try:
                    writer.add(x[ok], y_all[start : start + len(ok)][ok])
                except C.CacheError:
                    writer = None  # removed by the writer itself
                    if where == "disk":
                        raise
        try:
            same = _folder_key(root, files, rule) == key
        except OSError:  # a file deleted meanwhile
            same = False
        if not same:
            raise C.CacheError(f"the folder {root} changed while it was being decoded; run the command again")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    skipped = [str(f) for f, k in zip(files, ok_all) if not k]
    if writer is not None:
        y = y_all[ok_all]
        if x_mem is not None:
            kept = x_mem if ok_all.all() else x_mem[ok_all]
            fp = lambda _images: fingerprint(Split(kept, y))  # noqa: E731
        else:
            fp = lambda images: fingerprint(Split(images, y))  # noqa: E731
        try:
            opened = writer.commit(ok_all, skipped, reasons_all, fp)
            return opened, ((kept, ok_all, reasons_all) if x_mem is not None else None)
        except C.CacheError:
            if where == "disk":
                raise
    return None, (x_mem if ok_all.all() else x_mem[ok_all], ok_all, reasons_all)


def folder_layout(root: str | os.PathLike) -> tuple[Path, Path | None]:
    """Where an image folder keeps its splits: ``(train_root, test_root)``.

    * ``root/train/`` and ``root/test/``: those two;
    * ``root/train/`` without ``test/``: ``(root/train, None)``, no test split;
    * no ``train/``: ``(root, root)``: ``root/<class>/`` is the training data,
      and also what ``evaluate --split test`` scores (see
      :func:`kerasalex.evaluation.held_out_split` for its held-out slice).

    Every command (train, tune, evaluate, compare, export) reads a folder by
    this rule.
    """
    root = Path(root)
    if (root / "train").is_dir():
        return root / "train", (root / "test" if (root / "test").is_dir() else None)
    return root, root


def has_test_split(dataset: str) -> bool:
    """Whether an image folder has test images of its own (``train/`` and ``test/``)."""
    train_root, test_root = folder_layout(dataset)
    return test_root is not None and test_root != train_root


def load_folder(root: str | os.PathLike, size: int | ResizeRule, test: bool = True,
                class_names: Sequence[str] | None = None, storage: str = "auto") -> ImageData:
    """An image folder: ``root/train/<class>/`` and ``root/test/<class>/`` when
    ``train/`` exists; otherwise ``root/<class>/`` is the training data (and
    also what ``evaluate --split test`` uses as its test data).

    Args:
        storage: ``auto``, ``memory`` or ``disk`` (see :func:`scan_folder`).
        test: read ``root/test/`` too. Training passes False: it never reads
            the test split, so a ``test/`` lacking a class is no concern of its.
        class_names: the model's classes (evaluation): ``test/`` is matched to
            them by name.
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"dataset folder not found: {root}")
    train_root, test_root = folder_layout(root)
    train_scan = scan_folder(train_root, size, class_names=class_names, storage=storage)
    names, skipped, left_out = train_scan.class_names, list(train_scan.skipped), list(train_scan.left_out)
    test_split = None
    if test_root == train_root:
        test_split = train_scan.split
    elif test_root is not None and test:
        t = scan_folder(test_root, size, class_names=names, storage=storage)
        test_split = t.split
        skipped += t.skipped
        left_out += t.left_out
    return ImageData(root.name or str(root), names, train=train_scan.split, test=test_split,
                     skipped=skipped, left_out=left_out)


def iter_image_paths(paths: Iterable[str], left_out: list[dict] | None = None) -> list[Path]:
    """The image files ``predict`` reads: each file named (whatever its
    extension: naming a file takes it), and the image files of each folder
    named, by the folder scan's rule (:func:`list_image_files`; what it
    leaves out is appended to ``left_out``).

    Raises:
        ValueError: a path does not exist, or no image file was found (the
            message names the folders and the extensions expected).
    """
    out = []
    folders = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ValueError(f"image not found: {p}")
        if p.is_dir():
            folders.append(p)
            out += list_image_files(p, left_out)
        else:
            out.append(p)
    if not out:
        where = ", ".join(str(f) for f in folders) or "(nothing)"
        raise ValueError(
            f"no image files in {where}: expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))} "
            f"(any depth; hidden files and folders are skipped)"
        )
    return out
