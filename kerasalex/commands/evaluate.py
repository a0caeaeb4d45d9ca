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
@click.option("--split", type=click.Choice(["auto", "test", "val"]), default="auto", show_default=True,
              help="auto = the test split; for an image folder without test/, the held-out validation slice "
                   "that training carved (never the training images).")
@click.option("--val-split", type=float, default=None,
              help="The run's --val-split, for --split val [read from the run folder, else 0.1].")
def evaluate(model, dataset, data_dir, batch_size, limit, output_dir, split, val_split):
    """Test loss/accuracy, classification report, confusion matrix of MODEL.

    \b
    Examples:
      kerasalex evaluate runs/alexnet-digits-20261128-101500/model.keras --dataset digits
      kerasalex evaluate saved_models/pets.keras --dataset ~/pets          # pets/ without test/: held-out slice
    """
    import json
    from pathlib import Path

    from kerasalex.compare import evaluation_split
    from kerasalex.evaluation import evaluate as run_eval

    with user_errors():
        if split == "auto":
            split = evaluation_split(dataset)
        if val_split is None:
            cfg = Path(model).parent / "config.json"
            val_split = 0.1
            if cfg.is_file():
                try:
                    val_split = float(json.loads(cfg.read_text())["config"].get("val_split", 0.1))
                except (ValueError, KeyError, TypeError):
                    pass
        if split == "val":
            click.echo(f"{dataset} has no test split: evaluating on the held-out validation slice (val_split={val_split})")
        r = run_eval(model, dataset, data_dir, batch_size, output_dir, limit, split=split, val_split=val_split)
    click.echo(r["report_text"])
    label = "Test accuracy" if r["split"] == "test" else "Held-out accuracy"
    click.echo(f"{label}: {r['test_accuracy']:.2%}  loss: {r['test_loss']:.4f}  ({r['test_images']} images)")
    click.echo(f"Report, confusion matrix and figures in {r['output_dir']}")


@click.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--plot", type=click.Path(), default=None, help="Write a figure of the images titled with their predictions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def predict(model, images, top_k, plot, as_json):
    """Top-k classes for each IMAGE (files or folders) with MODEL.

    MODEL is a .keras file, or what `kerasalex export` wrote: a SavedModel
    folder, a .tflite or an .onnx file (run in TensorFlow, the LiteRT
    interpreter or onnxruntime).

    \b
    Examples:
      kerasalex predict saved_models/run.keras cat.jpg dog.png --top-k 3 --plot preds.png
      kerasalex predict saved_models/run.tflite cat.jpg
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
