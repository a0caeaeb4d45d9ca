"""Datasets by name or path -> compact uint8 arrays -> tf.data pipelines.

Images stay uint8 on the host (N, H, W, 3) for their whole life; conversion
to float, resizing and normalization happen inside the model. Training
batches are drawn by index from the in-memory array: each epoch's order is a
stateless shuffle of (seed, epoch), so a resumed run sees exactly the batches
an uninterrupted run would have seen.

Corrupt image files in a folder are *skipped*, and each one is named in a
warning (and counted in the run's config); a class left with no readable
image is an error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()
DIGITS_CLASSES = [str(i) for i in range(10)]
NAMED_DATASETS = ("cifar10", "cifar100", "digits")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
# The validation slice is carved with this fixed seed, whatever --seed says,
# so every run of a dataset validates on the same images.
SPLIT_SEED = 1234
DIGITS_TEST_FRACTION = 0.2


@dataclasses.dataclass
class Split:
    """One split: uint8 images (N, H, W, 3) and int32 labels (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclasses.dataclass
class ImageData:
    """A dataset: class names and its train / val / test splits (any may be None)."""

    name: str
    class_names: list[str]
    train: Split | None = None
    val: Split | None = None
    test: Split | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        for s in (self.train, self.val, self.test):
            if s is not None:
                return tuple(int(d) for d in s.x.shape[1:])
        raise ValueError(f"dataset {self.name} has no splits")


# --------------------------------------------------------------------------
# CIFAR python format (the archive Keras downloads)
# --------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches without running arbitrary code: only the numpy
    classes a CIFAR batch needs may be constructed."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a CIFAR batch")


def _unpickle(data: bytes, what: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise ValueError(f"{what} is not a readable CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} is not a CIFAR python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(batch: dict, label_key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{what} lacks the 'data'/'{label_key}' entries of a CIFAR batch")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{what}: expected data of shape (N, 3072), got {data.shape}")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    y = np.asarray(batch[label_key], dtype=np.int32)
    if len(y) != len(x):
        raise ValueError(f"{what}: {len(x)} images but {len(y)} labels")
    return x, y


def _cifar_members(path: Path, variant: str) -> dict[str, bytes]:
    """Reads the needed members of a cifar-*-python archive or extracted folder."""
    if variant == "cifar10":
        folder, names = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    else:
        folder, names = "cifar-100-python", ["train", "test", "meta"]
    expected = f"{folder}/ (with {', '.join(names)})"
    out: dict[str, bytes] = {}
    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
                for n in names:
                    m = members.get(f"{folder}/{n}")
                    if m is None:
                        raise ValueError(f"archive {path} is not in the {variant} python layout: missing {folder}/{n}")
                    out[n] = tar.extractfile(m).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ValueError(f"{path} is not a readable cifar-*-python.tar.gz archive ({exc})") from None
        return out
    if path.is_dir():
        base = path / folder if (path / folder).is_dir() else path
        for n in names:
            f = base / n
            if not f.is_file():
                raise ValueError(f"{path} is not a {variant} python folder: missing {f.name}; expected {expected}")
            out[n] = f.read_bytes()
        return out
    raise ValueError(f"--data-dir not found: {path} (expected a {variant} python .tar.gz or a {folder}/ folder)")


def load_cifar_python(path: str | os.PathLike, variant: str = "cifar10") -> ImageData:
    """Reads CIFAR-10/100 in the python format from a ``.tar.gz`` or its
    extracted folder (the files Keras downloads), fully offline."""
    path = Path(path)
    raw = _cifar_members(path, variant)
    if variant == "cifar10":
        parts = [_batch_arrays(_unpickle(raw[f"data_batch_{i}"], f"data_batch_{i}"), "labels", f"{path}:data_batch_{i}") for i in range(1, 6)]
        xtr = np.concatenate([p[0] for p in parts])
        ytr = np.concatenate([p[1] for p in parts])
        xte, yte = _batch_arrays(_unpickle(raw["test_batch"], "test_batch"), "labels", f"{path}:test_batch")
        meta = _unpickle(raw["batches.meta"], "batches.meta")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", CIFAR10_CLASSES)]
    else:
        xtr, ytr = _batch_arrays(_unpickle(raw["train"], "train"), "fine_labels", f"{path}:train")
        xte, yte = _batch_arrays(_unpickle(raw["test"], "test"), "fine_labels", f"{path}:test")
        meta = _unpickle(raw["meta"], "meta")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("fine_label_names", CIFAR100_CLASSES)]
    return ImageData(variant, names, train=Split(xtr, ytr), test=Split(xte, yte))


