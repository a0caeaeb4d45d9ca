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


def replica_parts(idx: np.ndarray, num_replicas: int) -> list[np.ndarray]:
    """A global batch's indices split into ``num_replicas`` contiguous parts
    (sizes differ by at most one). A batch smaller than the replicas (the
    last of an epoch, at most) is first repeated until each gets one image,
    as ``torch.utils.data.DistributedSampler`` pads."""
    idx = np.asarray(idx)
    if 0 < len(idx) < num_replicas:
        idx = np.resize(idx, num_replicas)
    return np.array_split(idx, num_replicas)


def sharded_streams(strategy, split: Split, batch_size: int, num_classes: int, seed: int, start_epoch: int,
                    epochs: int, val: Split | None = None, one_hot: bool = True):
    """Training (and validation) batches for a multi-worker strategy, each
    worker reading only its own part of the data.

    The global batches are those of :func:`train_stream` (the same (seed,
    epoch) order on every worker, so ``--resume`` stays exact); each is split
    into one part per replica (:func:`replica_parts`) and each worker's input
    pipeline (``tf.distribute.InputContext``) gathers its replicas' parts
    only, through ``strategy.distribute_datasets_from_function``: with images
    on disk (:class:`~kerasalex.data.cache.DiskImages`) a worker reads 1/workers
    of the images per epoch. Validation batches are split the same way, in order.

    Returns:
        (train, val or None, steps_per_epoch, counts): ``train`` and ``val``
        are ``tf.distribute`` distributed datasets for ``fit``; ``counts``
        holds the images this worker has gathered so far (``train``, ``val``).
    """
    import tensorflow as tf

    steps = steps_per_epoch(len(split), batch_size)
    eye = np.eye(num_classes, dtype=np.float32)
    counts = {"train": 0, "val": 0}
    label_spec = tf.TensorSpec((None, num_classes), tf.float32) if one_hot else tf.TensorSpec((None,), tf.int32)

    def make(which: Split, global_batches, kind: str):
        def fn(ctx):
            replicas = ctx.num_replicas_in_sync
            local = max(1, replicas // ctx.num_input_pipelines)
            first = ctx.input_pipeline_id * local

            def batches():
                for idx in global_batches():
                    parts = replica_parts(idx, replicas)
                    for r in range(first, first + local):
                        part = parts[r]
                        counts[kind] += len(part)
                        yield which.x[part], (eye[which.y[part]] if one_hot else which.y[part])

            ds = tf.data.Dataset.from_generator(
                batches, output_signature=(tf.TensorSpec((None, *which.x.shape[1:]), tf.uint8), label_spec))
            if kind == "val":
                ds = ds.apply(tf.data.experimental.assert_cardinality(steps_per_epoch(len(which), batch_size) * local))
            return ds.prefetch(tf.data.AUTOTUNE)

        return strategy.distribute_datasets_from_function(fn)

    train = make(split, lambda: epoch_batches(len(split), batch_size, seed, start_epoch, epochs), "train")
    val_ds = None
    if val is not None:
        n = len(val)
        val_ds = make(val, lambda: (np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)), "val")
    return train, val_ds, steps, counts


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
