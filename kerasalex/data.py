"""Datasets by name or path -> compact uint8 arrays -> tf.data pipelines.

Images stay uint8 on the host (N, H, W, 3) for their whole life; conversion
to float, resizing and normalization happen inside the model. Training
batches are drawn by index from the in-memory array: each epoch's order is a
stateless shuffle of (seed, epoch), so a resumed run sees exactly the batches
an uninterrupted run would have seen.

Every image file, whichever command reads it, is decoded by one rule
(:func:`decode_image`: EXIF orientation, fixed bit-depth mapping, ICC to sRGB,
transparency on white) and resized by a recorded :class:`ResizeRule`. Every
file under a class folder is either used or named as left out with the
reason (:func:`list_image_files`); unreadable image files are *skipped* and
named in a warning; a class left with no readable image is an error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import pickle
import re
import struct
import tarfile
import threading
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

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
# The validation slice is carved with this fixed seed, whatever --seed says,
# so every run of a dataset validates on the same images.
SPLIT_SEED = 1234
DIGITS_TEST_FRACTION = 0.2


@dataclasses.dataclass
class Split:
    """One split: uint8 images (N, H, W, 3), int32 labels (N,) and, for an
    image folder, each image's path relative to the folder (``ids``)."""

    x: np.ndarray
    y: np.ndarray
    ids: list[str] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx) -> "Split":
        """The images at ``idx`` (an index array), ids included."""
        idx = np.asarray(idx, dtype=np.int64)
        return Split(self.x[idx], self.y[idx], [self.ids[i] for i in idx] if self.ids is not None else None)


@dataclasses.dataclass
class ImageData:
    """A dataset: class names and its train / val / test splits (any may be None)."""

    name: str
    class_names: list[str]
    train: Split | None = None
    val: Split | None = None
    test: Split | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)
    # Every file of the folder not used, {"path", "reason"} (see list_image_files).
    left_out: list[dict] = dataclasses.field(default_factory=list)
    # What a model trained on this records about it (kerasalex.training.training_data_record).
    training_data: dict | None = None

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


def load_digits_rgb(size: int = 32, interpolation: str = "nearest") -> ImageData:
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


# --------------------------------------------------------------------------
# Decoding one image: the one rule for train, evaluate, predict and tune
# --------------------------------------------------------------------------

# Bumped whenever the decoding rule changes, so cached folders are re-decoded.
DECODING_VERSION = 2
RESIZE_MODES = ("squash", "crop")
INTERPOLATIONS = ("bilinear", "nearest")
# What transparent pixels are composited on.
ALPHA_BACKGROUND = (255, 255, 255)
# Set it to decode images larger than Pillow's decompression-bomb limit.
MAX_PIXELS_ENV = "KERASALEX_MAX_IMAGE_PIXELS"


@dataclasses.dataclass(frozen=True)
class ResizeRule:
    """How an image of any size becomes ``size`` x ``size``.

    Attributes:
        size: the side of the square the model is fed.
        resize: ``"squash"`` (the whole image scaled to the square; its aspect
            ratio changes) or ``"crop"`` (the shorter side scaled to ``size``,
            then the centre ``size`` x ``size``: torchvision's
            ``Resize`` + ``CenterCrop``; nothing is distorted, the ends of the
            longer side are cut).
        interpolation: ``"bilinear"`` (antialiased when shrinking, as Pillow's
            and torchvision's) or ``"nearest"`` (digits: keeps 8x8 pixels as
            blocks).
    """

    size: int = 32
    resize: str = "squash"
    interpolation: str = "bilinear"

    def __post_init__(self):
        if int(self.size) < 1:
            raise ValueError(f"image size must be positive. Received: size={self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}. Received: interpolation={self.interpolation!r}")

    def to_dict(self) -> dict:
        """What a run's config.json and a model's metadata record (``preprocessing``)."""
        return {"image_size": int(self.size), "resize": self.resize, "interpolation": self.interpolation,
                "decoding_version": DECODING_VERSION, "alpha_background": list(ALPHA_BACKGROUND),
                "color": "sRGB via the embedded ICC profile" if _image_cms() is not None else "ICC profiles ignored"}

    @classmethod
    def from_dict(cls, d: dict, size: int | None = None) -> "ResizeRule":
        return cls(int(size or d.get("image_size") or 32), d.get("resize", "squash"), d.get("interpolation", "bilinear"))


