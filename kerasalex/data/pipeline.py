"""tf.data pipelines over in-memory uint8 splits: the (seed, epoch)-ordered
training stream that makes resuming exact, and in-order evaluation batches."""

from __future__ import annotations

import numpy as np

from kerasalex.data.splits import Split

# --------------------------------------------------------------------------
# tf.data pipelines
# --------------------------------------------------------------------------


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch of ``n`` images (the last one may be short); at
    least 1. The one count every loop, schedule and message uses."""
    return max(1, -(-n // batch_size))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch ``epoch`` (0-based): a function of (seed, epoch) only
    (numpy's PCG64 seeded with both), so a resumed run replays it exactly."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(n)


def epoch_batches(n: int, batch_size: int, seed: int, start_epoch: int, epochs: int):
    """The index arrays of every training batch of epochs
    ``start_epoch..epochs-1`` (at least one epoch), each epoch in its
    :func:`epoch_order`: the one batch order of :func:`train_stream` and of
    the transfer head's cached-feature stream."""
    for epoch in range(start_epoch, max(start_epoch + 1, epochs)):
        order = epoch_order(n, seed, epoch)
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]


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
        for idx in epoch_batches(n, batch_size, seed, start_epoch, epochs):
            yield x[idx], (eye[y[idx]] if one_hot else y[idx])

    label_spec = (
        tf.TensorSpec((None, num_classes), tf.float32) if one_hot else tf.TensorSpec((None,), tf.int32)
    )
    ds = tf.data.Dataset.from_generator(
        batches, output_signature=(tf.TensorSpec((None, *x.shape[1:]), tf.uint8), label_spec)
    )
    return ds.prefetch(tf.data.AUTOTUNE), steps


def _in_order(x, batch_size: int):
    """Batches of ``x`` in order: a slice dataset of an in-memory array, or
    reads of ``batch_size`` images at a time from images on disk."""
    import tensorflow as tf

    if isinstance(x, np.ndarray):
        return tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    n = len(x)

    def batches():
        for i in range(0, n, batch_size):
            yield x[i : i + batch_size]

    ds = tf.data.Dataset.from_generator(batches, output_signature=tf.TensorSpec((None, *x.shape[1:]), tf.uint8))
    # a known length, as a slice dataset has (Keras's validation loop reads it to the end without a warning)
    return ds.apply(tf.data.experimental.assert_cardinality(steps_per_epoch(n, batch_size) if n else 0))


def eval_dataset(split: Split, batch_size: int, num_classes: int | None = None, one_hot: bool = True):
    """Batches of (uint8 images, labels) in order, for validation and evaluation."""
    import tensorflow as tf

    y = tf.data.Dataset.from_tensor_slices(split.y).batch(batch_size)
    ds = tf.data.Dataset.zip((_in_order(split.x, batch_size), y))
    if one_hot and num_classes:
        ds = ds.map(lambda a, b: (a, tf.one_hot(b, num_classes, dtype=tf.float32)))
    return ds.prefetch(tf.data.AUTOTUNE)


def images_only(x, batch_size: int, flip: bool = False):
    """Batches of uint8 images ``x`` (an array or images on disk) in order;
    ``flip``: each mirrored left-right (``x[:, :, ::-1]``), for flip TTA."""
    import tensorflow as tf

    ds = _in_order(x, batch_size)
    if flip:
        ds = ds.map(lambda a: tf.reverse(a, axis=[2]))
    return ds.prefetch(tf.data.AUTOTUNE)
