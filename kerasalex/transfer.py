"""The two-stage training loop of the transfer architectures (``vgg16``).

Stage 1 trains the head over a frozen base. When the base is frozen and the
model has no augmentation, the base's output is the same for an image in
every epoch, so it is computed once per split (batched, ``training=False``,
stored as float16 in memory, or under ``run_dir/features/`` when large) and
the head trains on it as its own small model. That head model is built from
the *same layer objects* as the end-to-end model and shares its optimizer,
so the end-to-end model holds the head's training at every moment, and the
callbacks (history, resume state, best checkpoint) see and save the
end-to-end model, which takes raw images.

Stage 2 (``fine_tune_epochs`` > 0) unfreezes the base from
``unfreeze_from`` (``block5_conv1``) up, recompiles at ``fine_tune_lr``
(``1e-5``) and trains end to end: the keras-io transfer-learning recipe.
Both stages write one continuous history (epochs 1 .. epochs +
fine_tune_epochs) into one run folder.

Resuming recomputes the cache (the frozen base is unchanged, so are the
features) and continues from the saved epoch, in either stage.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import keras
import numpy as np

from kerasalex.config import TrainConfig
from kerasalex.models.vgg16 import BASE_NAME, HEAD_START

DEFAULT_UNFREEZE_FROM = "block5_conv1"
DEFAULT_FINE_TUNE_LR = 1e-5
# Storage type of cached features: VGG16's pooled ReLU maps fit float16's range
# (a batch that would not is stored as float32 instead).
CACHE_DTYPE = np.float16
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Caches larger than this go to .npy files under run_dir/features/ (memory-mapped).
MEMORY_LIMIT_BYTES = 4 * 1024**3
# Images per forward pass when computing the cache.
FEATURE_BATCH = 64


def _say(msg: str) -> None:
    print(f"[kerasalex] {msg}", flush=True)


# --------------------------------------------------------------------------
# The model's parts
# --------------------------------------------------------------------------


def get_base(model) -> keras.Model:
    """The nested base model (``vgg16``) of a transfer model (or of the
    inference model inside a :func:`kerasalex.models.training_model`).

    Raises:
        ValueError: the model has no such layer.
    """
    from kerasalex.models import inference_model

    try:
        return inference_model(model).get_layer(BASE_NAME)
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no {BASE_NAME!r} base layer; expected a kerasalex vgg16 transfer model"
        ) from None


def split_model(model) -> tuple[keras.Model, keras.Model]:
    """Splits a transfer model at the head's first layer (``flatten``); a
    :func:`kerasalex.models.training_model` is split without its front.

    Returns:
        ``(features, head)``: ``features`` maps raw images to the base's output,
        ``head`` maps that output to the logits. Both are built from the
        model's own layers (shared objects, shared weights), so training
        ``head`` trains ``model``, and ``model(x) == head(features(x))``.
    """
    from kerasalex.models import inference_model

    model = inference_model(model)
    # Node 0 of `flatten` is its call inside `model` (later nodes belong to
    # head models built by earlier calls).
    boundary = model.get_layer(HEAD_START).input
    features = keras.Model(model.input, boundary, name=f"{model.name}_features")
    head = keras.Model(boundary, model.output, name=f"{model.name}_head")
    return features, head


def base_is_frozen(model) -> bool:
    """True when no weight of the base is trainable."""
    return not get_base(model).trainable_weights


def has_augmentation(model) -> bool:
    """True when the model (its training front) has augmentation layers."""
    return any(layer.name.startswith("augment") for layer in model.layers)


def unfreeze_from(model, layer_name: str = DEFAULT_UNFREEZE_FROM) -> list[str]:
    """Makes the base trainable from ``layer_name`` up; the layers below stay frozen.

    Args:
        model: a transfer model.
        layer_name: the first base layer to train (e.g. ``block5_conv1``,
            ``block4_conv1``).

    Returns:
        The names of the base layers with weights that are now trainable.

    Raises:
        ValueError: ``layer_name`` is not a layer of the base.
    """
    base = get_base(model)
    names = [layer.name for layer in base.layers]
    if layer_name not in names:
        convs = [n for n in names if "conv" in n]
        raise ValueError(
            f"unfreeze_from must name a layer of the {BASE_NAME} base ({', '.join(convs)}). "
            f"Received: unfreeze_from={layer_name!r}"
        )
    base.trainable = True
    start = names.index(layer_name)
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start
    return [layer.name for layer in base.layers[start:] if layer.weights]


# --------------------------------------------------------------------------
# The feature cache
# --------------------------------------------------------------------------


def _allocate(shape, dtype, folder: Path | None, name: str):
    """An empty array, in memory or as a temporary .npy beside its final name."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if folder is None or nbytes <= MEMORY_LIMIT_BYTES:
        return np.empty(shape, dtype), None
    folder.mkdir(parents=True, exist_ok=True)
    # Not an atomic_path temporary (a sweep of stale temporaries in this folder
    # would delete it mid-write); the whole folder is rebuilt by every run.
    tmp = folder / f".{name}-partial-{np.dtype(dtype).name}.npy"
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape), tmp