def default_interpolation(dataset: str) -> str:
    """``"nearest"`` for ``digits`` (its data are 8x8 pixels: upscaling keeps
    them as blocks, and a raw 8x8 digit PNG given to ``predict`` is upscaled
    the same way), ``"bilinear"`` for everything else."""
    return "nearest" if dataset == "digits" else "bilinear"


def _image_cms():
    try:
        from PIL import ImageCms

        return ImageCms
    except ImportError:  # Pillow built without LittleCMS
        return None


_SRGB_TRANSFORMS: dict = {}


def _to_srgb(img, icc: bytes):
    """``img`` (L, RGB or CMYK) converted from its embedded ICC profile to sRGB
    RGB; None when Pillow has no LittleCMS or the profile is unreadable or
    does not fit the mode (then the plain conversion is used)."""
    cms = _image_cms()
    if cms is None:
        return None
    key = (hashlib.sha1(icc).hexdigest(), img.mode)
    transform = _SRGB_TRANSFORMS.get(key)
    if transform is None:
        try:
            transform = cms.buildTransform(cms.ImageCmsProfile(io.BytesIO(icc)), cms.createProfile("sRGB"),
                                           img.mode, "RGB")
        except (cms.PyCMSError, OSError, ValueError, TypeError):
            transform = False
        if len(_SRGB_TRANSFORMS) < 64:
            _SRGB_TRANSFORMS[key] = transform
    if transform is False:
        return None
    try:
        return cms.applyTransform(img, transform)
    except (cms.PyCMSError, OSError, ValueError):
        return None


def _fixed_depth_to_l(img):
    """16/32-bit integer and float gray images -> 8-bit ``L`` by a fixed
    mapping, the same for every image (never stretched to the image's own
    range): integer samples keep their high byte (0..65535 -> v >> 8, as
    Pillow reads 16-bit RGB), float samples are taken as [0, 1]."""
    from PIL import Image

    arr = np.asarray(img)
    if img.mode == "F":
        out = np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0)
    else:
        out = np.clip(arr.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(out.astype(np.uint8), "L")


def to_rgb(img):
    """A decoded Pillow image as the viewer shows it, in RGB: the one rule.

    1. EXIF orientation applied (``ImageOps.exif_transpose``).
    2. 16-bit, 32-bit and float samples by a fixed mapping (see
       :func:`_fixed_depth_to_l`); 1-bit as 0/255.
    3. Colour: an embedded ICC profile is converted to sRGB (LittleCMS via
       ``PIL.ImageCms``); without one, grayscale, palette, CMYK and YCbCr
       become RGB by Pillow's conversion (sRGB assumed).
    4. Transparency (an alpha band, a palette or colour-key ``transparency``)
       composited on white (:data:`ALPHA_BACKGROUND`).

    Args:
        img: an opened, loaded ``PIL.Image.Image`` (its first frame).

    Returns:
        An RGB ``PIL.Image.Image``.
    """
    from PIL import Image, ImageOps

    icc = img.info.get("icc_profile")
    img = ImageOps.exif_transpose(img)
    alpha = None
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _fixed_depth_to_l(img)
    elif img.mode == "1":
        img = img.convert("L")
    if "transparency" in img.info or img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        img = img.convert("RGBA")
        alpha = img.getchannel("A")
        img = img.convert("RGB")
    if img.mode == "P":
        img = img.convert("RGB")
    if img.mode not in ("L", "RGB", "CMYK"):
        img = img.convert("RGB")
    rgb = _to_srgb(img, icc) if icc else None
    if rgb is None:
        rgb = img.convert("RGB")
    if alpha is not None and alpha.getextrema() != (255, 255):
        background = Image.new("RGB", rgb.size, ALPHA_BACKGROUND)
        background.paste(rgb, mask=alpha)
        rgb = background
    return rgb


_RESAMPLE = {"bilinear": "BILINEAR", "nearest": "NEAREST"}


def resize_image(img, size: int, resize: str = "squash", interpolation: str = "bilinear"):
    """A Pillow image resized to ``size`` x ``size`` (see :class:`ResizeRule`);
    returned unchanged when it already is."""
    from PIL import Image

    rule = ResizeRule(size, resize, interpolation)
    resample = getattr(Image.Resampling, _RESAMPLE[rule.interpolation])
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if rule.resize == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) / 2.0, (h - side) / 2.0
        return img.resize((size, size), resample, box=(left, top, left + side, top + side))
    return img.resize((size, size), resample)


