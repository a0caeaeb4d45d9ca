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

With momentum, a variable's decay and momentum step are one XLA-compiled
function (:func:`momentum_update`), which reads the variable, its momentum
and its gradient once and writes the two back once; the kernel above read
and wrote the variable twice (decay, then step). The update is memory-bound
(29.6M parameters: ~0.8 GB of traffic a step), so on a CPU whose arithmetic
is fast it is a large fixed cost of every step, paid twice as often at
batch 64 as at 128. Measured with ``benchmarks/bench_batch_speed.py``
(2 vCPUs Intel Xeon with AMX-BF16, mixed_bfloat16, synthetic batches):
the update alone 39.5 -> 23-25 ms, a batch-64 train step 171 -> 147-157 ms,
batch 128 250 -> 225-240 ms; whole ``kerasalex train --limit 12800
--epochs 2 --batch-size 64`` commands, four alternating pairs with the
kernels above: 1.05x the images/s, 0.94x the CPU seconds (README,
"Benchmarks"); on 2 vCPUs of an AMD EPYC with AVX512-BF16 an
earlier measurement found the update alone 39 -> 22 ms and the whole step
within noise (0.99-1.04x). The model's own ``--jit-compile`` setting is
separate: it compiles the whole step (slower on CPUs), this compiles only
the update.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kerasalex._keras_internals import InPlaceSGDUpdates


def _momentum_update(var, accum, grad, lr, momentum, decay, nesterov: bool):
    w = var.read_value()
    if decay is not None:
        w = w - w * (lr * decay)  # Keras's decoupled weight decay, before the step
    m = accum.read_value() * momentum - lr * grad
    var.assign(w + (m * momentum - lr * grad if nesterov else m))
    accum.assign(m)
    return tf.zeros((), var.dtype)  # an output, to order the next update after this call


def _compiled(nesterov: bool, decay: bool):
    if decay:
        def fn(var, accum, grad, lr, momentum, wd):
            return _momentum_update(var, accum, grad, lr, momentum, wd, nesterov)
    else:
        def fn(var, accum, grad, lr, momentum):
            return _momentum_update(var, accum, grad, lr, momentum, None, nesterov)
    return tf.function(fn, jit_compile=True, reduce_retracing=True)


def momentum_update(var, accum, grad, lr, momentum, weight_decay=None, nesterov=False, cache=None):
    """One SGD-with-momentum step of ``var``, in one XLA-compiled function.

    The arithmetic of ``keras.optimizers.SGD`` (and of TensorFlow's
    ``ResourceApplyKerasMomentum`` kernel), with Keras's decoupled weight
    decay first::

        w <- w - w * (lr * weight_decay)     (if weight_decay is not None)
        m <- m * momentum - lr * g
        w <- w + m * momentum - lr * g       (nesterov; else w + m)

    Args:
        var, accum: float ``tf.Variable`` s of one shape: the weights and
            their momentum, both updated in place.
        grad: the gradient, a dense tensor of ``var``'s shape and dtype.
        lr, momentum, weight_decay: scalars of ``var``'s dtype.
        nesterov: Nesterov momentum.
        cache: a dict to keep the compiled functions in, one per owner of
            the variables (an optimizer): a function traced for one model's
            variables must not be called with another's after those are
            deleted.

    Returns:
        A scalar tensor computed by the update, for ordering later work
        after it (``tf.control_dependencies``).
    """
    key = (bool(nesterov), weight_decay is not None)
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = _compiled(*key)
    fn = cache[key]
    if weight_decay is None:
        return fn(var, accum, grad, lr, momentum)
    return fn(var, accum, grad, lr, momentum, weight_decay)


@keras.saving.register_keras_serializable(package="kerasalex")
class FusedSGD(InPlaceSGDUpdates, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` updating each variable in place, one at a time.

    Takes exactly ``keras.optimizers.SGD``'s arguments and computes the same
    update (momentum, Nesterov, decoupled weight decay), to float32 rounding:
    with momentum ``mu``, learning rate ``lr``, weight decay ``wd``::

        w <- w - lr * wd * w                 (if weight_decay)
        m <- mu * m - lr * g
        w <- w + m                           (or w + mu * m - lr * g with nesterov)

    With momentum, each variable's decay and step are one XLA-compiled
    function (:func:`momentum_update`, see the module's docstring for why
    and what it measured); without, TensorFlow's
    ``ResourceApplyGradientDescent`` kernel.

    The update overrides Keras's private optimizer methods, so it lives in
    :class:`kerasalex._keras_internals.InPlaceSGDUpdates` and runs only with
    the Keras versions it was checked against; with any other Keras this is
    plain ``keras.optimizers.SGD`` (same arguments, same file format).

    TensorFlow backend only (kerasalex's backend).

    Example:
        >>> opt = FusedSGD(0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    """

    momentum_update = staticmethod(momentum_update)
