"""A dataset in memory: its splits, how the validation slice is carved, and
what identifies the images (fingerprints)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

# The validation slice is carved with this fixed seed, whatever --seed says,
# so every run of a dataset validates on the same images.
SPLIT_SEED = 1234


@dataclasses.dataclass
class Split:
    """One split: uint8 images (N, H, W, 3), int32 labels (N,) and, for an
    image folder, each image's path relative to the folder (``ids``).

    ``x`` is a numpy array, or for a folder kept on disk a
    :class:`~kerasalex.data.cache.DiskImages` (indexed like one, read by
    position)."""

    x: np.ndarray
    y: np.ndarray
    ids: list[str] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx) -> "Split":
        """The images at ``idx`` (an index array), ids included."""
        idx = np.asarray(idx, dtype=np.int64)
        x = self.x.subset(idx) if hasattr(self.x, "subset") else self.x[idx]  # images on disk: a view
        return Split(x, self.y[idx], [self.ids[i] for i in idx] if self.ids is not None else None)


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
    # What a model trained on this records about it (kerasalex.data.training_data_record).
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


def fingerprint(split: Split) -> str:
    """sha1 of a split's labels and decoded pixels: equal for the same images
    in the same order decoded by the same rule (what a model records about
    the data it was trained on)."""
    x = split.x
    stored = getattr(x, "stored_fingerprint", None)
    if stored is not None and len(split.y) == len(x):
        return stored  # the whole cache in order: computed by this function when it was written
    h = hashlib.sha1(np.ascontiguousarray(split.y, dtype=np.int32).tobytes())
    h.update(str(tuple(int(d) for d in x.shape)).encode())
    if hasattr(x, "chunks"):  # images on disk: read in bounded chunks
        for chunk in x.chunks():
            h.update(chunk.data)
    else:
        h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def image_digests(split: Split, size: int = 1024) -> list[str]:
    """Each image's own digest: 8 hex digits of BLAKE2b (32 bits) over its
    decoded uint8 pixels, in order. A model records them beside its held-out
    paths, so a folder that changed since training is matched by name *and*
    content (:func:`kerasalex.provenance.held_out_split`): an image that now
    sits under a held-out name but differs (a renumbered export, an edited
    file) is not taken for one the model never saw.

    Args:
        split: the images (numpy array or images on disk, read ``size`` at a time).

    Returns:
        One 8-character hex string per image.
    """
    out: list[str] = []
    for i in range(0, len(split), size):
        block = np.ascontiguousarray(split.x[i : i + size], dtype=np.uint8)
        out.extend(hashlib.blake2b(a.tobytes(), digest_size=4).hexdigest() for a in block)
    return out


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


def carve_validation(data: ImageData, val_split: float, limit: int | None = None) -> ImageData:
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
