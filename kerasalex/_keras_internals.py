"""Every use of Keras's private internals in kerasalex, in one place.

Two memory savings lean on names outside Keras's public API; both were made
for the default CIFAR run's memory target (peak RSS about 1.5 GB on 2 CPU
cores) and are used only while the installed Keras is in
:data:`KERAS_RANGE` (pinned in pyproject.toml). Outside it kerasalex falls
back to the public API (same files, same arithmetic, more memory), and
``tests/test_internals.py`` fails, naming the internal that changed.

- :func:`lean_save_weights`: ``model.save_weights`` writing each large
  variable into its HDF5 dataset in row blocks (patches
  ``keras.src.saving.saving_lib.H5IOStore.__setitem__`` and
  ``BaseOptimizer.save_own_variables`` for the duration of the call).
  Measured saving the scratch AlexNet with SGD momentum (29.6M parameters,
  mixed_bfloat16, AMD EPYC, 2 cores): +12 MB of peak RSS, against +134 MB
  with plain ``model.save_weights`` and +362 MB with ``model.save``.
- :class:`InPlaceSGDUpdates`: the private-method overrides of
  :class:`kerasalex.optimizers.FusedSGD` (``_backend_update_step``,
  ``_apply_weight_decay``, ``_use_weight_decay``, ``_get_variable_index``,
  ``momentums``).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Iterator

# The Keras versions these internals were written and tested for.
KERAS_RANGE = ("3.15", "3.16")  # >= first, < second

# Variables above this size are written to HDF5 in row blocks of about this
# size, never converted to one NumPy array (see lean_h5_writes).
H5_BLOCK_BYTES = 8 * 1024**2


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def supported(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed Keras's) is in :data:`KERAS_RANGE`."""
    if version is None:
        return _installed_supported()
    low, high = (_version_tuple(v) for v in KERAS_RANGE)
    return low <= _version_tuple(version) < high


@functools.lru_cache(maxsize=None)
def _installed_supported() -> bool:
    import keras

    return supported(keras.__version__)


