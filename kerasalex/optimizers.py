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
import tensorflow as tf


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


@keras.saving.register_keras_serializable(package="kerasalex")
class FusedSGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` updating each variable in place, one at a time.

    Takes exactly ``keras.optimizers.SGD``'s arguments and computes the same
    update (momentum, Nesterov, decoupled weight decay), to float32 rounding:
    with momentum ``mu``, learning rate ``lr``, weight decay ``wd``::

        w <- w - lr * wd * w                 (if weight_decay)
        m <- mu * m - lr * g
        w <- w + m                           (or w + mu * m - lr * g with nesterov)

    TensorFlow backend only (kerasalex's backend).
    """

    def _apply_weight_decay(self, variables):
        # Applied per variable in update_step, right before its update.
        return

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Last layers first: backpropagation produces their gradients first,
        # so each gradient is consumed (and freed) as soon as it exists.
        self._previous_update = None
        return super()._backend_update_step(
            list(reversed(list(grads))), list(reversed(list(trainable_variables))), learning_rate
        )

    def update_step(self, gradient, variable, learning_rate):
        var = _tf_variable(variable)
        lr = tf.cast(learning_rate, var.dtype)
        gradient = tf.cast(gradient, var.dtype)
        # In a tf.function the chain orders the updates; eagerly ops run in
        # program order anyway (and return no op to chain).
        previous = getattr(self, "_previous_update", None)
        if getattr(previous, "graph", None) is not tf.compat.v1.get_default_graph():
            previous = None  # from another trace
        with tf.control_dependencies([previous] if previous is not None else []):
            if self.weight_decay is not None and self._use_weight_decay(variable):
                wd = tf.cast(self.weight_decay, var.dtype)
                previous = var.assign_sub(var * (lr * wd), read_value=False)
        with tf.control_dependencies([previous] if previous is not None else []):
            if self.momentum != 0:
                m = _tf_variable(self.momentums[self._get_variable_index(variable)])
                update = tf.raw_ops.ResourceApplyKerasMomentum(
                    var=var.handle, accum=m.handle, lr=lr, grad=gradient,
                    momentum=tf.cast(self.momentum, var.dtype), use_locking=False, use_nesterov=bool(self.nesterov),
                )
            else:
                update = tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=gradient, use_locking=False)
        self._previous_update = update
