"""``kerasalex export``."""

from __future__ import annotations

import click

from kerasalex.commands import user_errors


@click.command("export")
@click.argument("model", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["saved_model", "litert", "onnx"]), required=True,
              help="saved_model: a TensorFlow SavedModel folder (TF Serving); litert: a .tflite file "
                   "(LiteRT/TFLite, builtin ops only); onnx: an .onnx file (onnxruntime).")
@click.option("--output", "-o", type=click.Path(), default=None,
              help="The artifact [<model>_saved_model/, <model>.tflite (<model>_int8.tflite), <model>.onnx].")
@click.option("--dataset", default=None,
              help="Check (and report accuracy) on this dataset's test images [random images].")
@click.option("--data-dir", type=click.Path(), default=None, help="Local CIFAR python archive/folder (offline).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Images in the check [256 of --dataset, else 64].")
@click.option("--quantize", is_flag=True, help="litert: dynamic-range int8 weights (about 4x smaller).")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Side of the images the artifact takes [the size the model was trained at].")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def export(model, fmt, output, dataset, data_dir, limit, quantize, image_size, overwrite, as_json):
    """Export MODEL (.keras) to a SavedModel, LiteRT or ONNX and check it.

    The artifact takes uint8 RGB images (N, H, W, 3) named `image` and returns
    `probabilities` (N, classes); its class names and input contract are in
    kerasalex.json (PATH/assets.extra/ for a SavedModel, PATH.json beside the
    file otherwise). Before it is kept, it runs in its own runtime on a batch
    (--dataset, or random images) beside the .keras model; beyond the
    tolerance nothing is written.

    \b
    Examples:
      kerasalex export saved_models/digits.keras --format saved_model -o serving/digits/1
      kerasalex export saved_models/digits.keras --format litert --quantize --dataset digits
      kerasalex export saved_models/digits.keras --format onnx
      kerasalex predict saved_models/digits.onnx some_digit.png
    """
    import json

    from kerasalex.export import export_model

    with user_errors():
        r = export_model(model, fmt, output, dataset=dataset, data_dir=data_dir, limit=limit, quantize=quantize,
                         overwrite=overwrite, image_size=image_size)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"Checked in {r['runtime']} on {r['checked_on']}: max |probability difference| {r['max_prob_diff']:.3g}, "
               f"top-1 agreement {r['top1_agreement']:.2%} (tolerance: {r['tolerance']})")
    if "keras_accuracy" in r:
        change = 100 * (r["export_accuracy"] - r["keras_accuracy"])
        click.echo(f"Accuracy: .keras {r['keras_accuracy']:.2%}, {fmt}{' int8' if r['quantized'] else ''} "
                   f"{r['export_accuracy']:.2%} ({change:+.2f} points)")
    click.echo(f"Saved {r['output']} ({r['bytes'] / 2**20:.1f} MiB); class names and input contract in {r['info']}")