def resize_array(x: np.ndarray, size: int, resize: str = "squash", interpolation: str = "bilinear") -> np.ndarray:
    """uint8 images (N, H, W, 3) -> (N, size, size, 3) by :func:`resize_image`,
    so an in-memory dataset and an image file are resized by the same mapping."""
    from PIL import Image

    if x.shape[1] == size and x.shape[2] == size:
        return x
    out = np.empty((x.shape[0], size, size, 3), np.uint8)
    for i in range(len(x)):
        out[i] = np.asarray(resize_image(Image.fromarray(x[i]), size, resize, interpolation), dtype=np.uint8)
    return out


def max_image_pixels() -> int:
    """The largest image (width x height) decoded: Pillow's decompression-bomb
    limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, 178,956,970 by default), or
    ``$KERASALEX_MAX_IMAGE_PIXELS``."""
    from PIL import Image

    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if value:
        try:
            n = int(value.replace("_", ""))
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{MAX_PIXELS_ENV} must be a positive number of pixels. Received: {value!r}")
        return n
    return 2 * int(Image.MAX_IMAGE_PIXELS or 0) or 2**62


def _too_large(path, pixels: int | None, limit: int) -> str:
    size = f"{pixels:,} pixels" if pixels else "its size"
    how = (f"raise {MAX_PIXELS_ENV} (now {limit:,})" if os.environ.get(MAX_PIXELS_ENV, "").strip()
           else f"set {MAX_PIXELS_ENV}=N to decode images of up to N pixels")
    return (f"{path}: too large, not corrupt: {size} is over the decompression-bomb limit of {limit:,} pixels "
            f"(Pillow's, 2 x PIL.Image.MAX_IMAGE_PIXELS); if you trust the file, {how}, or shrink it")


