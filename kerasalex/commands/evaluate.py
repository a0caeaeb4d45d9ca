"""``kerasalex evaluate``, ``predict`` and ``models``."""

from __future__ import annotations

import json

import click

from kerasalex.commands import user_errors


@click.command()
@click.argument("model", type=click.Path())
@click.option("--dataset", default="cifar10", show_default=True, help="cifar10, cifar100, digits, or an image folder.")
@click.option("--data-dir", type=click.Path(), default=None, help="Local CIFAR python archive/folder (offline).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate on the first N test images.")
@click.option("--output-dir", type=click.Path(), default=None,
              help="Where the report goes [the model's run folder, else <model>-eval/].")
def evaluate(model, dataset, data_dir, batch_size, limit, output_dir):
    """Test loss/accuracy, classification report, confusion matrix of MODEL.

    \b
    Example:
      kerasalex evaluate saved_models/alexnet-digits-20261128-101500.keras --dataset digits
    """
    from kerasalex.evaluation import evaluate as run_eval

    with user_errors():
        r = run_eval(model, dataset, data_dir, batch_size, output_dir, limit)
    click.echo(r["report_text"])
    click.echo(f"Test accuracy: {r['test_accuracy']:.2%}  loss: {r['test_loss']:.4f}  ({r['test_images']} images)")
    click.echo(f"Report, confusion matrix and figures in {r['output_dir']}")


@click.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--plot", type=click.Path(), default=None, help="Write a figure of the images titled with their predictions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def predict(model, images, top_k, plot, as_json):
    """Top-k classes for each IMAGE (files or folders) with MODEL.

    \b
    Example:
      kerasalex predict saved_models/run.keras cat.jpg dog.png --top-k 3 --plot preds.png
    """
    from kerasalex.evaluation import predict as run_predict

    with user_errors():
        out = run_predict(model, images, top_k, plot)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for r in out:
        tops = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"])
        click.echo(f"{r['image']}: {tops}")
    if plot:
        click.echo(f"Figure: {plot}")


@click.command("models")
def models_cmd():
    """List the architectures in the model table."""
    from kerasalex.models import ARCHITECTURES

    for a in ARCHITECTURES.values():
        click.echo(f"{a.name:15s} {a.description}")