@contextlib.contextmanager
def lean_h5_writes() -> Iterator[None]:
    """While saving weights, writes each large variable into its HDF5 dataset
    block by block instead of through one full NumPy copy (Keras's own
    ``H5IOStore`` converts every variable, and its optimizer calls
    ``variable.numpy()`` first): for the scratch AlexNet, whose 4096x4096
    kernel and its momentum are 64 MiB each, this takes ~120 MB off the peak
    RSS of a save. The file is the same: one contiguous dataset per variable,
    same names, dtypes and values. Falls back to Keras's own code for
    anything else (bfloat16 variables, scalars, a Keras outside
    :data:`KERAS_RANGE`).
    """
    if not supported():
        yield
        return
    import numpy as np
    from keras.src import backend
    from keras.src.optimizers import base_optimizer
    from keras.src.saving import saving_lib

    store_cls = saving_lib.H5IOStore
    original_set = store_cls.__setitem__
    original_opt = base_optimizer.BaseOptimizer.save_own_variables

    def setitem(self, key, value):
        shape = tuple(int(d) for d in getattr(value, "shape", ()) or ())
        try:
            name = backend.standardize_dtype(value.dtype)
            dtype = None if name == "bfloat16" else np.dtype(name)
        except (AttributeError, TypeError, ValueError):
            dtype = None
        big = dtype is not None and len(shape) >= 1 and shape[0] > 1 and int(np.prod(shape)) * dtype.itemsize > H5_BLOCK_BYTES
        if not big or self.mode not in ("w", "a") or not hasattr(self, "_create_h5_group"):
            return original_set(self, key, value)
        if not self._h5_entry_initialized:
            self._create_h5_group(self._h5_entry_path)
        ds = self._h5_entry_group.create_dataset(key, shape=shape, dtype=dtype)
        row_bytes = max(1, int(np.prod(shape[1:])) * dtype.itemsize)
        rows = max(1, H5_BLOCK_BYTES // row_bytes)
        source = getattr(value, "value", value)  # a Keras variable -> its backend variable
        try:
            for i in range(0, shape[0], rows):
                ds[i : i + rows] = np.asarray(backend.convert_to_numpy(source[i : i + rows]), dtype=dtype)
        except BaseException:
            # A failed write (a full disk): close the file's objects now,
            # quietly, instead of letting h5py complain from destructors later.
            hook, sys.unraisablehook = sys.unraisablehook, lambda *args: None
            try:
                del ds
                with contextlib.suppress(Exception):
                    self.h5_file.close()  # closes every object of the file now
            finally:
                sys.unraisablehook = hook
            raise

    def save_optimizer_variables(self, store):
        for i, variable in enumerate(self.variables):
            store[str(i)] = variable  # not variable.numpy(): setitem copies it block by block

    store_cls.__setitem__ = setitem
    base_optimizer.BaseOptimizer.save_own_variables = save_optimizer_variables
    try:
        yield
    finally:
        store_cls.__setitem__ = original_set
        base_optimizer.BaseOptimizer.save_own_variables = original_opt


def lean_save_weights(model, path: str) -> None:
    """``model.save_weights(path)`` (a ``.weights.h5``) under :func:`lean_h5_writes`."""
    with lean_h5_writes():
        model.save_weights(path)


class InPlaceSGDUpdates:
    """Mixin for a ``keras.optimizers.SGD`` subclass: each variable's weight
    decay and momentum step done in place by one XLA-compiled function
    (:func:`kerasalex.optimizers.momentum_update`; without momentum, the
    ``ResourceApplyGradientDescent`` kernel), and the updates run
    one after the other, last layer first. With a Keras outside
    :data:`KERAS_RANGE` every method falls back to ``SGD``'s own.

    The subclass gives the update as its ``momentum_update`` (a static
    method with :func:`kerasalex.optimizers.momentum_update`'s signature).

    Overrides Keras's private ``_apply_weight_decay`` and
    ``_backend_update_step``, and reads ``_use_weight_decay``,
    ``_get_variable_index`` and ``momentums``.
    """

    def _apply_weight_decay(self, variables):
        if not supported():
            return super()._apply_weight_decay(variables)
        return  # applied per variable in update_step, right before its update

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not supported():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        # Last layers first: backpropagation produces their gradients first,
        # so each gradient is consumed (and freed) as soon as it exists.
        self._previous_update = None
        return super()._backend_update_step(
            list(reversed(list(grads))), list(reversed(list(trainable_variables))), learning_rate
        )

    def update_step(self, gradient, variable, learning_rate):
        if not supported():
            return super().update_step(gradient, variable, learning_rate)
        import keras
        import tensorflow as tf

        def tf_variable(v):
            return v.value if isinstance(v, keras.Variable) else v

        var = tf_variable(variable)
        lr = tf.cast(learning_rate, var.dtype)
        gradient = tf.cast(gradient, var.dtype)
        # In a tf.function the chain orders the updates; eagerly ops run in
        # program order anyway (and return no op to chain).
        previous = getattr(self, "_previous_update", None)
        if getattr(previous, "graph", None) is not tf.compat.v1.get_default_graph():
            previous = None  # from another trace
        decay = None
        if self.weight_decay is not None and self._use_weight_decay(variable):
            decay = tf.cast(self.weight_decay, var.dtype)
        with tf.control_dependencies([previous] if previous is not None else []):
            if self.momentum != 0:
                m = tf_variable(self.momentums[self._get_variable_index(variable)])
                if "_kerasalex_xla_updates" not in self.__dict__:
                    object.__setattr__(self, "_kerasalex_xla_updates", {})  # not tracked by Keras
                update = self.momentum_update(var, m, gradient, lr, tf.cast(self.momentum, var.dtype), decay,
                                         nesterov=bool(self.nesterov), cache=self._kerasalex_xla_updates)
            else:
                if decay is not None:
                    previous = var.assign_sub(var * (lr * decay), read_value=False)
                with tf.control_dependencies([previous] if previous is not None else []):
                    update = tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=gradient,
                                                                     use_locking=False)
        self._previous_update = update