def decode_image(
    path: str | os.PathLike,
    size: int | None = None,
    resize: str = "squash",
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Decodes one image file as a viewer shows it (:func:`to_rgb`), resized
    to ``size`` x ``size`` by :func:`resize_image` when ``size`` is given. An
    animated image gives its first frame. Every command decodes files here.

    Returns:
        uint8 array (H, W, 3).

    Raises:
        ValueError: the file is empty, truncated, not an image, or over the
            pixel limit (:func:`max_image_pixels`; the message says so).
    """
    from PIL import Image, UnidentifiedImageError

    bomb = getattr(Image, "DecompressionBombError", OSError)
    limit = max_image_pixels()
    own_limit = bool(os.environ.get(MAX_PIXELS_ENV, "").strip())
    try:
        if own_limit:
            # Pillow's check is replaced by ours (Pillow reads the header only on open).
            with _pillow_limit_off():
                img = Image.open(path)
        else:
            img = Image.open(path)
        with img:
            pixels = img.size[0] * img.size[1]
            if pixels > limit:
                raise ValueError(_too_large(path, pixels, limit))
            img.seek(0)
            img.load()
            out = to_rgb(img)
            if size is not None:
                out = resize_image(out, size, resize, interpolation)
            return np.asarray(out, dtype=np.uint8)
    except bomb as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        raise ValueError(_too_large(path, int(m.group(1)) if m else None, limit)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, struct.error) as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        if "decompression-bomb limit" in str(exc):
            raise
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


_LIMIT_LOCK = threading.Lock()


class _pillow_limit_off:
    """Turns Pillow's own decompression-bomb check off while a file is opened
    (``$KERASALEX_MAX_IMAGE_PIXELS`` replaces it)."""

    def __enter__(self):
        from PIL import Image

        _LIMIT_LOCK.acquire()
        self.saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None

    def __exit__(self, *exc):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self.saved
        _LIMIT_LOCK.release()
        return False


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


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


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


def _image_files(folder: Path) -> list[Path]:
    return list_image_files(folder)


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

    h = hashlib.sha1(
        f"{root.resolve()}|{rule.size}|{rule.resize}|{rule.interpolation}|v{DECODING_VERSION}|"
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


def scan_folder(
    root: Path,
    size: int | ResizeRule,
    class_names: Sequence[str] | None = None,
    workers: int = 4,
) -> FolderScan:
    """Decodes a folder with one subfolder per class into a uint8 :class:`Split`.

    Args:
        root: the folder.
        size: the side images are fed at, or the whole :class:`ResizeRule`.
        class_names: the model's classes, for a test folder: its class
            folders must be among them (matched by name; a class may be
            absent) and labels are indices into them. None: the class folders
            found, sorted, are the classes.

    Returns:
        A :class:`FolderScan`. Results are cached on disk (``~/.cache/kerasalex``
        or ``$KERASALEX_CACHE_DIR``), keyed by the files' names, sizes and
        mtimes and every decoding option.

    Raises:
        ValueError: no such folder, fewer than two classes, a class folder
            the model does not know, a class without readable images.
    """
    rule = size if isinstance(size, ResizeRule) else ResizeRule(int(size))
    root = Path(root)
    if not root.exists():
        raise ValueError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"dataset must be a folder with one subfolder per class. Received a file: {root}")
    left_out: list[dict] = []
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

    ids_all = [f.relative_to(root).as_posix() for f in files]
    key = _folder_key(root, files, rule)
    cache = _cache_dir() / f"{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                ok = z["ok"]
                split = Split(z["x"], z["y"], [i for i, k in zip(ids_all, ok) if k])
                skipped = [str(s) for s in z["skipped"]]
                reasons = [str(s) for s in z["reasons"]]
            _warn_skipped(root, skipped, reasons)  # every run names them, not only the first
            left_out += [{"path": s, "reason": "unreadable: " + r} for s, r in zip(skipped, reasons)]
            return FolderScan(split, list(class_names), skipped, left_out)
        except Exception:  # a damaged or older cache is just rebuilt
            pass

    x = np.empty((len(files), rule.size, rule.size, 3), dtype=np.uint8)
    ok = np.ones(len(files), dtype=bool)
    skipped: list[str] = []
    reasons: list[str] = []

    def work(i: int):
        try:
            x[i] = decode_image(files[i], rule.size, rule.resize, rule.interpolation)
            return None
        except ValueError as exc:
            return i, str(exc)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for res in pool.map(work, range(len(files))):
            if res is not None:
                ok[res[0]] = False
                skipped.append(str(files[res[0]]))
                reasons.append(res[1])
    y = np.asarray(labels, dtype=np.int32)
    x, y = x[ok], y[ok]
    for name in found:
        if not np.any(y == list(class_names).index(name)):
            raise ValueError(f"class folder {root / name} holds no readable image (all unreadable: "
                             f"{reasons[0] if reasons else 'corrupt'})")
    _warn_skipped(root, skipped, reasons)
    try:
        from kerasalex.files import atomic_path

        with atomic_path(cache, suffix=".npz") as tmp:
            np.savez(tmp, x=x, y=y, ok=ok, skipped=np.asarray(skipped, dtype=str), reasons=np.asarray(reasons, dtype=str))
    except OSError:
        pass  # the cache is an optimisation only
    left_out += [{"path": s, "reason": "unreadable: " + r} for s, r in zip(skipped, reasons)]
    return FolderScan(Split(x, y, [i for i, k in zip(ids_all, ok) if k]), list(class_names), skipped, left_out)


def load_folder(root: str | os.PathLike, size: int | ResizeRule, test: bool = True,
                class_names: Sequence[str] | None = None) -> ImageData:
    """An image folder: ``root/train/<class>/`` and ``root/test/<class>/`` when
    ``train/`` exists; otherwise ``root/<class>/`` is the training data (and
    also what ``evaluate --split test`` uses as its test data).

    Args:
        test: read ``root/test/`` too. Training passes False: it never reads
            the test split, so a ``test/`` lacking a class is no concern of its.
        class_names: the model's classes (evaluation): ``test/`` is matched to
            them by name.
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"dataset folder not found: {root}")
    train_root = root / "train" if (root / "train").is_dir() else root
    train_scan = scan_folder(train_root, size, class_names=class_names)
    names, skipped, left_out = train_scan.class_names, list(train_scan.skipped), list(train_scan.left_out)
    test_split = None
    if train_root != root and test and (root / "test").is_dir():
        t = scan_folder(root / "test", size, class_names=names)
        test_split = t.split
        skipped += t.skipped
        left_out += t.left_out
    elif train_root == root:
        test_split = train_scan.split
    return ImageData(root.name or str(root), names, train=train_scan.split, test=test_split,
                     skipped=skipped, left_out=left_out)


