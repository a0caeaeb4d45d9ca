"""``kerasalex train``."""

from __future__ import annotations

import sys

import click

from kerasalex.commands import user_errors
from kerasalex.options import decorate


@click.command()
@decorate("train")
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
        ignored = [n for n in ("arch", "recipe", "hparams", *options)
                   if n not in ("run_dir", "output", "data_cache") and explicit(n)]
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
        f"Done: {s['epochs']} epoch{'' if s['epochs'] == 1 else 's'} in {s['train_seconds']:.0f}s, {score}, "
        f"{s.get('mean_images_per_second')} images/s. Model: {result.model_path}"
        + "".join(f"\nWarning: {w}" for w in s.get("warnings") or [])
    )