def compute_features(
    features_model,
    x: np.ndarray,
    batch_size: int = FEATURE_BATCH,
    folder: str | Path | None = None,
    name: str = "train",
) -> np.ndarray:
    """Runs ``features_model`` once over the uint8 images ``x``, in batches.

    Args:
        features_model: raw images -> base output (see :func:`split_model`).
        x: uint8 images (N, H, W, 3).
        batch_size: images per forward pass.
        folder: where a cache larger than :data:`MEMORY_LIMIT_BYTES` goes, as
            ``<name>.npy`` (written to a temporary name, renamed when
            complete, then memory-mapped read-only); None keeps it in memory.
        name: the split's name (for the file).

    Returns:
        An array (N, *feature_shape) of :data:`CACHE_DTYPE` (float32 if some
        feature overflows float16).
    """
    n = int(x.shape[0])
    shape = (n,) + tuple(int(d) for d in features_model.output.shape[1:])
    folder = Path(folder) if folder is not None else None
    out, tmp = _allocate(shape, CACHE_DTYPE, folder, name)
    try:
        for i in range(0, n, batch_size):
            f = np.asarray(features_model.predict_on_batch(x[i:i + batch_size]), dtype=np.float32)
            if out.dtype != np.float32 and f.size and float(np.abs(f).max()) > FLOAT16_MAX:
                wider, wider_tmp = _allocate(shape, np.float32, folder, name)
                wider[:i] = out[:i]
                del out
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                out, tmp = wider, wider_tmp
            out[i:i + batch_size] = f
        if tmp is None:
            return out
        out.flush()
        del out
        final = folder / f"{name}.npy"
        tmp.replace(final)  # only complete caches get their final name
        tmp = None
        return np.load(final, mmap_mode="r")
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _feature_dataset(batches, n_batches: int, features: np.ndarray, num_classes: int):
    import tensorflow as tf

    ds = tf.data.Dataset.from_generator(
        batches,
        output_signature=(
            tf.TensorSpec((None, *features.shape[1:]), tf.float32),
            tf.TensorSpec((None, num_classes), tf.float32),
        ),
    )
    # A known length, so Keras's evaluation does not warn that it "ran out of data".
    ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
    return ds.prefetch(tf.data.AUTOTUNE)


