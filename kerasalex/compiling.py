"""What a model is compiled with: the optimizer, its learning-rate schedule
(cosine with a bounded linear warm-up, or one-cycle), EMA of the weights, the loss and the
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


# One-cycle (Smith & Topin 2018) as PyTorch's OneCycleLR defaults: the
# first 30% of the steps rise from lr/25 to lr, then cosine to 0.
ONECYCLE_RISE_FRACTION = 0.3
ONECYCLE_DIV_FACTOR = 25.0


def schedule_warmup_steps(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> int:
    """The steps of rising learning rate at the start of a run of
    ``total_steps``: :func:`warmup_steps` for ``cosine``, 30% of the run for
    ``onecycle``, 0 for ``constant``."""
    if config.schedule == "onecycle":
        return max(1, int(round(ONECYCLE_RISE_FRACTION * total_steps)))
    if config.schedule == "cosine":
        return warmup_steps(config.warmup_epochs, steps_per_epoch, total_steps)
    return 0


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int, total_epochs: int | None = None,
                           lr: float | None = None):
    """The learning rate per optimizer step: a float for ``constant``, else a
    ``keras.optimizers.schedules.CosineDecay`` with a linear warm-up of
    :func:`schedule_warmup_steps` (``cosine``: from lr/100; ``onecycle``:
    from lr/25), decaying to 0 at the run's last step.

    Args:
        config: the run's schedule, lr and warm-up.
        steps_per_epoch: optimizer steps per epoch.
        total_epochs: epochs of this schedule (``config.epochs`` if None).
        lr: the peak learning rate (``config.lr`` if None).
    """
    import keras

    lr = float(lr if lr is not None else config.lr)
    total = max(1, steps_per_epoch * int(total_epochs or config.epochs))
    if config.schedule == "constant":
        return lr
    warmup = schedule_warmup_steps(config, steps_per_epoch, total)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(initial_learning_rate=lr, decay_steps=total, alpha=0.0)
    start = lr / (ONECYCLE_DIV_FACTOR if config.schedule == "onecycle" else 100.0)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=start, decay_steps=max(1, total - warmup), alpha=0.0,
        warmup_target=lr, warmup_steps=warmup,
    )


def make_optimizer(config: TrainConfig, steps_per_epoch: int, total_epochs: int | None = None, lr: float | None = None):
    """The run's optimizer (SGD as :class:`kerasalex.optimizers.FusedSGD`,
    Adam, AdamW) on :func:`learning_rate_schedule`, with EMA of the weights
    when ``config.ema_momentum``."""
    import keras

    schedule: Any = learning_rate_schedule(config, steps_per_epoch, total_epochs, lr)
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
