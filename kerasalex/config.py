"""The run configuration and the named recipes.

One frozen dataclass flows CLI -> :func:`kerasalex.training.train` and is
written as ``config.json`` beside the run's outputs. Options left unset on the
command line (``None``) keep the recipe's value, and the recipe's value keeps
the dataclass default, so ``--recipe study --epochs 5`` is the study with five
epochs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
JIT_MODES = ("auto", "on", "off")
DISTRIBUTE_MODES = ("none", "mirrored", "multi-worker")


def low_memory_requested() -> bool:
    """Whether the environment variable ``KERASALEX_LOW_MEMORY`` asks for the
    low-memory CPU settings (system allocator, one inter-op thread)."""
    value = os.environ.get("KERASALEX_LOW_MEMORY", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"KERASALEX_LOW_MEMORY must be 1 or 0. Received: {value!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run. Field docs are the CLI's ``--help``."""

    arch: str = "alexnet"
    dataset: str = "cifar10"
    data_dir: str | None = None
    recipe: str = "default"
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: float = 2.0
    augment: bool = True
    # The augmentation's random translation, as a fraction of the image side
    # (1/8: CIFAR recipes' "pad 4 and crop 32"); 0 = random flip only.
    translate: float = 0.125
    # Runs of fewer epochs than this train without the translation (flip
    # only): a few passes over the data underfit, and the translation only
    # slows them. 0 = always translate. resolve_config sets 0 when
    # --translate is given.
    translate_min_epochs: int = 0
    # Random erasing (Zhong et al. 2017; timm's --reprob): the probability
    # that a training image gets one rectangle (2-33% of its area) filled
    # with mid-grey; 0 = off.
    random_erasing: float = 0.0
    dropout: float = 0.5
    kernel_initializer: str = "lecun_normal"
    head_initializer: str = "zeros"
    # Small datasets: when the batch size was not set, halve it (down to
    # MIN_AUTO_BATCH) until the run takes at least this many optimizer steps;
    # 0 = keep the batch size. resolve_config sets 0 when --batch-size is given.
    min_steps: int = 0
    # The dropout of a short run (one whose recipe batch gives fewer than
    # min_steps steps): such a run underfits, and dropout only slows it.
    # None = keep --dropout. resolve_config sets None when --dropout is given.
    short_run_dropout: float | None = None
    # Runs long enough for a larger batch: when the batch size was not set, a
    # run that takes at least long_run_steps optimizer steps at
    # long_run_batch_size trains at that batch size (more images/s: a step's
    # fixed cost is paid for more images) with the learning rate long_run_lr
    # (None = keep --lr). 0 = off. resolve_config sets long_run_steps 0 when
    # --batch-size is given and long_run_lr None when --lr is given.
    long_run_steps: int = 0
    long_run_batch_size: int = 128
    long_run_lr: float | None = None
    # Exponential moving average of the weights (Polyak averaging, Keras's
    # optimizer use_ema): 0 = off, else the EMA momentum per step.
    ema_momentum: float = 0.0
    val_split: float = 0.1
    limit: int | None = None
    image_size: int | None = None
    # How images of another shape become square: "squash" or "crop" (shorter
    # side scaled, centre cropped); None = the architecture's default.
    resize: str | None = None
    # Where a folder's decoded images are kept while training: "auto"
    # (memory up to 1 GiB of decoded images, else disk), "memory" or "disk"
    # (kerasalex.data.folders.choose_storage).
    data_cache: str = "auto"
    seed: int = 0
    precision: str = "auto"
    jit_compile: str = "auto"
    steps_per_execution: int = 1
    # Deterministic ops (tf.config.experimental.enable_op_determinism), so a
    # resumed run ends with the weights of an uninterrupted one; slower.
    deterministic: bool = False
    # Pretrained / transfer architectures.
    weights: str | None = None
    base_weights: str | None = None
    freeze_base: bool | None = None
    fine_tune_epochs: int = 0
    unfreeze_from: str | None = None
    fine_tune_lr: float | None = None
    # Several devices / machines.
    distribute: str = "none"
    # Where things go.
    run_dir: str | None = None
    output: str | None = None
    save_dir: str = "saved_models"
    # Also keep the best epoch's model as run_dir/best.keras (as large as the
    # final model: 237 MB for the scratch AlexNet), not only the final one.
    save_best: bool = False

    def __post_init__(self):
        def bad(field, expected):
            raise ValueError(f"{field} must be {expected}. Received: {field}={getattr(self, field)!r}")

        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            bad("precision", f"one of {PRECISIONS}")
        if self.jit_compile not in JIT_MODES:
            bad("jit_compile", f"one of {JIT_MODES}")
        if self.distribute not in DISTRIBUTE_MODES:
            bad("distribute", f"one of {DISTRIBUTE_MODES}")
        if int(self.epochs) < 1:
            bad("epochs", "at least 1")
        if int(self.batch_size) < 1:
            bad("batch_size", "at least 1")
        if not float(self.lr) > 0:
            bad("lr", "positive")
        if not 0.0 <= float(self.random_erasing) <= 1.0:
            bad("random_erasing", "a probability in [0, 1]")
        if not 0.0 <= float(self.translate) < 1.0:
            bad("translate", "a fraction of the image side in [0, 1)")
        if int(self.translate_min_epochs) < 0:
            bad("translate_min_epochs", "0 or more")
        if not 0.0 <= float(self.val_split) < 1.0:
            bad("val_split", "in [0, 1)")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            bad("label_smoothing", "in [0, 1)")
        if not 0.0 <= float(self.dropout) < 1.0:
            bad("dropout", "in [0, 1)")
        if self.resize is not None and self.resize not in ("squash", "crop"):
            bad("resize", "one of ('squash', 'crop')")
        if self.data_cache not in ("auto", "memory", "disk"):
            bad("data_cache", "one of ('auto', 'memory', 'disk')")
        if self.limit is not None and int(self.limit) < 2:
            bad("limit", "at least 2")
        if self.short_run_dropout is not None and not 0.0 <= float(self.short_run_dropout) < 1.0:
            bad("short_run_dropout", "None or in [0, 1)")
        if int(self.long_run_steps) < 0:
            bad("long_run_steps", "0 or more")
        if int(self.long_run_batch_size) < 1:
            bad("long_run_batch_size", "at least 1")
        if self.long_run_lr is not None and not float(self.long_run_lr) > 0:
            bad("long_run_lr", "None or positive")
        if int(self.min_steps) < 0:
            bad("min_steps", "0 or more")
        if not 0.0 <= float(self.ema_momentum) < 1.0:
            bad("ema_momentum", "in [0, 1) (0 = no EMA)")
        if self.fine_tune_epochs < 0:
            bad("fine_tune_epochs", "0 or more")
        if not isinstance(self.deterministic, bool):
            bad("deterministic", "True or False")
        if not isinstance(self.save_best, bool):
            bad("save_best", "True or False")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# A recipe: the values it sets for every architecture. Each architecture's