def _load_keras_cifar(variant: str) -> ImageData:
    import keras

    try:
        if variant == "cifar10":
            (xtr, ytr), (xte, yte) = keras.datasets.cifar10.load_data()
            names = CIFAR10_CLASSES
        else:
            (xtr, ytr), (xte, yte) = keras.datasets.cifar100.load_data(label_mode="fine")
            names = CIFAR100_CLASSES
    except Exception as exc:
        from kerasalex.files import error_line

        archive = "cifar-10-python.tar.gz" if variant == "cifar10" else "cifar-100-python.tar.gz"
        raise ValueError(
            f"could not download {variant} ({type(exc).__name__}: {error_line(exc)}); offline, pass --data-dir PATH "
            f"to a local {archive} or its extracted folder"
        ) from None
    return ImageData(
        variant, list(names),
        train=Split(np.asarray(xtr, np.uint8), np.asarray(ytr, np.int32).reshape(-1)),
        test=Split(np.asarray(xte, np.uint8), np.asarray(yte, np.int32).reshape(-1)),
    )


# --------------------------------------------------------------------------
# scikit-learn digits (bundled: the offline dataset)
# --------------------------------------------------------------------------


def load_digits_rgb(size: int = 32) -> ImageData:
    """scikit-learn's bundled 8x8 digits as uint8 RGB at ``size`` px (nearest
    upscaling), split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (N, 8, 8)
    x = np.repeat(x[..., None], 3, axis=-1)  # gray -> RGB
    x = _resize_uint8(x, size)
    y = d.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return ImageData("digits", list(DIGITS_CLASSES), train=Split(xtr, ytr), test=Split(xte, yte))


# --------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def decode_image(path: Path, size: int | None) -> np.ndarray:
    """Decodes one image file to uint8 RGB (H, W, 3), resized to ``size`` x
    ``size`` when given. Grayscale, palette, RGBA, CMYK and 16-bit images become
    RGB; an animated image gives its first frame.

    Raises:
        ValueError: the file is empty, truncated, or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    bomb = getattr(Image, "DecompressionBombError", OSError)

    try:
        with Image.open(path) as img:
            img.seek(0)
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(arr / max(arr.max(), 1) * 255, 0, 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            img = img.convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, bomb) as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _cache_dir() -> Path:
    return Path(os.environ.get("KERASALEX_CACHE_DIR", Path.home() / ".cache" / "kerasalex")) / "folders"


