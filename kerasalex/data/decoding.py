"""Decoding one image file: the one rule for train, evaluate, predict and tune
(EXIF orientation, fixed bit-depth mapping, ICC to sRGB, transparency on
white), and the :class:`ResizeRule` that makes any image square."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import struct
import threading

import numpy as np

# --------------------------------------------------------------------------
# Decoding one image: the one rule for train, evaluate, predict and tune
# --------------------------------------------------------------------------

# The side images are fed at when neither the command line nor the
# architecture's registry entry says otherwise.
DEFAULT_IMAGE_SIZE = 32
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

    size: int = DEFAULT_IMAGE_SIZE
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
        return cls(int(size or d.get("image_size") or DEFAULT_IMAGE_SIZE), d.get("resize", "squash"), d.get("interpolation", "bilinear"))


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
