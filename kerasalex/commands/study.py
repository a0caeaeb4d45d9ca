"""``kerasalex study`` and ``kerasalex compare``."""

from __future__ import annotations

import sys

import click

from kerasalex.commands import user_errors
from kerasalex.options import decorate


def _echo_missing(missing) -> None:
    if missing:
        click.echo("\nNot evaluated:")
        for m in missing:
            click.echo(f"  {m}")


@click.command()
@decorate("study")
def study(models, **options):
    """Train, evaluate and compare the study's models in one go.

    Scratch AlexNet, torchvision AlexNet (with --alexnet-weights) and VGG16
    transfer (ImageNet base), each trained with the same recipe (and the same
    `train` options, any of which study takes) and evaluated on
    the test split (an image folder without test/: its held-out validation
    slice). Writes the comparison table, the loss curves of all models, per-class
    F1, each model's figures and REPORT.md into the study folder. Interrupted,
    the same command resumes the model it was on and keeps the finished ones.

    \b
    Examples:
      kerasalex study --dataset digits --epochs 2 --limit 300     # offline, ~1 min on 2 CPU cores
      kerasalex study --recipe study --alexnet-weights alexnet.weights.h5
      kerasalex study --dataset ~/cifar10-jpeg/train --limit 5000 --epochs 3
    """
    from kerasalex.callbacks import TrainingDiverged, TrainingInterrupted
    from kerasalex.study import run_study

    with user_errors():
        names = [m.strip() for m in models.split(",") if m.strip()]
        from kerasalex.training import quiet_model_retracing

        try:
            with quiet_model_retracing():  # one model after another retraces by design
                result = run_study(models=names, log=lambda m: click.echo(f"[kerasalex] {m}"), **options)
        except TrainingInterrupted as exc:
            click.echo(f"Interrupted: {exc}. Run the same `kerasalex study` command to resume.", err=True)
            sys.exit(exc.exit_code)
        except TrainingDiverged as exc:
            raise click.ClickException(str(exc)) from None
    click.echo("")
    click.echo(result["table_md"])
    _echo_missing(result["missing"])
    for arch, reason in result["skipped"].items():
        click.echo(f"Skipped {arch}: {reason}")
    click.echo(f"\nStudy folder: {result['study_dir']}  (report: {result['report']})")


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--output-dir", "-o", type=click.Path(), default="comparison", show_default=True,
              help="Where the table (md, csv), loss_curves.png and per-class F1 go.")
@click.option("--evaluate", "evaluate_missing", is_flag=True,
              help="Evaluate runs that have no evaluation.json now (else they are listed as not evaluated).")
@click.option("--dataset", default=None, help="Evaluate on this dataset [each run's own].")
@click.option("--data-dir", type=click.Path(), default=None, help="Local CIFAR python archive/folder (offline).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Evaluation batch size.")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="Evaluate on at most N images.")
def compare(run_dirs, output_dir, evaluate_missing, dataset, data_dir, batch_size, eval_limit):
    """Compare finished runs side by side: the study's table, loss curves, per-class F1.

    RUN_DIRS are run folders (or folders holding them, such as runs/ or a study
    folder). Prints the table as Markdown and writes comparison.md,
    comparison.csv, loss_curves.png, per_class_f1.md and per_class_f1.csv.

    \b
    Examples:
      kerasalex compare runs/alexnet-cifar10-20261128-101500 runs/vgg16-cifar10-20261128-121500
      kerasalex compare runs/ --evaluate -o comparison/
    """
    from kerasalex.compare import compare_runs, expand_run_dirs

    with user_errors():
        dirs = expand_run_dirs(run_dirs)
        result = compare_runs(dirs, output_dir, evaluate_missing=evaluate_missing, dataset=dataset,
                              data_dir=data_dir, batch_size=batch_size, eval_limit=eval_limit,
                              log=lambda m: click.echo(f"[kerasalex] {m}", err=True))
    click.echo(result["table_md"])
    _echo_missing(result["missing"])
    if any(r["evaluation"] for r in result["runs"]):
        click.echo("\nPer-class F1:")
        click.echo(result["per_class_f1_md"])
    click.echo(f"\nWrote {', '.join(result['files'])} in {output_dir}")
