"""Optimizers: Keras's SGD with its update done in place.

:class:`FusedSGD` is ``keras.optimizers.SGD`` (same arguments, same
configuration, the same arithmetic) whose per-variable update is one in-place
TensorFlow kernel, ``ResourceApplyKerasMomentum`` (the kernel ``tf.keras``'s
SGD ran on), instead of Keras 3's chain of element-wise ops, each of which
allocates a variable-sized temporary. Weight decay (decoupled, as Keras's) is
applied to each variable just before its own update rather than to all
variables first, and the updates run one after the other, in backward order
(last layer first, as its gradient is ready first), instead of all at once.

Why: for the scratch AlexNet (29.6M float32 parameters, 26M of them in two
dense kernels) Keras's update holds several 67 MB temporaries per kernel at
once on top of the gradients, and with TensorFlow's oneDNN memory pool, which
keeps every buffer it ever held, that peak stays resident. Measured with
``kerasalex train --arch alexnet`` on 50,000 CIFAR images (2 CPU cores,
mixed_bfloat16, one epoch): peak RSS 1,690 MB with ``keras.optimizers.SGD``,
1,545 MB with the in-place kernel; with the updates also in sequence (and the
lean divergence check of kerasalex.callbacks) ``benchmarks/bench_train.py``
measured 1,478 MB, at no cost in speed (218 -> 230 images/s).
"""

from __future__ import annotations

import keras

from kerasalex._keras_internals import InPlaceSGDUpdates


@keras.saving.register_keras_serializable(package="kerasalex")
class FusedSGD(InPlaceSGDUpdates, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` updating each variable in place, one at a time.

    Takes exactly ``keras.optimizers.SGD``'s arguments and computes the same
    update (momentum, Nesterov, decoupled weight decay), to float32 rounding:
    with momentum ``mu``, learning rate ``lr``, weight decay ``wd``::

        w <- w - lr * wd * w                 (if weight_decay)
        m <- mu * m - lr * g
        w <- w + m                           (or w + mu * m - lr * g with nesterov)

    The update overrides Keras's private optimizer methods, so it lives in
    :class:`kerasalex._keras_internals.InPlaceSGDUpdates` and runs only with
    the Keras versions it was checked against; with any other Keras this is
    plain ``keras.optimizers.SGD`` (same arguments, same file format).

    TensorFlow backend only (kerasalex's backend).

    Example:
        >>> opt = FusedSGD(0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    """