# own values for it are in its registry row (kerasalex.models.ARCHITECTURES,
# Architecture.recipes) and override these.
RECIPES: dict[str, dict[str, Any]] = {
    # The study, exactly: SGD 0.001 momentum 0.9, batch 30, no augmentation,
    # no dropout, constant learning rate, float32, Keras's default initializers.
    "study": dict(
        optimizer="sgd", lr=0.001, momentum=0.9, nesterov=False, weight_decay=0.0,
        label_smoothing=0.0, schedule="constant", warmup_epochs=0.0, augment=False,
        batch_size=30, epochs=20, precision="float32", dropout=0.0,
        kernel_initializer="glorot_uniform", head_initializer="glorot_uniform",
    ),
    # Ours: each architecture's row over TrainConfig's defaults (SGD +
    # Nesterov with a linear warm-up and cosine decay, flip + translate
    # augmentation, dropout 0.5 in the classifier, label smoothing 0.1,
    # weight decay 5e-4, batch 128); the scratch AlexNet's row sets batch 64
    # and no dropout.
    "default": dict(),
}


# The smallest batch size the min_steps rule goes down to.
MIN_AUTO_BATCH = 16


def is_short_run(batch_size: int, train_images: int, epochs: int, min_steps: int) -> bool:
    """Whether ``epochs`` epochs over ``train_images`` at ``batch_size`` take
    fewer than ``min_steps`` optimizer steps (see :func:`auto_batch_size`)."""
    return bool(min_steps) and int(epochs) * -(-int(train_images) // int(batch_size)) < int(min_steps)


def auto_batch_size(batch_size: int, train_images: int, epochs: int, min_steps: int) -> int:
    """The batch size a run uses: ``batch_size`` halved (never below
    :data:`MIN_AUTO_BATCH`) until ``epochs`` epochs over ``train_images``
    take at least ``min_steps`` optimizer steps. ``min_steps=0`` keeps it.

    Why: the scratch AlexNet has no normalization, and SGD needs a few
    hundred steps to leave the chance plateau; 1,293 digits at batch 128
    give 55 steps in 5 epochs (measured: 10% test accuracy).
    """
    batch = int(batch_size)
    while min_steps and batch // 2 >= MIN_AUTO_BATCH and int(epochs) * -(-int(train_images) // batch) < min_steps:
        batch //= 2
    return batch


def is_long_run(train_images: int, epochs: int, long_run_steps: int, long_run_batch_size: int) -> bool:
    """Whether ``epochs`` epochs over ``train_images`` at ``long_run_batch_size``
    take at least ``long_run_steps`` optimizer steps (``0`` = never)."""
    return bool(long_run_steps) and int(epochs) * -(-int(train_images) // int(long_run_batch_size)) >= int(long_run_steps)


def rules_off(chosen: dict[str, Any]) -> dict[str, Any]:
    """The run-length rules a user's choice turns off: a chosen batch size
    is kept (``min_steps`` and ``long_run_steps`` 0), so is a learning rate
    (``long_run_lr`` None), a dropout (``short_run_dropout`` None) and a
    translation (``translate_min_epochs`` 0). ``chosen``: option values
    given (or searched, for a ``tune`` trial)."""
    off: dict[str, Any] = {}
    if "batch_size" in chosen:
        off["min_steps"] = 0
        off["long_run_steps"] = 0
    if "lr" in chosen:
        off["long_run_lr"] = None
    if "dropout" in chosen:
        off["short_run_dropout"] = None
    if "translate" in chosen:
        off["translate_min_epochs"] = 0
    return off


def run_length_rules(config: "TrainConfig", train_images: int) -> tuple["TrainConfig", bool, list[str], int]:
    """The recipe's run-length rules applied to a run of ``config.epochs``
    epochs over ``train_images`` images, in this order: a run of at least
    ``long_run_steps`` steps at ``long_run_batch_size`` trains at that batch
    size with ``long_run_lr`` (:func:`is_long_run`); a run of fewer than
    ``min_steps`` steps at its batch size trains with ``short_run_dropout``
    (when set); a run of fewer than ``translate_min_epochs`` epochs trains
    with the random flip only (``translate`` 0); the batch size is halved
    until the run has ``min_steps`` steps (:func:`auto_batch_size`). A run
    the first rule applies to is not short and keeps its batch size: its
    ``long_run_steps`` steps are its minimum (the scratch AlexNet's default
    recipe: 1,400 at batch 128, below its ``min_steps`` 2,500 at batch 64). A rule
    whose option the user gave is off: :func:`resolve_config` zeroes its
    field (:func:`rules_off`). ``train`` applies them to its run, ``tune``
    to each trial's epochs.

    Returns:
        ``(config, short_run, notes, batch_before_min_steps)``: the adapted
        config, whether the run was short at the recipe's batch size, one
        line per rule applied, and the batch size the min-steps rule started
        from (the recipe's, or the long-run rule's).
    """
    notes = []
    long_batch = int(config.long_run_batch_size)
    long = long_batch != config.batch_size and is_long_run(train_images, config.epochs, config.long_run_steps, long_batch)
    if long:
        lr = config.lr if config.long_run_lr is None else float(config.long_run_lr)
        steps = int(config.epochs) * -(-int(train_images) // long_batch)
        lr_note = f", lr {lr:g} (not {config.lr:g})" if lr != config.lr else ""
        notes.append(f"batch size {long_batch} (not {config.batch_size}){lr_note}: {train_images} images x "
                     f"{config.epochs} epochs are {steps} steps at batch {long_batch}, at least the recipe's "
                     f"{config.long_run_steps} for batch {long_batch}, which trains more images/s; "
                     f"--batch-size N keeps N" + (", --lr X keeps X" if lr_note else ""))
        config = config.replace(batch_size=long_batch, lr=lr)
    batch_before_min_steps = config.batch_size
    # A run long enough for the larger batch has its own minimum (long_run_steps): neither the short-run
    # dropout nor the min-steps halving applies to it.
    min_steps = 0 if long else config.min_steps
    short = is_short_run(config.batch_size, train_images, config.epochs, min_steps)
    if short and config.short_run_dropout is not None and config.dropout != config.short_run_dropout:
        notes.append(f"dropout {config.short_run_dropout:g} (not {config.dropout:g}): a run of fewer than "
                     f"{config.min_steps} steps at batch {config.batch_size} underfits, and dropout only slows it; "
                     f"--dropout R keeps R")
        config = config.replace(dropout=config.short_run_dropout)
    if config.augment and config.translate and config.epochs < config.translate_min_epochs:
        most = config.translate_min_epochs - 1
        notes.append(f"augmentation: random flip only (no translation): a run of {most} epoch{'' if most == 1 else 's'} "
                     f"or fewer underfits, and the translation only slows it; --translate F keeps F")
        config = config.replace(translate=0.0)
    batch = auto_batch_size(config.batch_size, train_images, config.epochs, min_steps)
    if batch != config.batch_size:
        steps = int(config.epochs) * max(1, -(-int(train_images) // int(config.batch_size)))
        notes.append(f"batch size {batch} (not {config.batch_size}): {train_images} images x {config.epochs} "
                     f"epoch{'' if int(config.epochs) == 1 else 's'} "
                     f"would be {steps} steps, fewer than the recipe's {config.min_steps}; --batch-size N keeps N")
        config = config.replace(batch_size=batch)
    return config, short, notes, batch_before_min_steps


def recipe_values(recipe: str, arch: str) -> dict[str, Any]:
    """The values ``recipe`` sets for ``arch``: the recipe's shared values
    (:data:`RECIPES`) updated with the architecture's own (its registry row);
    an architecture not in the table gets the shared values only.

    Raises:
        ValueError: an unknown recipe.
    """
    from kerasalex.models import ARCHITECTURES

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of: {', '.join(RECIPES)}")
    values = dict(RECIPES[recipe])
    if arch in ARCHITECTURES:
        values.update(ARCHITECTURES[arch].recipe(recipe))
    return values


def resolve_config(
    arch: str = "alexnet",
    recipe: str = "default",
    hparams: dict[str, Any] | None = None,
    **options: Any,
) -> TrainConfig:
    """Builds the run configuration: dataclass defaults < recipe < hparams < options.

    ``None`` options are "not given" and do not override anything; ``limit=0``
    means "no limit" (it unsets a limit from the recipe or ``hparams``).

    ``epochs`` given as an option is the run's total. For a two-stage
    architecture (vgg16: head, then fine-tuning) it is split between the
    stages: ``fine_tune_epochs`` given as an option too is the fine-tuning
    share and the rest are head epochs; else the recipe's proportion decides
    (see :func:`split_epochs`), so ``--epochs 1`` trains one epoch, not 1 +
    the recipe's 8 fine-tuning epochs. The resolved ``TrainConfig.epochs`` is
    the head stage's (the run's total is ``epochs + fine_tune_epochs``).

    Raises:
        ValueError: an unknown name, a value ``TrainConfig`` refuses, or
            ``epochs`` not above an explicit ``fine_tune_epochs``.
    """
    values: dict[str, Any] = {"arch": arch, "recipe": recipe}
    values.update(recipe_values(recipe, arch))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if hparams:
        unknown = sorted(set(hparams) - names)
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}; expected names among the train options")
        values.update(hparams)
    given = {k: v for k, v in options.items() if v is not None}
    if given.get("epochs") is not None:
        total = int(given["epochs"])
        if given.get("fine_tune_epochs") is not None:
            fine = int(given["fine_tune_epochs"])
            if fine and total <= fine:
                raise ValueError(
                    f"--epochs is the run's total (head + fine-tuning epochs), so it must exceed --fine-tune-epochs. "
                    f"Received: epochs={total}, fine_tune_epochs={fine}"
                )
            given["epochs"] = total - fine
        elif values.get("fine_tune_epochs"):
            head, fine = split_epochs(total, int(values.get("epochs", TrainConfig.epochs)), int(values["fine_tune_epochs"]))
            given.update(epochs=head, fine_tune_epochs=fine)
    values.update(given)
    values.update(rules_off({**(hparams or {}), **given}))
    if values.get("limit") == 0:
        values["limit"] = None
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown options {unknown}")
    return TrainConfig(**values)


def split_epochs(total: int, head: int, fine_tune: int) -> tuple[int, int]:
    """Splits a run's ``total`` epochs between a transfer model's head stage
    and its fine-tuning stage in the proportion ``head : fine_tune`` (the
    recipe's 10 : 8 for vgg16), rounding the fine-tuning share down and
    keeping at least one head epoch.

    Returns:
        ``(head_epochs, fine_tune_epochs)``, summing to ``total``.

    Example:
        >>> split_epochs(1, 10, 8), split_epochs(9, 10, 8), split_epochs(18, 10, 8)
        ((1, 0), (5, 4), (10, 8))
    """
    total = int(total)
    if total < 1:
        raise ValueError(f"epochs must be at least 1. Received: epochs={total}")
    fine = min(total - 1, (total * int(fine_tune)) // max(1, int(head) + int(fine_tune)))
    return total - fine, fine


def load_hparams(path: str | Path) -> dict[str, Any]:
    """Reads a ``best_hparams.json`` (a flat JSON object of train option values)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"hyperparameter file not found: {path}") from None
    except ValueError as exc:
        raise ValueError(f"hyperparameter file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"hyperparameter file {path} must hold a JSON object of option values")
    return data.get("hparams", data) if isinstance(data.get("hparams"), dict) else data