def feature_stream(
    features: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    num_classes: int,
    seed: int,
    start_epoch: int,
    epochs: int,
):
    """Batches of (float32 features, one-hot labels) for epochs
    ``start_epoch..epochs-1``, each epoch in :func:`kerasalex.data.epoch_order`,
    the order of :func:`kerasalex.data.train_stream`: the head sees exactly
    the batches the end-to-end model would have seen.

    Returns (dataset, steps_per_epoch).
    """
    from kerasalex.data import epoch_batches, steps_per_epoch

    n = int(features.shape[0])
    eye = np.eye(num_classes, dtype=np.float32)

    def batches():
        for idx in epoch_batches(n, batch_size, seed, start_epoch, epochs):
            yield np.asarray(features[idx], dtype=np.float32), eye[labels[idx]]

    steps = steps_per_epoch(n, batch_size)
    n_epochs = max(start_epoch + 1, epochs) - start_epoch
    return _feature_dataset(batches, steps * n_epochs, features, num_classes), steps


def feature_eval_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, num_classes: int):
    """Batches of (float32 features, one-hot labels) in order, for validation."""
    from kerasalex.data import steps_per_epoch

    eye = np.eye(num_classes, dtype=np.float32)
    n = int(features.shape[0])

    def batches():
        for i in range(0, n, batch_size):
            yield np.asarray(features[i : i + batch_size], dtype=np.float32), eye[labels[i : i + batch_size]]

    return _feature_dataset(batches, steps_per_epoch(n, batch_size), features, num_classes)


# --------------------------------------------------------------------------
# Callbacks that keep seeing the end-to-end model
# --------------------------------------------------------------------------


class CallbacksOn(keras.callbacks.CallbackList):
    """Runs ``callbacks`` with ``model`` as their model, whichever model ``fit``
    trains: the head trains over cached features while the history, resume
    state and checkpoints record (and save) the end-to-end model.

    Args:
        callbacks: the callbacks.
        model: the model they see.
    """

    def __init__(self, callbacks, model):
        super().__init__(callbacks, model=model)
        self._fitted = None

    def set_model(self, model):
        if getattr(self, "_model", None) is None:
            super().set_model(model)
        else:
            self._fitted = model  # the model fit trains; ours stays

    def _propagate_stop(self):
        if self._fitted is not None and getattr(self.model, "stop_training", False):
            self._fitted.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self._propagate_stop()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._propagate_stop()


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


def _strategy_scope(model):
    import contextlib

    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _fit(model, config: TrainConfig, ds, val, **fit_kwargs):
    """``model.fit`` with what a tf.distribute strategy needs (see ``fit_standard``)."""
    if config.distribute != "none":
        from kerasalex.distribute import dataset_options, prepare_model

        ds = ds.with_options(dataset_options())
        val = val.with_options(dataset_options()) if val is not None else None
        prepare_model(model, ds.element_spec)
    return model.fit(ds, validation_data=val, shuffle=False, **fit_kwargs)


def can_cache(model) -> bool:
    """Whether the head stage may train on cached features: the base is frozen
    and there is no augmentation (so the base's output per image never changes)."""
    return base_is_frozen(model) and not has_augmentation(model)


def fit_head_cached(model, config: TrainConfig, data, callbacks, verbose, initial_epoch: int):
    """Stage 1 over cached features: epochs ``initial_epoch..config.epochs-1``.

    ``model`` must be compiled (its optimizer is shared with the head, so a
    resumed model's optimizer state carries on). Returns ``model``.
    """
    t0 = time.perf_counter()
    features_model, head = split_model(model)
    folder = Path(config.run_dir) / "features" if config.run_dir else None
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        train_f = compute_features(features_model, data.train.x, folder=folder, name="train")
        val_f = compute_features(features_model, data.val.x, folder=folder, name="val") if data.val is not None else None
        n = len(data.train) + (len(data.val) if data.val is not None else 0)
        where = str(folder) if isinstance(train_f, np.memmap) else "memory"
        _say(
            f"cached {BASE_NAME} features {tuple(train_f.shape[1:])} {train_f.dtype} of {n} images in "
            f"{time.perf_counter() - t0:.1f}s ({train_f.nbytes / 2**20:.0f} MiB train, in {where})"
        )
        with _strategy_scope(model):
            head.compile(
                optimizer=model.optimizer,
                loss=model.loss,
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                jit_compile=model.jit_compile,
                steps_per_execution=model.steps_per_execution,
            )
        ds, steps = feature_stream(
            train_f, data.train.y, config.batch_size, data.num_classes, config.seed, initial_epoch, config.epochs
        )
        val = (
            feature_eval_dataset(val_f, data.val.y, config.batch_size, data.num_classes) if val_f is not None else None
        )
        _fit(head, config, ds, val, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
             callbacks=[CallbacksOn(callbacks, model)], verbose=verbose)
    finally:
        train_f = val_f = None  # noqa: F841  (release memory maps before deleting their files)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return model


