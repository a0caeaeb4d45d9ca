"""``kerasalex train``."""

from __future__ import annotations

import sys

import click

from kerasalex.commands import user_errors
from kerasalex.config import DISTRIBUTE_MODES, JIT_MODES, OPTIMIZERS, PRECISIONS, RECIPES, SCHEDULES


def _check_limit(ctx, param, value):
    if value == 1:
        raise click.BadParameter("0 (no limit) or at least 2 (a training and a validation image). Received: 1")
    return value


def train_options(f):
    """The options shared by ``train`` (and reused by ``tune``/``study`` where they fit)."""
    opts = [
        click.option("--dataset", default="cifar10", show_default=True,
                     help="cifar10, cifar100, digits (bundled, offline), or a folder with one subfolder per class."),
        click.option("--data-dir", type=click.Path(), default=None,
                     help="Local cifar-*-python.tar.gz or its extracted folder (offline CIFAR)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="Epochs in all [recipe]; vgg16: head + fine-tuning epochs, split 10:8 as the recipe's "
                          "unless --fine-tune-epochs says how many fine-tune."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Global batch size, kept as given [recipe; the default recipe halves its 128 (down to 16) until the run has 1,000 steps]."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="Optimizer [recipe]."),
        click.option("--lr", type=float, default=None, help="Peak learning rate [recipe]."),
        click.option("--momentum", type=float, default=None, help="SGD momentum [recipe]."),
        click.option("--weight-decay", type=float, default=None, help="Decoupled weight decay [recipe]."),
        click.option("--label-smoothing", type=float, default=None, help="Label smoothing [recipe]."),
        click.option("--dropout", type=float, default=None, help="Dropout in the classifier [recipe]."),
        click.option("--schedule", type=click.Choice(SCHEDULES), default=None, help="Learning-rate schedule [recipe]."),
        click.option("--augment/--no-augment", default=None, help="Random flip + translation while training (not in the saved model) [recipe]."),
        click.option("--ema-momentum", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
                     help="Exponential moving average of the weights, momentum per step; 0 = off [recipe]."),
        click.option("--val-split", type=float, default=None, help="Fraction of training data held out for validation [0.1]."),
        click.option("--limit", type=click.IntRange(min=0), default=None, callback=_check_limit,
                     help="Train on at most N images (quick look); 0 = all (unsets a --hparams file's limit) [all]."),
        click.option("--image-size", type=click.IntRange(min=1), default=None, help="Side images are fed at [architecture's]."),
        click.option("--resize", type=click.Choice(["squash", "crop"]), default=None,
                     help="Non-square folder images: squash to the square, or scale the shorter side and crop the "
                          "centre (torchvision style) [architecture's: crop for alexnet-torch/vgg16, else squash]."),
        click.option("--seed", type=int, default=None, help="Random seed (weights, data order, augmentation) [0]."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                     help="Keras dtype policy; auto = bf16 on AVX512-BF16/AMX CPUs and Ampere+ GPUs, fp16 on "
                          "Volta/Turing GPUs, else float32 (the run's first lines say which and why)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command()
@click.option("--arch", default="alexnet", show_default=True, help="Architecture (see `kerasalex models`).")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="default", show_default=True,
              help="study = the study's exact recipe; default = ours.")
@train_options
@click.option("--jit-compile", type=click.Choice(JIT_MODES), default=None, help="XLA compilation [auto].")
@click.option("--steps-per-execution", type=click.IntRange(min=1), default=None, help="Batches per compiled call [1].")
@click.option("--weights", type=click.Path(), default=None, help="alexnet-torch: ported ImageNet weights (.weights.h5/.keras).")
@click.option("--base-weights", default=None, help="vgg16: imagenet (download/cache), none, or a local notop .h5.")
@click.option("--freeze-base/--no-freeze-base", default=None, help="Freeze the pretrained base.")
@click.option("--fine-tune-epochs", type=click.IntRange(min=0), default=None, help="vgg16: how many of the epochs fine-tune after the head [recipe's share].")
@click.option("--unfreeze-from", default=None, help="vgg16: first layer to unfreeze for fine-tuning [block5_conv1].")
@click.option("--fine-tune-lr", type=float, default=None, help="vgg16: fine-tuning learning rate [1e-5].")
@click.option("--deterministic/--no-deterministic", default=None,
              help="Deterministic ops: a resumed run ends with an uninterrupted run's weights (slower) [off].")
@click.option("--distribute", type=click.Choice(DISTRIBUTE_MODES), default=None, help="tf.distribute strategy [none].")
@click.option("--hparams", type=click.Path(), default=None,
              help="JSON of option values, e.g. tune's best_hparams.json (arch, recipe, the searched values); "
                   "options given here beat it.")
@click.option("--run-dir", type=click.Path(), default=None, help="Run folder [runs/<arch>-<dataset>-<time>].")
@click.option("--output", "-o", type=click.Path(), default=None, help="Final .keras path [saved_models/<run>.keras].")
@click.option("--save-best", is_flag=True, default=None,
              help="Also keep the best validation epoch's model as <run>/best.keras (as large as the final model).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir (or the newest unfinished run) from its last finished epoch.")
def train(arch, recipe, hparams, resume, **options):
    """Train a model and save a reusable .keras file.

    \b
    Examples:
      kerasalex train --arch alexnet --dataset digits --epochs 5                    # offline demo
      kerasalex train --arch alexnet                                  # CIFAR-10, our recipe
      kerasalex train --arch alexnet --recipe study                   # the study, exactly
      kerasalex train --arch alexnet --dataset ~/photos --image-size 64
      kerasalex train --resume --run-dir runs/alexnet-cifar10-20261128-101500
    """
    from kerasalex.callbacks import TrainingDiverged, TrainingInterrupted
    from kerasalex.config import load_hparams, resolve_config
    from kerasalex.training import train as run_train

    ctx = click.get_current_context()
    explicit = lambda name: ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT  # noqa: E731
    if resume:
        ignored = [n for n in ("arch", "recipe", "hparams", *options) if n not in ("run_dir", "output") and explicit(n)]
        if ignored:
            click.echo("warning: --resume continues the run with its own saved options; ignored: "
                       + ", ".join("--" + n.replace("_", "-") for n in ignored), err=True)
    with user_errors():
        hp = load_hparams(hparams) if hparams else None
        if hp:
            # An option given on the command line beats the file; a default does not.
            file_arch = hp.pop("arch", arch)
            arch = arch if explicit("arch") else file_arch
            file_recipe = hp.pop("recipe", recipe)  # the recipe's values, not only its name
            recipe = recipe if explicit("recipe") else file_recipe
            if not explicit("dataset"):
                options["dataset"] = None
        from kerasalex.models import get_architecture

        get_architecture(arch)
        config = resolve_config(arch=arch, recipe=recipe, hparams=hp, **options)
        try:
            result = run_train(config, resume=resume)
        except TrainingInterrupted as exc:
            click.echo(f"Interrupted: {exc}", err=True)
            sys.exit(exc.exit_code)
        except TrainingDiverged as exc:
            raise click.ClickException(str(exc)) from None
    s = result.summary
    final = s.get("final", {})
    va, acc = final.get("val_accuracy"), final.get("accuracy")
    if va is not None and va == va:
        score = f"val_accuracy {va:.4f}"
    else:  # --val-split 0: nothing was held out, say so instead of "val_accuracy nan"
        score = (f"training accuracy {acc:.4f} " if acc is not None and acc == acc else "") + "(no validation: --val-split 0)"
    click.echo(
        f"Done: {s['epochs']} epochs in {s['train_seconds']:.0f}s, {score}, "
        f"{s.get('mean_images_per_second')} images/s. Model: {result.model_path}"
        + "".join(f"\nWarning: {w}" for w in s.get("warnings") or [])
    )
