"""The command-line options of ``train``, ``tune`` and ``study``, declared once.

:data:`TRAIN_OPTIONS` maps each :class:`~kerasalex.config.TrainConfig` field
to its option; ``tune`` and ``study`` take every one of them, except the few
in :data:`NOT_IN_TUNE` / :data:`NOT_IN_STUDY` (with the reason), so a new
``train`` option reaches both with no further edit: ``tune`` fixes it in every
trial (a searched name is then no longer searched), ``study`` passes it to
every model. Options left unset are ``None`` and keep the recipe's value.

:func:`command_line` turns option values back into the command that gives
them (the resume hints and the commands recorded in state files), from the
same table. The ``kerasalex.commands`` modules apply :func:`decorate`.
Importing this module imports Click and :mod:`kerasalex.config` only.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any, Callable, Iterable, Mapping

import click

from kerasalex.config import DISTRIBUTE_MODES, JIT_MODES, OPTIMIZERS, PRECISIONS, RECIPES, SCHEDULES

TUNERS = ("bayesian", "random", "hyperband")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option: Click's parameter declarations and keywords."""

    decls: tuple[str, ...]
    kwargs: Mapping[str, Any]

    @property
    def flags(self) -> tuple[str, str | None]:
        """``(--name, --no-name)`` of a boolean pair; ``(--name, None)`` otherwise."""
        long = next(d for d in self.decls if d.startswith("--"))
        on, _, off = long.partition("/")
        return on, off or None

    def click_option(self, **overrides) -> Callable:
        return click.option(*self.decls, **{**self.kwargs, **overrides})

    def render(self, value) -> list[str]:
        """The arguments that give ``value`` (``[]`` for an unset one-way flag)."""
        on, off = self.flags
        if off is not None:
            return [on if value else off]
        if self.kwargs.get("is_flag"):
            return [on] if value else []
        return [on, str(value)]


def _opt(*decls: str, **kwargs) -> Option:
    return Option(decls, kwargs)


def _check_limit(ctx, param, value):
    if value == 1:
        raise click.BadParameter("0 (no limit) or at least 2 (a training and a validation image). Received: 1")
    return value


