"""Datasets by name or path -> compact uint8 arrays -> tf.data pipelines.

Images stay uint8 on the host (N, H, W, 3) for their whole life; conversion
to float, resizing and normalization happen inside the model. Training
batches are drawn by index from the in-memory array, or, for a folder too
large for memory, read by position from its decode cache on disk
(:mod:`~kerasalex.data.cache`): each epoch's order is a stateless shuffle of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted
run would have seen.

Every image file, whichever command reads it, is decoded by one rule
(:func:`decode_image`: EXIF orientation, fixed bit-depth mapping, ICC to sRGB,
transparency on white) and resized by a recorded :class:`ResizeRule`. Every
file under a class folder is either used or named as left out with the
reason (:func:`list_image_files`); unreadable image files are *skipped* and
named in a warning; a class left with no readable image is an error.

The package, by concern (every name is importable from ``kerasalex.data``):

* :mod:`~kerasalex.data.splits`: :class:`ImageData`, :class:`Split`, the
  validation slice (:func:`carve_validation`), fingerprints;
* :mod:`~kerasalex.data.decoding`: :func:`decode_image`, :class:`ResizeRule`;
* :mod:`~kerasalex.data.named`: cifar10, cifar100, digits;
* :mod:`~kerasalex.data.folders`: image folders (:func:`folder_layout`,
  :func:`scan_folder`, the parallel first decode, the memory/disk rule);
* :mod:`~kerasalex.data.cache`: the decode cache on disk and
  :class:`~kerasalex.data.cache.DiskImages` (images read by position);
* :mod:`~kerasalex.data.pipeline`: tf.data streams, :func:`steps_per_epoch`;
* here: :func:`load_data` (a dataset by name or path) and :func:`prepare`
  (a run's training data: the one path for train, transfer and tune).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kerasalex.data.decoding import (
    ALPHA_BACKGROUND,
    DECODING_VERSION,
    DEFAULT_IMAGE_SIZE,
    INTERPOLATIONS,
    MAX_PIXELS_ENV,
    RESIZE_MODES,
    ResizeRule,
    _image_cms,
    decode_image,
    default_interpolation,
    max_image_pixels,
    resize_array,
    resize_image,
    to_rgb,
)
from kerasalex.data.folders import (
    IMAGE_EXTENSIONS,
    FolderScan,
    describe_left_out,
    folder_layout,
    has_test_split,
    iter_image_paths,
    list_image_files,
    load_folder,
    scan_folder,
)
from kerasalex.data.named import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    DIGITS_CLASSES,
    DIGITS_TEST_FRACTION,
    NAMED_DATASETS,
    _load_keras_cifar,
    load_cifar_python,
    load_digits_rgb,
)
from kerasalex.data.pipeline import (
    epoch_batches,
    epoch_order,
    eval_dataset,
    images_only,
    replica_parts,
    sharded_streams,
    steps_per_epoch,
    train_stream,
)
from kerasalex.data.splits import (
    SPLIT_SEED,
    ImageData,
    Split,
    carve_validation,
    fingerprint,
    image_digests,
    stratified_sample,
)
__all__ = [
    "ALPHA_BACKGROUND",
    "carve_validation",
    "CIFAR100_CLASSES",
    "CIFAR10_CLASSES",
    "dataset_name",
    "decode_image",
    "DECODING_VERSION",
    "DEFAULT_IMAGE_SIZE",
    "default_interpolation",
    "describe_left_out",
    "DIGITS_CLASSES",
    "DIGITS_TEST_FRACTION",
    "display_name",
    "epoch_batches",
    "epoch_order",
    "eval_dataset",
    "fingerprint",
    "folder_layout",
    "FolderScan",
    "has_test_split",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "image_digests",
    "images_only",
    "INTERPOLATIONS",
    "iter_image_paths",
    "list_image_files",
    "load_cifar_python",
    "load_data",
    "load_digits_rgb",
    "load_folder",
    "MAX_HELD_OUT_NAMES",
    "max_image_pixels",
    "MAX_PIXELS_ENV",
    "NAMED_DATASETS",
    "prepare",
    "replica_parts",
    "resize_array",
    "resize_image",
    "RESIZE_MODES",
    "ResizeRule",
    "scan_folder",
    "sharded_streams",
    "Split",
    "SPLIT_SEED",
    "steps_per_epoch",
    "stratified_sample",
    "to_rgb",
    "train_stream",
    "training_data_record",
]


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
    storage: str = "auto",
) -> ImageData:
    """Loads a dataset by name (``cifar10``, ``cifar100``, ``digits``) or path
    (an image folder) as uint8 train/test splits, every image decoded and
    resized by one rule (:func:`decode_image`, :func:`resize_array`).

    Args:
        dataset: a name or a folder path.
        data_dir: for cifar10/cifar100, a local python-format ``.tar.gz`` or
            extracted folder (offline); default: Keras's download/cache.
        image_size: side of the square images returned; default
            :data:`DEFAULT_IMAGE_SIZE`.
        resize: ``"squash"`` or ``"crop"`` (see :class:`ResizeRule`).
        interpolation: ``"bilinear"`` or ``"nearest"``; default
            :func:`default_interpolation` of the dataset.
        test: also load the test split (training passes False: it never reads it).
        class_names: the model's classes, to match a folder's ``test/`` by name.
        storage: an image folder's decoded images: ``auto``, ``memory`` or
            ``disk`` (see :func:`kerasalex.data.folders.choose_storage`).
    """
    size = int(image_size or DEFAULT_IMAGE_SIZE)
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
        return load_folder(p, rule, test=test, class_names=class_names, storage=storage)
    if not test:
        data.test = None
    for split in (data.train, data.test):
        if split is not None:
            split.x = resize_array(split.x, size, rule.resize, rule.interpolation)
    return data


# A held-out file list longer than this is not stored in the model file
# (the data's fingerprint and the split rule still identify the slice).
MAX_HELD_OUT_NAMES = 100_000


def prepare(
    dataset: str,
    rule: ResizeRule,
    data_dir: str | None = None,
    val_split: float = 0.1,
    limit: int | None = None,
    storage: str = "auto",
) -> ImageData:
    """A run's training data: the one path train, transfer and tune take.

    Loads ``dataset``'s training split decoded by ``rule`` (never its test
    split: a ``test/`` lacking a class is no concern of training), carves the
    validation slice off it (:func:`carve_validation`: ``val_split``, the
    fixed :data:`SPLIT_SEED`, then ``limit`` training images) and attaches
    what a model trained on it records (:func:`training_data_record`) as
    ``training_data``.

    Args:
        dataset: a name (``cifar10``, ``cifar100``, ``digits``) or an image folder.
        rule: how images are decoded and resized (see
            :func:`kerasalex.training.resize_rule` for a run's).
        data_dir: cifar10/cifar100 offline: a local python-format archive or folder.
        val_split: the fraction held out for validation (0: none).
        limit: keep this many training images (and a validation slice in proportion).
        storage: an image folder's decoded images: ``auto``, ``memory`` or
            ``disk`` (:func:`kerasalex.data.folders.choose_storage`); on disk,
            ``train.x`` and ``val.x`` are :class:`~kerasalex.data.cache.DiskImages`.

    Returns:
        An :class:`ImageData` with ``train``, ``val`` (or None), ``test=None``
        and ``training_data``; images uint8 (N, rule.size, rule.size, 3),
        labels int32 (N,).

    Raises:
        ValueError: an unknown dataset, a missing folder or archive, a folder
            without two classes of readable images (one line, for the CLI).

    Example:
        >>> data = prepare("digits", ResizeRule(32, "squash", "nearest"), val_split=0.1, limit=100)
        >>> len(data.train), data.image_shape
        (100, (32, 32, 3))
    """
    import dataclasses

    source = load_data(dataset, data_dir, image_size=rule.size, resize=rule.resize,
                       interpolation=rule.interpolation, test=False, storage=storage)
    carved = dataclasses.replace(carve_validation(source, val_split, limit), test=None)
    carved.training_data = training_data_record(source, carved, rule, dataset=dataset, data_dir=data_dir,
                                                val_split=val_split, limit=limit)
    return carved


def training_data_record(source: ImageData, carved: ImageData, rule: ResizeRule, dataset: str,
                         data_dir: str | None, val_split: float, limit: int | None) -> dict:
    """What a model records about its training data (``training_data`` in its
    metadata and the run's config.json): the dataset, the split rule
    (``val_split``, the fixed split seed, ``limit``), a fingerprint of the
    images the split was carved from, and the held-out images (their
    fingerprint and, for a folder, their paths and per-image digests,
    :func:`~kerasalex.data.splits.image_digests`), so :func:`kerasalex.evaluation.held_out_split`
    finds exactly the images the model never saw."""
    val = carved.val
    held = val.ids if val is not None and val.ids is not None and len(val.ids) <= MAX_HELD_OUT_NAMES else None
    return {
        "dataset": dataset,
        "data_dir": data_dir,
        "images": len(source.train),
        "fingerprint": fingerprint(source.train),
        "val_split": float(val_split),
        "split_seed": SPLIT_SEED,
        "limit": limit,
        "train_images": len(carved.train),
        "val_images": len(val) if val is not None else 0,
        "held_out_fingerprint": fingerprint(val) if val is not None else None,
        "held_out": held,
        # each held-out image's pixel digest, beside its path (a changed folder is matched by both)
        "held_out_digests": image_digests(val) if held is not None else None,
        "preprocessing": rule.to_dict(),
    }