def fit_transfer(model, config: TrainConfig, data, callbacks, verbose, initial_epoch: int):
    """The transfer loop: head stage, then the optional fine-tuning stage.

    Called by :func:`kerasalex.training.train` instead of ``fit_standard``.
    Stage 2 trains the base from ``unfreeze_from`` up and freezes the layers
    below it, also when stage 1 trained the whole base (``--no-freeze-base``).

    Args:
        model: the compiled end-to-end model (freshly built, or reloaded from
            the resume state with its optimizer).
        config: the run configuration; ``epochs`` head epochs, then
            ``fine_tune_epochs`` at ``fine_tune_lr`` from ``unfreeze_from``.
        data: the :class:`kerasalex.data.ImageData` (train, optional val).
        callbacks: the run's callbacks; they always see the end-to-end model.
        verbose: Keras ``fit`` verbosity.
        initial_epoch: epochs already done (0, or from the resume state).

    Returns:
        The trained end-to-end model.
    """
    from kerasalex.data import eval_dataset, steps_per_epoch, train_stream
    from kerasalex.training import compile_model, fit_standard

    layer = config.unfreeze_from or DEFAULT_UNFREEZE_FROM
    total = int(config.epochs) + int(config.fine_tune_epochs)
    if config.fine_tune_epochs:
        names = [l.name for l in get_base(model).layers]
        if layer not in names:  # fail before hours of head training, not after
            unfreeze_from(model, layer)
    if config.fine_tune_lr is not None and not float(config.fine_tune_lr) > 0:
        raise ValueError(f"fine_tune_lr must be positive. Received: fine_tune_lr={config.fine_tune_lr}")

    # --- stage 1: the head ----------------------------------------------
    if initial_epoch < config.epochs:
        if can_cache(model):
            fit_head_cached(model, config, data, callbacks, verbose, initial_epoch)
        else:
            _say("training the head end to end (the base is trainable or the model augments: no feature cache)")
            fit_standard(model, config, data, callbacks, verbose, initial_epoch)
    if not config.fine_tune_epochs:
        return model

    # --- stage 2: fine-tuning -------------------------------------------
    steps = steps_per_epoch(len(data.train), config.batch_size)
    if initial_epoch <= config.epochs:
        # Fresh from the head stage (or resumed at its end): unfreeze and recompile.
        lr = float(config.fine_tune_lr or DEFAULT_FINE_TUNE_LR)
        with _strategy_scope(model):
            trained = unfreeze_from(model, layer)
            compile_model(model, config, steps, total_epochs=config.fine_tune_epochs, lr=lr)
        _say(f"fine-tuning {', '.join(trained)} and the head at lr {lr:g} for {config.fine_tune_epochs} epoch(s)")
    # Else the resume state is mid fine-tuning: the reloaded model already has
    # the unfrozen layers and the fine-tuning optimizer with its state.
    start = max(initial_epoch, config.epochs)
    ds, steps = train_stream(data.train, config.batch_size, data.num_classes, config.seed, start, total)
    val = eval_dataset(data.val, config.batch_size, data.num_classes) if data.val is not None else None
    _fit(model, config, ds, val, epochs=total, initial_epoch=start, steps_per_epoch=steps,
         callbacks=callbacks, verbose=verbose)
    return model