# TrainConfig field -> its option, in `train --help` order.
TRAIN_OPTIONS: dict[str, Option] = {
    "arch": _opt("--arch", default="alexnet", show_default=True, help="Architecture (see `kerasalex models`)."),
    "recipe": _opt("--recipe", type=click.Choice(sorted(RECIPES)), default="default", show_default=True,
                   help="study = the study's exact recipe; default = ours."),
    "dataset": _opt("--dataset", default="cifar10", show_default=True,
                    help="cifar10, cifar100, digits (bundled, offline), or a folder with one subfolder per class."),
    "data_dir": _opt("--data-dir", type=click.Path(), default=None,
                     help="Local cifar-*-python.tar.gz or its extracted folder (offline CIFAR)."),
    "epochs": _opt("--epochs", type=click.IntRange(min=1), default=None,
                   help="Epochs in all [recipe]; vgg16: head + fine-tuning epochs, split 10:8 as the recipe's "
                        "unless --fine-tune-epochs says how many fine-tune."),
    "batch_size": _opt("--batch-size", type=click.IntRange(min=1), default=None,
                       help="Global batch size, kept as given [recipe; alexnet's default recipe: 64, 128 for runs of "
                            "1,400+ steps at 128 (CIFAR-10: 4+ epochs), else halved (down to 16) "
                            "until the run has 2,500 steps]."),
    "optimizer": _opt("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="Optimizer [recipe]."),
    "lr": _opt("--lr", type=float, default=None,
               help="Peak learning rate [recipe; alexnet's default recipe: 0.02, 0.04 when a run takes batch 128]."),
    "momentum": _opt("--momentum", type=float, default=None, help="SGD momentum [recipe]."),
    "weight_decay": _opt("--weight-decay", type=float, default=None, help="Decoupled weight decay [recipe]."),
    "label_smoothing": _opt("--label-smoothing", type=float, default=None, help="Label smoothing [recipe]."),
    "dropout": _opt("--dropout", type=float, default=None, help="Dropout in the classifier [recipe]."),
    "schedule": _opt("--schedule", type=click.Choice(SCHEDULES), default=None, help="Learning-rate schedule [recipe]."),
    "augment": _opt("--augment/--no-augment", default=None,
                    help="Random flip + translation while training (not in the saved model) [recipe]."),
    "translate": _opt("--translate", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
                      help="Random translation while training, as a fraction of the image side; 0 = flip only "
                           "[recipe: 0.125; alexnet's default recipe: 0 for runs of 10 epochs or fewer]."),
    "random_erasing": _opt("--random-erasing", type=click.FloatRange(0.0, 1.0), default=None,
                           help="Probability of random erasing per training image (one grey rectangle, 2-33% of "
                                "the area; not in the saved model) [0]."),
    "ema_momentum": _opt("--ema-momentum", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
                         help="Exponential moving average of the weights, momentum per step; 0 = off [recipe]."),
    "val_split": _opt("--val-split", type=float, default=None,
                      help="Fraction of training data held out for validation [0.1]."),
    "limit": _opt("--limit", type=click.IntRange(min=0), default=None, callback=_check_limit,
                  help="Train on at most N images (quick look); 0 = all (unsets a --hparams file's limit) [all]."),
    "image_size": _opt("--image-size", type=click.IntRange(min=1), default=None,
                       help="Side images are fed at [architecture's]."),
    "resize": _opt("--resize", type=click.Choice(["squash", "crop"]), default=None,
                   help="Non-square folder images: squash to the square, or scale the shorter side and crop the "
                        "centre (torchvision style) [architecture's: crop for alexnet-torch/vgg16, else squash]."),
    "data_cache": _opt("--data-cache", type=click.Choice(["auto", "memory", "disk"]), default=None,
                       help="Image folders: keep the decoded images in memory, or on disk in the decode cache "
                            "(read by position, constant memory); auto = memory up to 1 GiB of decoded images "
                            "[auto]."),
    "seed": _opt("--seed", type=int, default=None, help="Random seed (weights, data order, augmentation) [0]."),
    "precision": _opt("--precision", type=click.Choice(PRECISIONS), default=None,
                      help="Keras dtype policy; auto = bf16 on AVX512-BF16/AMX CPUs and Ampere+ GPUs, fp16 on "
                           "Volta/Turing GPUs, else float32 (the run's first lines say which and why)."),
    "jit_compile": _opt("--jit-compile", type=click.Choice(JIT_MODES), default=None, help="XLA compilation [auto]."),
    "steps_per_execution": _opt("--steps-per-execution", type=click.IntRange(min=1), default=None,
                                help="Batches per compiled call [1]."),
    "weights": _opt("--weights", type=click.Path(), default=None,
                    help="alexnet-torch: ported ImageNet weights (.weights.h5/.keras)."),
    "base_weights": _opt("--base-weights", default=None,
                         help="vgg16: imagenet (download/cache), none, or a local notop .h5."),
    "freeze_base": _opt("--freeze-base/--no-freeze-base", default=None, help="Freeze the pretrained base."),
    "fine_tune_epochs": _opt("--fine-tune-epochs", type=click.IntRange(min=0), default=None,
                             help="vgg16: how many of the epochs fine-tune after the head [recipe's share]."),
    "unfreeze_from": _opt("--unfreeze-from", default=None,
                          help="vgg16: first layer to unfreeze for fine-tuning [block5_conv1]."),
    "fine_tune_lr": _opt("--fine-tune-lr", type=float, default=None,
                         help="vgg16: fine-tuning learning rate [1e-5]."),
    "deterministic": _opt("--deterministic/--no-deterministic", default=None,
                          help="Deterministic ops: a resumed run ends with an uninterrupted run's weights (slower) [off]."),
    "distribute": _opt("--distribute", type=click.Choice(DISTRIBUTE_MODES), default=None,
                       help="tf.distribute strategy [none]."),
    "run_dir": _opt("--run-dir", type=click.Path(), default=None, help="Run folder [runs/<arch>-<dataset>-<time>]."),
    "output": _opt("--output", "-o", type=click.Path(), default=None,
                   help="Final .keras path [saved_models/<run>.keras]."),
    "save_best": _opt("--save-best", is_flag=True, default=None,
                      help="Also keep the best validation epoch's model as <run>/best.keras (as large as the final model)."),
}

# TrainConfig fields that no command line sets, and why.
NOT_OPTIONS: dict[str, str] = {
    "nesterov": "the recipe's (or a --hparams file's, or searched by tune)",
    "warmup_epochs": "the recipe's (or a --hparams file's, or searched by tune)",
    "kernel_initializer": "the recipe's",
    "head_initializer": "the recipe's",
    "min_steps": "the recipe's rule; a given --batch-size turns it off",
    "short_run_dropout": "the recipe's rule; a given --dropout turns it off",
    "translate_min_epochs": "the recipe's rule; a given --translate turns it off",
    "long_run_steps": "the recipe's rule; a given --batch-size turns it off",
    "long_run_batch_size": "the recipe's rule; a given --batch-size turns it off",
    "long_run_lr": "the recipe's rule; a given --lr turns it off",
    "save_dir": "the folder of the default --output",
}

# `train` options that are not TrainConfig fields.
TRAIN_ONLY: dict[str, Option] = {
    "hparams": _opt("--hparams", type=click.Path(), default=None,
                    help="JSON of option values, e.g. tune's best_hparams.json (arch, recipe, the searched values); "
                         "options given here beat it."),
    "resume": _opt("--resume", is_flag=True,
                   help="Continue the run in --run-dir (or the newest unfinished run) from its last finished epoch."),
}

# Train options `tune` does not take, and why.
NOT_IN_TUNE: dict[str, str] = {
    "epochs": "--max-epochs is each trial's budget (the retrain: the best trial's epoch)",
    "run_dir": "every trial has its folder in the search's (--directory, --name)",
    "save_best": "the search keeps the best trial and retrains it",
    "distribute": "a search spreads its trials over workers instead (--chief, --worker)",
}

# Train options `study` does not take, and why.
NOT_IN_STUDY: dict[str, str] = {
    "arch": "--models names the architectures",
    "run_dir": "each model runs in runs/<arch> of the study folder",
    "output": "each model is saved as models/<arch>.keras in the study folder",
    "weights": "pretrained weights are per model: the --*-weights options",
    "base_weights": "pretrained weights are per model: the --*-weights options",
}

TUNE_OWN: dict[str, Option] = {
    "tuner": _opt("--tuner", type=click.Choice(TUNERS), default="bayesian", show_default=True,
                  help="Search algorithm: Gaussian-process Bayesian optimization, random search, or Hyperband."),
    "max_trials": _opt("--max-trials", type=click.IntRange(min=1), default=None,
                       help="Trials in all (a rerun with more extends the search) [20; hyperband: its schedule]."),
    "max_epochs": _opt("--max-epochs", type=click.IntRange(min=1), default=10, show_default=True,
                       help="Epochs per trial (early stopping may end one sooner; hyperband: the longest round)."),
    "objective": _opt("--objective", type=click.Choice(OBJECTIVES), default="val_accuracy", show_default=True),
    "factor": _opt("--factor", type=click.IntRange(min=2), default=3, show_default=True,
                   help="hyperband: reduction factor."),
    "executions_per_trial": _opt("--executions-per-trial", type=click.IntRange(min=1), default=1, show_default=True,
                                 help="Trainings per trial (other seeds), averaged."),
    "patience": _opt("--patience", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Early stopping: epochs without a better objective."),
    "search_space": _opt("--search-space", type=click.Path(), default=None,
                         help='JSON narrowing/widening the default space, e.g. {"lr": {"min": 1e-4, "max": 0.1, '
                              '"sampling": "log"}, "optimizer": {"values": ["sgd", "adamw"]}, "augment": {"fixed": true}}.'),
    "directory": _opt("--directory", type=click.Path(), default="tuning", show_default=True,
                      help="Where searches live."),
    "name": _opt("--name", default=None, help="The search's folder in --directory [<arch>-<dataset>-<tuner>]."),
    "overwrite": _opt("--overwrite", is_flag=True, help="Delete an existing search of this name and start afresh."),
    "retrain": _opt("--retrain/--no-retrain", default=True, show_default=True,
                    help="Retrain the best trial on train+validation at the end."),
    "chief": _opt("--chief", metavar="HOST:PORT", default=None,
                  help="Distributed: serve the search (the oracle) at HOST:PORT; workers run the trials."),
    "worker": _opt("--worker", metavar="HOST:PORT", default=None,
                   help="Distributed: run trials for the chief at HOST:PORT."),
    "worker_id": _opt("--worker-id", default=None,
                      help="Distributed: this worker's id, unique and kept across restarts."),
}

# What a shared option means in `tune` when it differs from `train`.
TUNE_HELP: dict[str, str] = {
    "recipe": "Values of the options the search does not tune.",
    "limit": "Search on at most N training images; 0 = all [all].",
    "val_split": "Fraction held out to score trials [0.1].",
    "seed": "Random seed of every trial and of the search [0].",
    "output": "The retrained best model [saved_models/tune-<name>.keras].",
}

STUDY_HELP: dict[str, str] = {
    "recipe": "study = the study's exact recipes; default = ours.",
    "epochs": "Epochs in all for every model (vgg16: head + fine-tuning) [recipe].",
    "limit": "Train on at most N images (quick look); 0 = all [all].",
}


def study_weights_options() -> dict[str, Option]:
    """``study``'s pretrained-weights option of each architecture that has
    one (its registry entry's ``study_weights_flag``), named as Python sees it."""
    from kerasalex.models import ARCHITECTURES

    out = {}
    for a in ARCHITECTURES.values():
        if not a.study_weights_flag:
            continue
        train_opt = TRAIN_OPTIONS[a.weights_option]
        skipped = ("without them it is skipped" if a.weights_required
                   else "skipped when they cannot be had (offline)")
        out[a.study_weights_flag.replace("-", "_")] = _opt(
            f"--{a.study_weights_flag}", type=train_opt.kwargs.get("type"), default=None,
            help=f"{a.name}'s pretrained weights, as `train {train_opt.flags[0]}` takes them ({skipped}).",
        )
    return out


def study_own() -> dict[str, Option]:
    """``study``'s own options (the default --models from the registry)."""
    from kerasalex.models import ARCHITECTURES

    default = ",".join(a.name for a in ARCHITECTURES.values() if a.study_label)
    return {
        "models": _opt("--models", default=default, show_default=True,
                       help="Comma-separated architectures to run, in order."),
        **study_weights_options(),
        "eval_limit": _opt("--eval-limit", type=click.IntRange(min=1), default=None,
                           help="Evaluate on at most N images."),
        "output_dir": _opt("--output-dir", "-o", type=click.Path(), default=None,
                           help="The study folder [studies/<dataset>-<recipe>]; rerunning into it resumes."),
    }


def command_options(command: str) -> dict[str, Option]:
    """Every option of ``command`` (``train``, ``tune`` or ``study``), by the
    Python name Click passes it as, in ``--help`` order.

    Raises:
        ValueError: another command.
    """
    if command == "train":
        return {**TRAIN_OPTIONS, **TRAIN_ONLY}
    if command == "tune":
        shared = {k: _with_help(o, TUNE_HELP.get(k)) for k, o in TRAIN_OPTIONS.items() if k not in NOT_IN_TUNE}
        return {**TUNE_OWN, **shared}
    if command == "study":
        shared = {k: _with_help(o, STUDY_HELP.get(k)) for k, o in TRAIN_OPTIONS.items() if k not in NOT_IN_STUDY}
        return {**shared, **study_own()}
    raise ValueError(f"command must be one of ('train', 'tune', 'study'). Received: command={command!r}")


def _with_help(option: Option, help: str | None) -> Option:
    return option if help is None else Option(option.decls, {**option.kwargs, "help": help})


def decorate(command: str) -> Callable:
    """A decorator that adds every option of ``command`` to a Click command."""

    def apply(f):
        for option in reversed(list(command_options(command).values())):
            f = option.click_option()(f)
        return f

    return apply


def command_line(command: str, values: Mapping[str, Any], keep: Iterable[str] = ()) -> str:
    """The ``kerasalex <command>`` line that gives ``values`` (option name ->
    value, in the order wanted), shell-quoted.

    ``None`` values are left out, and so are values equal to the option's
    default unless the name is in ``keep``.

    Raises:
        ValueError: a name ``command`` has no option for.

    Example:
        >>> command_line("tune", {"arch": "alexnet", "retrain": False, "limit": 150}, keep=["arch"])
        'kerasalex tune --arch alexnet --no-retrain --limit 150'
    """
    table = command_options(command)
    keep = set(keep)
    args = ["kerasalex", command]
    for name, value in values.items():
        option = table.get(name)
        if option is None:
            raise ValueError(f"`kerasalex {command}` has no option for {name!r}")
        if value is None or (name not in keep and value == option.kwargs.get("default")):
            continue
        args += option.render(value)
    return shlex.join(args)