def _folder_key(root: Path, files: Sequence[Path], size: int) -> str:
    h = hashlib.sha1(f"{root.resolve()}|{size}|v1".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _warn_skipped(root: Path, skipped: Sequence[str]) -> None:
    if skipped:
        shown = "; ".join(skipped[:10]) + (f"; ... ({len(skipped) - 10} more)" if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} corrupt image file(s) in {root}: {shown}", stacklevel=3)


def scan_folder(root: Path, size: int, class_names: Sequence[str] | None = None, workers: int = 4) -> tuple[Split, list[str], list[str]]:
    """Decodes a folder with one subfolder per class into a uint8 :class:`Split`.

    Returns (split, class_names, skipped) where ``skipped`` names the corrupt
    files that were left out. Results are cached on disk (``~/.cache/kerasalex``
    or ``$KERASALEX_CACHE_DIR``), keyed by the files' names, sizes and mtimes.
    """
    if not root.exists():
        raise ValueError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"dataset must be a folder with one subfolder per class. Received a file: {root}")
    folders = _class_folders(root)
    if class_names is None:
        class_names = [f.name for f in folders]
        if not folders:
            raise ValueError(f"no class subfolders in {root}; expected one subfolder of images per class")
        if len(folders) == 1:
            raise ValueError(f"only one class folder ({folders[0].name!r}) in {root}; expected at least 2 classes")
    else:
        found = [f.name for f in folders]
        if found != list(class_names):
            raise ValueError(f"class folders of {root} {found} differ from the training classes {list(class_names)}")
    files: list[Path] = []
    labels: list[int] = []
    for i, name in enumerate(class_names):
        fs = _image_files(root / name)
        if not fs:
            raise ValueError(f"class folder {root / name} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += fs
        labels += [i] * len(fs)

    key = _folder_key(root, files, size)
    cache = _cache_dir() / f"{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                split, cached_skipped = Split(z["x"], z["y"]), [str(s) for s in z["skipped"]]
            _warn_skipped(root, cached_skipped)  # every run names them, not only the first
            return split, list(class_names), cached_skipped
        except Exception:  # a damaged cache is just rebuilt
            pass

    x = np.empty((len(files), size, size, 3), dtype=np.uint8)
    ok = np.ones(len(files), dtype=bool)
    skipped: list[str] = []

    def work(i: int):
        try:
            x[i] = decode_image(files[i], size)
            return None
        except ValueError as exc:
            return i, str(exc)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for res in pool.map(work, range(len(files))):
            if res is not None:
                ok[res[0]] = False
                skipped.append(str(files[res[0]]))
    y = np.asarray(labels, dtype=np.int32)
    x, y = x[ok], y[ok]
    for i, name in enumerate(class_names):
        if not np.any(y == i):
            raise ValueError(f"class folder {root / name} holds no readable image (all corrupt)")
    _warn_skipped(root, skipped)
    try:
        from kerasalex.files import atomic_path

        with atomic_path(cache, suffix=".npz") as tmp:
            np.savez(tmp, x=x, y=y, skipped=np.asarray(skipped, dtype=str))
    except OSError:
        pass  # the cache is an optimisation only
    return Split(x, y), list(class_names), skipped


def load_folder(root: str | os.PathLike, size: int) -> ImageData:
    """An image folder: ``root/train/<class>/`` and ``root/test/<class>/`` when
    ``train/`` exists; otherwise ``root/<class>/`` is the training data (and
    also what ``evaluate`` uses as its test data)."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"dataset folder not found: {root}")
    train_root = root / "train" if (root / "train").is_dir() else root
    train, names, skipped = scan_folder(train_root, size)
    test = None
    if train_root != root and (root / "test").is_dir():
        test, _, sk = scan_folder(root / "test", size, class_names=names)
        skipped += sk
    elif train_root == root:
        test = train
    return ImageData(root.name or str(root), names, train=train, test=test, skipped=skipped)


# --------------------------------------------------------------------------
# The front door
# --------------------------------------------------------------------------


def _resize_uint8(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[1] == size and x.shape[2] == size:
        return x
    if x.shape[1] * 4 == size * 1 and False:  # pragma: no cover
        pass
    if size % x.shape[1] == 0 and size % x.shape[2] == 0 and x.shape[1] == x.shape[2]:
        f = size // x.shape[1]
        return np.repeat(np.repeat(x, f, axis=1), f, axis=2)
    import tensorflow as tf

    out = np.empty((x.shape[0], size, size, 3), np.uint8)
    for i in range(0, len(x), 1024):
        r = tf.image.resize(x[i : i + 1024], (size, size), method="bilinear")
        out[i : i + 1024] = np.clip(np.round(r.numpy()), 0, 255).astype(np.uint8)
    return out


def dataset_name(dataset: str) -> str:
    return dataset if dataset in NAMED_DATASETS else Path(dataset).name or dataset


def display_name(dataset: str) -> str:
    """A dataset's name for people: ``cifar10``, or the folder with its parent
    (``cifar10-jpeg/train``: a bare ``train`` says nothing)."""
    if dataset in NAMED_DATASETS:
        return dataset
    p = Path(dataset)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name or dataset


def load_data(
    dataset: str = "cifar10",
    data_dir: str | None = None,
    image_size: int | None = None,
) -> ImageData:
    """Loads a dataset by name (``cifar10``, ``cifar100``, ``digits``) or path
    (an image folder) as uint8 train/test splits.

    Args:
        dataset: a name or a folder path.
        data_dir: for cifar10/cifar100, a local python-format ``.tar.gz`` or
            extracted folder (offline); default: Keras's download/cache.
        image_size: side of the square images returned; default 32.
    """
    size = int(image_size or 32)
    if size < 1:
        raise ValueError(f"image_size must be positive. Received: image_size={image_size}")
    if dataset in ("cifar10", "cifar100"):
        data = load_cifar_python(data_dir, dataset) if data_dir else _load_keras_cifar(dataset)
    elif dataset == "digits":
        data = load_digits_rgb(size)
    else:
        if data_dir:
            raise ValueError("--data-dir applies to cifar10/cifar100; for an image folder pass it as --dataset PATH")
        p = Path(dataset)
        if not p.exists():
            raise ValueError(
                f"dataset {dataset!r} is neither a known name ({', '.join(NAMED_DATASETS)}) nor an existing folder"
            )
        return load_folder(p, size)
    for split in (data.train, data.test):
        if split is not None:
            split.x = _resize_uint8(split.x, size)
    return data


def carve_validation(data: ImageData, val_split: float, limit: int | None = None, seed: int = 0) -> ImageData:
    """Splits ``val_split`` of the training data off as validation (stratified,
    fixed seed), then keeps ``limit`` training images (and a validation slice
    in proportion) when ``limit`` is given."""
    from sklearn.model_selection import train_test_split

    train = data.train
    if train is None:
        raise ValueError(f"dataset {data.name} has no training split")
    val = None
    n_val = int(round(len(train) * val_split))
    if val_split > 0 and n_val >= 1 and len(train) - n_val >= 1:
        idx = np.arange(len(train))
        counts = np.bincount(train.y, minlength=data.num_classes)
        strat = train.y if counts[counts > 0].min() >= 2 and n_val >= data.num_classes else None
        tr_idx, va_idx = train_test_split(idx, test_size=n_val, random_state=SPLIT_SEED, stratify=strat)
        tr_idx, va_idx = np.sort(tr_idx), np.sort(va_idx)
        val = Split(train.x[va_idx], train.y[va_idx])
        train = Split(train.x[tr_idx], train.y[tr_idx])
    if limit is not None and limit < len(train):
        rng = np.random.default_rng(SPLIT_SEED)
        keep = np.sort(rng.permutation(len(train))[:limit])
        train = Split(train.x[keep], train.y[keep])
        if val is not None:
            n = max(1, int(np.ceil(limit * val_split / max(1e-9, 1 - val_split))))
            if n < len(val):
                keep = np.sort(rng.permutation(len(val))[:n])
                val = Split(val.x[keep], val.y[keep])
    return dataclasses.replace(data, train=train, val=val)


# --------------------------------------------------------------------------
# tf.data pipelines
# --------------------------------------------------------------------------


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch ``epoch`` (0-based): a function of (seed, epoch) only
    (numpy's PCG64 seeded with both), so a resumed run replays it exactly."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(n)


def train_stream(
    split: Split,
    batch_size: int,
    num_classes: int,
    seed: int,
    start_epoch: int,
    epochs: int,
    one_hot: bool = True,
):
    """Batches of (uint8 images, labels) for epochs ``start_epoch..epochs-1``,
    one after another, each epoch in its own :func:`epoch_order`.

    Batches are gathered from the in-memory uint8 array by index, so the
    pipeline holds no second copy of the dataset (a ``from_tensor_slices`` of
    the array would embed one or two copies of it in the graph).

    Returns (dataset, steps_per_epoch). Pass both to ``fit`` with
    ``initial_epoch=start_epoch``.
    """
    import tensorflow as tf

    n = len(split)
    steps = steps_per_epoch(n, batch_size)
    x, y = split.x, split.y
    eye = np.eye(num_classes, dtype=np.float32)

    def batches():
        for epoch in range(start_epoch, max(start_epoch + 1, epochs)):
            order = epoch_order(n, seed, epoch)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                yield x[idx], (eye[y[idx]] if one_hot else y[idx])

    label_spec = (
        tf.TensorSpec((None, num_classes), tf.float32) if one_hot else tf.TensorSpec((None,), tf.int32)
    )
    ds = tf.data.Dataset.from_generator(
        batches, output_signature=(tf.TensorSpec((None, *x.shape[1:]), tf.uint8), label_spec)
    )
    return ds.prefetch(tf.data.AUTOTUNE), steps


def eval_dataset(split: Split, batch_size: int, num_classes: int | None = None, one_hot: bool = True):
    """Batches of (uint8 images, labels) in order, for validation and evaluation."""
    import tensorflow as tf

    y = split.y
    ds = tf.data.Dataset.from_tensor_slices((split.x, y)).batch(batch_size)
    if one_hot and num_classes:
        ds = ds.map(lambda a, b: (a, tf.one_hot(b, num_classes, dtype=tf.float32)))
    return ds.prefetch(tf.data.AUTOTUNE)


def images_only(x: np.ndarray, batch_size: int):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def iter_image_paths(paths: Iterable[str]) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ValueError(f"image not found: {p}")
        if p.is_dir():
            out += _image_files(p)
        else:
            out.append(p)
    if not out:
        raise ValueError("no image files given")
    return out
