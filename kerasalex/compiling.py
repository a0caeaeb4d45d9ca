"""What a model is compiled with: the optimizer, its learning-rate schedule
(cosine with a bounded linear warm-up), EMA of the weights, the loss and the
metric."""

from __future__ import annotations

from typing import Any

from kerasalex.config import TrainConfig
from kerasalex.device import resolve_jit


# The warm-up never takes more than this fraction of a run's steps.
WARMUP_MAX_FRACTION = 0.1


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Linear warm-up length in steps: ``warmup_epochs`` epochs, but at most
    :data:`WARMUP_MAX_FRACTION` of the run's ``total_steps`` (Goyal et al.
    2017 warm up over ~5 of 90 epochs; a 2-epoch warm-up in a 5-epoch run of
    11 steps per epoch spent 40% of it below the peak learning rate)."""
    wanted = int(round(float(warmup_epochs) * steps_per_epoch))
    return max(0, min(wanted, int(round(WARMUP_MAX_FRACTION * total_steps)), total_steps - 1))


def make_optimizer(config: TrainConfig, steps_per_epoch: int, total_epochs: int | None = None, lr: float | None = None):
    import keras

    lr = float(lr if lr is not None else config.lr)
    total = max(1, steps_per_epoch * int(total_epochs or config.epochs))
    schedule: Any = lr
    if config.schedule == "cosine":
        warmup = warmup_steps(config.warmup_epochs, steps_per_epoch, total)
        if warmup > 0:
            schedule = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=lr / 100.0, decay_steps=max(1, total - warmup), alpha=0.0,
                warmup_target=lr, warmup_steps=warmup,
            )
        else:
            schedule = keras.optimizers.schedules.CosineDecay(initial_learning_rate=lr, decay_steps=total, alpha=0.0)
    wd = float(config.weight_decay) or None
    # EMA of the weights: Keras keeps the averages as optimizer variables (so
    # they are saved with the optimizer and resumed exactly) and copies them
    # into the model at the end of fit (finalize_variable_values).
    ema = dict(use_ema=True, ema_momentum=float(config.ema_momentum)) if config.ema_momentum else {}
    if config.optimizer == "sgd":
        # keras.optimizers.SGD's arithmetic, updated in place (kerasalex.optimizers).
        from kerasalex.optimizers import FusedSGD

        return FusedSGD(schedule, momentum=config.momentum, nesterov=config.nesterov, weight_decay=wd, **ema)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=wd, **ema)
    return keras.optimizers.AdamW(schedule, weight_decay=wd if wd is not None else 0.004, **ema)


def compile_model(model, config: TrainConfig, steps_per_epoch: int, total_epochs: int | None = None, lr: float | None = None):
    import keras

    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch, total_epochs, lr),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=resolve_jit(config.jit_compile),
        steps_per_execution=int(config.steps_per_execution),
    )
    return model
