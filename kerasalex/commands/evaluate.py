"""``kerasalex evaluate``, ``predict`` and ``models``."""

from __future__ import annotations

import json

import click

from kerasalex.commands import user_errors


@click.command()
@click.argument("model", type=click.Path())
@click.option("--dataset", default=None,
              help="cifar10, cifar100, digits, or an image folder [the model's own, from the model file or its run folder].")
@click.option("--data-dir", type=click.Path(), default=None,
              help="Local CIFAR python archive/folder (offline) [the model's own, with its own dataset].")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate on a seeded, stratified sample of N images (every class present when N >= classes).")
@click.option("--output-dir", type=click.Path(), default=None,
              help="Where the report goes [the model's run folder (also for a saved_models/ copy), else <model>-eval/].")
@click.option("--split", type=click.Choice(["auto", "test", "val"]), default="auto", show_default=True,
              help="auto = the test split; for an image folder without test/, the images the model held out "
                   "of its training data (never the training images).")
@click.option("--val-split", type=float, default=None,
              help="For --split val: the fraction held out [the model's own, recorded in the .keras file].")
@click.option("--tta/--no-tta", default=None,
              help="Horizontal-flip test-time augmentation: average the predictions of each image and its mirror "
                   "[on for models trained with random flips].")
@click.option("--data-cache", type=click.Choice(["auto", "memory", "disk"]), default="auto", show_default=True,
              help="Image folders: keep the decoded images in memory, or read them from the decode cache on disk "
                   "(constant memory); auto = memory up to 1 GiB of decoded images.")
def evaluate(model, dataset, data_dir, batch_size, limit, output_dir, split, val_split, tta, data_cache):
    """Test loss/accuracy, classification report, confusion matrix of MODEL.

    The test set may lack some of the model's classes (matched by folder
    name; reported with support 0). The held-out slice of a folder without
    test/ is found from what the model file records about its training data,
    so a copied model is scored on images it never saw, or refused.

    \b
    Without --dataset, MODEL is evaluated on the dataset it was trained on
    (recorded in the model file, or in the config.json of its run folder).
    The test loss is plain cross-entropy; training's val_loss included the
    recipe's label smoothing, so it reads higher for the same predictions.

    \b
    Examples:
      kerasalex evaluate saved_models/alexnet-digits-20261128-101500.keras    # on digits, into its run folder
      kerasalex evaluate runs/alexnet-digits-20261128-101500/model.keras --dataset digits
      kerasalex evaluate saved_models/pets.keras --dataset ~/pets          # pets/ without test/: held-out slice
    """
    from kerasalex import files
    from kerasalex.compare import evaluation_split
    from kerasalex.evaluation import evaluate as run_eval
    from kerasalex.evaluation import model_origin

    with user_errors():
        origin = model_origin(model)
        if dataset is None:
            files.check_model_file(model)  # a missing or broken file says so first
            dataset = origin.get("dataset")
            if dataset is None:
                raise click.UsageError(
                    f"{model} does not say which dataset it was trained on (no kerasalex.json inside, no run "
                    "folder config.json beside it); pass --dataset cifar10|cifar100|digits|FOLDER"
                )
            data_dir = data_dir or origin.get("data_dir")
            click.echo(f"dataset: {dataset} (the model's own; --dataset picks another)")
        if split == "auto":
            split = evaluation_split(dataset)
        r = run_eval(model, dataset, data_dir, batch_size, output_dir, limit, split=split, val_split=val_split,
                     log=click.echo, tta=tta, storage=data_cache)
    click.echo(r["report_text"])
    label = "Test accuracy" if r["split"] == "test" else "Held-out accuracy"
    sample = r.get("sample")
    of = f"a stratified sample of {r['test_images']} of {sample['of']} images" if sample else f"{r['test_images']} images"
    tta_note = ", flip TTA" if r.get("tta") else ""
    click.echo(f"{label}: {r['test_accuracy']:.2%}  macro F1: {r['macro_f1']:.4f}  loss: {r['test_loss']:.4f}  ({of}{tta_note})")
    smoothing = origin.get("label_smoothing")
    if smoothing:
        click.echo(f"(loss: plain cross-entropy; training's val_loss included label smoothing {smoothing:g}, "
                   "so it reads higher for the same predictions)")
    click.echo(f"Report, confusion matrix and figures in {r['output_dir']}")


@click.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--plot", type=click.Path(), default=None,
              help="Write a figure of the images (the first 64) titled with their predictions.")
@click.option("--resize", type=click.Choice(["squash", "crop"]), default=None,
              help="squash the whole image to the model's square, or crop its centre after scaling the shorter side "
                   "[the rule the model was trained with].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def predict(model, images, top_k, plot, resize, as_json):
    """Top-k classes for each IMAGE (files or folders) with MODEL.

    Images are decoded as training decoded them. A file that cannot be read
    is named on stderr and the others are still predicted; the exit status is
    then 3 (1 when nothing could be predicted).

    MODEL is a .keras file, or what `kerasalex export` wrote: a SavedModel
    folder, a .tflite or an .onnx file (run in TensorFlow, the LiteRT
    interpreter or onnxruntime).

    \b
    Examples:
      kerasalex predict saved_models/run.keras cat.jpg dog.png --top-k 3 --plot preds.png
      kerasalex predict saved_models/run.tflite cat.jpg
    """
    import sys

    from kerasalex.data import describe_left_out
    from kerasalex.evaluation import EXIT_SOME_SKIPPED
    from kerasalex.evaluation import predict as run_predict

    with user_errors():
        result = run_predict(model, images, top_k, plot, resize=resize, progress=not as_json)
    out = result["predictions"]
    if result["left_out"]:
        click.echo(describe_left_out(result["left_out"]), err=True)
    for s in result["skipped"]:
        click.echo(f"skipped {s['reason']}", err=True)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        for r in out:
            tops = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"])
            click.echo(f"{r['image']}: {tops}")
        if plot:
            click.echo(f"Figure: {plot}")
    if result["skipped"]:
        click.echo(f"{len(result['skipped'])} of {len(result['skipped']) + len(out)} image file(s) could not be read "
                   f"(named above); exit status {EXIT_SOME_SKIPPED}", err=True)
        sys.exit(EXIT_SOME_SKIPPED)


@click.command("models")
def models_cmd():
    """List the architectures in the model table."""
    from kerasalex.models import ARCHITECTURES

    for a in ARCHITECTURES.values():
        click.echo(f"{a.name:15s} {a.description}")
