"""The named datasets: CIFAR-10/100 (the python archive Keras downloads, or a
local copy) and scikit-learn's bundled digits (the offline dataset)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from kerasalex.data.decoding import DEFAULT_IMAGE_SIZE, resize_array
from kerasalex.data.splits import SPLIT_SEED, ImageData, Split

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
DIGITS_TEST_FRACTION = 0.2
# CIFAR's images are 32x32: the python batches store them as rows of 3 x 32 x 32 bytes.
CIFAR_SIDE = 32


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
    if data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIDE * CIFAR_SIDE:
        raise ValueError(f"{what}: expected data of shape (N, {3 * CIFAR_SIDE * CIFAR_SIDE}), got {data.shape}")
    x = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1).copy()
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


def load_digits_rgb(size: int = DEFAULT_IMAGE_SIZE, interpolation: str = "nearest") -> ImageData:
    """scikit-learn's bundled 8x8 digits as uint8 RGB at ``size`` px, split
    80/20 stratified with a fixed seed.

    The 8x8 images are resized by :func:`resize_array` with ``interpolation``
    (default ``"nearest"``, the rule :func:`default_interpolation` gives
    digits), the same mapping :func:`decode_image` applies to an 8x8 digit
    PNG given to ``predict``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (N, 8, 8)
    x = np.repeat(x[..., None], 3, axis=-1)  # gray -> RGB
    x = resize_array(x, size, "squash", interpolation)
    y = d.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return ImageData("digits", list(DIGITS_CLASSES), train=Split(xtr, ytr), test=Split(xte, yte))