# --------------------------------------------------------------------------
# The front door
# --------------------------------------------------------------------------


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
    resize: str = "squash",
    interpolation: str | None = None,
    test: bool = True,
    class_names: Sequence[str] | None = None,
) -> ImageData:
    """Loads a dataset by name (``cifar10``, ``cifar100``, ``digits``) or path
    (an image folder) as uint8 train/test splits, every image decoded and
    resized by one rule (:func:`decode_image`, :func:`resize_array`).

    Args:
        dataset: a name or a folder path.
        data_dir: for cifar10/cifar100, a local python-format ``.tar.gz`` or
            extracted folder (offline); default: Keras's download/cache.
        image_size: side of the square images returned; default 32.
        resize: ``"squash"`` or ``"crop"`` (see :class:`ResizeRule`).
        interpolation: ``"bilinear"`` or ``"nearest"``; default
            :func:`default_interpolation` of the dataset.
        test: also load the test split (training passes False: it never reads it).
        class_names: the model's classes, to match a folder's ``test/`` by name.
    """
    size = int(image_size or 32)
    if size < 1:
        raise ValueError(f"image_size must be positive. Received: image_size={image_size}")
    rule = ResizeRule(size, resize, interpolation or default_interpolation(dataset))
    if dataset in ("cifar10", "cifar100"):
        data = load_cifar_python(data_dir, dataset) if data_dir else _load_keras_cifar(dataset)
    elif dataset == "digits":
        data = load_digits_rgb(size, rule.interpolation)
    else:
        if data_dir:
            raise ValueError("--data-dir applies to cifar10/cifar100; for an image folder pass it as --dataset PATH")
        p = Path(dataset)
        if not p.exists():
            raise ValueError(
                f"dataset {dataset!r} is neither a known name ({', '.join(NAMED_DATASETS)}) nor an existing folder"
            )
        return load_folder(p, rule, test=test, class_names=class_names)
    if not test:
        data.test = None
    for split in (data.train, data.test):
        if split is not None:
            split.x = resize_array(split.x, size, rule.resize, rule.interpolation)
    return data


def fingerprint(split: Split) -> str:
    """sha1 of a split's labels and decoded pixels: equal for the same images
    in the same order decoded by the same rule (what a model records about
    the data it was trained on)."""
    h = hashlib.sha1(np.ascontiguousarray(split.y, dtype=np.int32).tobytes())
    h.update(str(split.x.shape).encode())
    h.update(np.ascontiguousarray(split.x).data)
    return h.hexdigest()


def stratified_sample(y: np.ndarray, n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of a seeded, stratified sample of ``n`` of the labels ``y``.

    Each class present gets a share of ``n`` in proportion to its count
    (largest remainders), and at least one image when ``n`` is at least the
    number of classes present; within a class the images are drawn at random
    with ``seed``. ``n >= len(y)`` returns every index.
    """
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (n / len(y))
    take = np.floor(quota).astype(int)
    if n >= len(classes):
        take = np.maximum(take, 1)
    take = np.minimum(take, counts)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while take.sum() < n:
        for i in order:
            if take.sum() >= n:
                break
            if take[i] < counts[i]:
                take[i] += 1
    while take.sum() > n:  # the minimum of one per class overshot: trim the largest shares
        i = int(np.argmax(take - (take <= 1) * n))
        take[i] -= 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), size=int(k), replace=False) for c, k in zip(classes, take) if k]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


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
        val = train.take(va_idx)
        train = train.take(tr_idx)
    if limit is not None and limit < len(train):
        rng = np.random.default_rng(SPLIT_SEED)
        keep = np.sort(rng.permutation(len(train))[:limit])
        train = train.take(keep)
        if val is not None:
            n = max(1, int(np.ceil(limit * val_split / max(1e-9, 1 - val_split))))
            if n < len(val):
                keep = np.sort(rng.permutation(len(val))[:n])
                val = val.take(keep)
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
