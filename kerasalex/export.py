"""Export a ``.keras`` model to a TensorFlow SavedModel, LiteRT (``.tflite``)
or ONNX, with Keras's own ``model.export``, and check the artifact against
the original in the artifact's own runtime before keeping it.

What is exported: the model's inference graph (``training=False``) followed
by a stock ``Softmax``, computed in float32, so the artifact takes a batch of
uint8 RGB images ``(N, H, W, 3)`` named ``image`` (H, W: the size the model
was trained at) and returns ``probabilities`` ``(N, classes)``. Class names
and the input contract travel with it, in ``kerasalex.json``:

* SavedModel: ``PATH/assets.extra/kerasalex.json`` (the SavedModel folder's
  place for files that are not part of the graph; TF Serving ignores it);
* LiteRT, ONNX: ``PATH.json`` beside the file.

The check runs a batch (``--dataset`` images, or seeded random images) through
the ``.keras`` model (in float32) and through the artifact, loaded in
TensorFlow, the LiteRT interpreter or onnxruntime; beyond
:data:`MAX_PROB_DIFF` (float) or below :data:`MIN_QUANTIZED_AGREEMENT`
(``--quantize``), or with random ops in the graph, nothing is written.

Example:
    >>> export_model("saved_models/digits.keras", "litert")["max_prob_diff"]
    2.9e-07
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kerasalex import files
from kerasalex.artifacts import (  # noqa: F401  (importable from here)
    _RANDOM_OP,
    BATCH,
    FORMATS,
    INFO_NAME,
    INPUT_NAME,
    INSTALL_HINT,
    KERAS_FORMAT,
    OUTPUT_NAME,
    REQUIRED_MODULES,
    RUNTIME,
    Artifact,
    ExportError,
    artifact_format,
    check_packages,
    default_output,
    graph_ops,
    info_path,
    missing_modules,
    random_ops,
)

# A float32 artifact must match the .keras model (run in float32) to this
# max |probability difference| on the check batch. Measured on the three
# architectures: at most ~1e-6 (see benchmarks/bench_export.py).
MAX_PROB_DIFF = 1e-4
# A dynamic-range int8 LiteRT file must agree with the .keras model on this
# share of top-1 classes.
MIN_QUANTIZED_AGREEMENT = 0.95
CHECK_IMAGES = 64


def _check_output(model_path: Path, output: Path, fmt: str, overwrite: bool) -> None:
    if fmt == "litert" and output.suffix.lower() != ".tflite":
        raise ExportError(f"a LiteRT file must end in .tflite. Received: -o {output}")
    if fmt == "onnx" and output.suffix.lower() != ".onnx":
        raise ExportError(f"an ONNX file must end in .onnx. Received: -o {output}")
    if fmt == "saved_model" and output.suffix.lower() in (".keras", ".tflite", ".onnx", ".json"):
        raise ExportError(f"a SavedModel is a folder; -o names it (not a {output.suffix} file). Received: -o {output}")
    if output.resolve() == model_path.resolve():
        raise ExportError(f"-o {output} is the model itself")
    taken = [p for p in (output, info_path(output, fmt)) if p.exists() or p.is_symlink()]
    if taken and not overwrite:
        raise ExportError(f"{taken[0]} already exists; pass --overwrite to replace it")
    if output.is_dir() and fmt != "saved_model":
        raise ExportError(f"{output} is a folder; refused to replace it with a {fmt} file")
    if output.exists() and output.is_file() and fmt == "saved_model":
        raise ExportError(f"{output} is a file; refused to replace it with a SavedModel folder")
    if fmt == "saved_model" and output.is_dir() and any(output.iterdir()) and not (output / "saved_model.pb").is_file():
        raise ExportError(f"{output} is a folder that is not a SavedModel; refused to replace it")


# --------------------------------------------------------------------------
# The graph that is exported
# --------------------------------------------------------------------------


def float32_model(model):
    """``model`` computing in float32 (a copy with the same weights when its
    layers have a mixed-precision policy, as files written by earlier kerasalex versions from a
    mixed-precision run; the weights are float32 either way). ONNX export
    requires it; LiteRT and SavedModel get the same arithmetic."""
    import keras

    if all(getattr(layer.dtype_policy, "name", "float32") in ("float32", None) for layer in model._flatten_layers()):
        return model
    config = files.float32_policies(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy


def export_graph(model, image_shape: Sequence[int]):
    """The model that is exported: uint8 ``image`` (N, H, W, 3) -> the model
    (called with ``training=False``, so no training-only layer runs) -> a
    float32 ``Softmax`` named ``probabilities``. Stock layers only."""
    import keras

    h, w = int(image_shape[0]), int(image_shape[1])
    inputs = keras.Input(shape=(h, w, 3), dtype="uint8", name=INPUT_NAME)
    logits = model(inputs, training=False)
    probs = keras.layers.Softmax(name=OUTPUT_NAME, dtype="float32")(logits)
    return keras.Model(inputs, {OUTPUT_NAME: probs}, name=f"{model.name}_export")


def _layer_index(model) -> dict[str, str]:
    """Every (nested) layer name -> its class name."""
    out = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        out.setdefault(layer.name, type(layer).__name__)
    return out


def _layer_of(op_path: str, layers: dict[str, str]) -> str | None:
    """The innermost model layer named in a TensorFlow op path
    (``export/odd_1/resize_odd_1/resize/ResizeBicubic``), Keras's ``_N``
    name-scope suffixes allowed."""
    found = None
    for part in op_path.split("/"):
        for name in (part, re.sub(r"_\d+$", "", part)):
            if name in layers:
                found = name
                break
    return found


def _cannot_express(fmt: str, model, op: str, op_path: str) -> ExportError:
    layers = _layer_index(model)
    layer = _layer_of(op_path, layers)
    where = f"layer {layer!r} ({layers[layer]})" if layer else "a layer of the model"
    return ExportError(f"{fmt} cannot express {where}: its op {op} has no {fmt} equivalent; nothing written")


def _litert_error(exc: Exception, model) -> ExportError:
    text = str(exc)
    m = re.search(r'fused\["(\w+):", "([^"@]+)', text)
    op = re.search(r"'tf\.(\w+)' op is neither", text)
    if m or op:
        return _cannot_express("litert", model, (op.group(1) if op else m.group(1)), m.group(2) if m else "")
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
    return ExportError(f"the LiteRT converter failed ({type(exc).__name__}: {first}); nothing written")


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """Keras's and tf2onnx's chatter (tf2onnx logs the unsupported ops it meets; we raise instead)."""
    import io

    loggers = [logging.getLogger(n) for n in ("tf2onnx", "absl")]
    levels = [l.level for l in loggers]
    for l in loggers:
        l.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for l, level in zip(loggers, levels):
            l.setLevel(level)


def _write(fmt: str, graph, model, target: Path, quantize: bool) -> None:
    """``graph.export`` to ``target`` in ``fmt``; unsupported ops become one-line errors."""
    import keras
    import tensorflow as tf

    spec = [keras.InputSpec(shape=(None, *graph.input.shape[1:]), dtype="uint8", name=INPUT_NAME)]
    kwargs: dict[str, Any] = {}
    if fmt == "litert":
        # The stock interpreter's builtin ops only: no Select TF ops (Flex).
        kwargs["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
        if quantize:
            kwargs["optimizations"] = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8 weights
    try:
        with _quiet():
            graph.export(str(target), format=KERAS_FORMAT[fmt], verbose=False, input_signature=spec, **kwargs)
    except Exception as exc:
        if fmt == "litert":
            raise _litert_error(exc, model) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ExportError(f"{fmt} export failed ({type(exc).__name__}: {first}); nothing written") from None
    if fmt == "onnx":
        _check_onnx_ops(target, model)


def _check_onnx_ops(path: Path, model) -> None:
    """tf2onnx keeps ops it cannot convert as they are (and logs them);
    onnxruntime then refuses the file. Refuse here, naming the layer."""
    import onnx

    graph = onnx.load(str(path)).graph
    for node in graph.node:
        if not onnx.defs.has(node.op_type, node.domain or ""):
            raise _cannot_express("onnx", model, node.op_type, node.name)


# --------------------------------------------------------------------------

# --------------------------------------------------------------------------
# The check batch
# --------------------------------------------------------------------------


def check_batch(image_shape, dataset: str | None = None, data_dir: str | None = None, limit: int | None = None,
                class_names: Sequence[str] | None = None, seed: int = 0, model_path=None):
    """(images, labels or None, where): ``limit`` images of ``dataset``'s test
    split, or :data:`CHECK_IMAGES` seeded random images.

    An image folder without ``test/`` gives the images ``model_path`` held out
    of it, as ``evaluate`` finds them
    (:func:`kerasalex.provenance.held_out_split`: the model's recorded split
    fraction, seed and limit), so the accuracies reported are on images it
    never trained on. When there is no such slice (``--val-split 0``) or it
    is unknown (no record, other data), the check still runs on a 10% slice
    for agreement, but without labels: no accuracy is reported, and
    ``where`` says why."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if dataset is None:
        n = limit or CHECK_IMAGES
        x = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        return x, None, f"{n} random images"
    from kerasalex.compare import evaluation_split
    from kerasalex.data import carve_validation, load_data
    from kerasalex.evaluation import check_classes

    data = load_data(dataset, data_dir, image_size=h)
    if class_names is not None:
        check_classes(class_names, data.class_names, "the model", dataset)
    labelled = True
    if evaluation_split(dataset) == "val":
        from kerasalex.provenance import held_out_split

        try:
            if model_path is None:
                raise ValueError("no model file to read its held-out slice from")
            split, _ = held_out_split(model_path, data, dataset)
            where = f"{data.name}, the model's held-out validation slice"
        except ValueError as e:
            split, labelled = carve_validation(data, 0.1).val, False
            # the reason alone: evaluate's advice is not for export
            where = f"{data.name}, a 10% slice the model may have trained on (no accuracy reported: {getattr(e, 'reason', e)})"
    else:
        split, where = data.test, f"{data.name} test"
    if split is None or not len(split):
        raise ExportError(f"dataset {dataset} has no test images to check the export on")
    x, y = split.x, split.y
    n = min(len(y), limit or 256)
    if x.shape[1:3] != (h, w):
        from PIL import Image

        x = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in x[:n]])
    return np.ascontiguousarray(x[:n]), (np.asarray(y[:n]) if labelled else None), f"{n} images of {where}"


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Max |probability difference|, top-1 agreement and, with labels, both accuracies."""
    out = {
        "images": int(len(reference)),
        "max_prob_diff": float(np.abs(reference - probs).max()) if len(reference) else 0.0,
        "top1_agreement": float(np.mean(reference.argmax(1) == probs.argmax(1))) if len(reference) else 1.0,
    }
    if labels is not None and len(labels):
        out["keras_accuracy"] = float(np.mean(reference.argmax(1) == labels))
        out["export_accuracy"] = float(np.mean(probs.argmax(1) == labels))
    return out


# --------------------------------------------------------------------------
# The command's work
# --------------------------------------------------------------------------


def _temp_target(output: Path, fmt: str) -> tuple[Path, Path]:
    """A fresh temporary folder beside ``output`` and the artifact path inside it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}{files.TEMP_MARKER}", dir=output.parent))
    name = "artifact" if fmt == "saved_model" else f"artifact{output.suffix}"
    return tmp, tmp / name


def _replace(src: Path, dst: Path) -> None:
    """Moves ``src`` over ``dst`` (a file or a folder), the old one removed after."""
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}{files.TEMP_MARKER}old")
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def export_model(
    model_path: str | os.PathLike,
    fmt: str,
    output: str | os.PathLike | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    quantize: bool = False,
    overwrite: bool = False,
    image_size: int | None = None,
) -> dict:
    """Exports ``model_path`` to ``fmt`` and checks it; see the module docstring.

    Args:
        model_path: a ``.keras`` model (loaded with the checked loader).
        fmt: ``saved_model``, ``litert`` or ``onnx``.
        output: the artifact's path (default: :func:`default_output`).
        dataset, data_dir, limit: the check batch (see :func:`check_batch`);
            with a dataset the accuracies are reported too.
        quantize: LiteRT dynamic-range int8 (weights int8, activations float).
        overwrite: replace an existing artifact.
        image_size: the side the artifact takes, for a model that records none.

    Returns:
        The figures: ``output``, ``format``, ``bytes``, ``max_prob_diff``,
        ``top1_agreement``, (``keras_accuracy``, ``export_accuracy``),
        ``checked_on``, ``tolerance``, ``seconds``.

    Raises:
        ExportError / ModelFileError: one line; nothing is written.
    """
    model_path = Path(model_path)
    output, model, names, shape = _open_for_export(model_path, fmt, output, quantize, overwrite, image_size)
    t0 = time.perf_counter()
    x, labels, where = check_batch(shape, dataset, data_dir, limit, names, model_path=model_path)
    graph = export_graph(float32_model(model), shape)
    # Called batch by batch (the same values as predict in float32, without a retrace per export).
    reference = np.concatenate(
        [np.asarray(graph(x[i : i + BATCH], training=False)[OUTPUT_NAME], np.float32) for i in range(0, len(x), BATCH)]
    )
    tmp, target = _temp_target(output, fmt)
    try:
        _write(fmt, graph, model, target, quantize)
        figures = _check_artifact(target, fmt, x, reference, labels, quantize, model_path, where)
        figures.update(output=str(output), format=fmt, quantized=bool(quantize), checked_on=where,
                       runtime=RUNTIME[fmt])
        info = _info_record(model_path, fmt, names, shape, quantize, figures)
        size = _publish(tmp, target, output, fmt, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["bytes"] = int(size)
    figures["info"] = str(info_path(output, fmt))
    figures["seconds"] = round(time.perf_counter() - t0, 2)
    return figures


def _open_for_export(model_path: Path, fmt: str, output, quantize: bool, overwrite: bool, image_size: int | None):
    """Checks the options, the output path and the packages (before
    TensorFlow is imported), then loads the model.

    Returns:
        ``(output, model, class_names, image_shape)``.
    """
    from kerasalex.models import get_class_names, get_image_shape
    from kerasalex.preprocessing import check_class_names

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if quantize and fmt != "litert":
        raise ExportError(f"--quantize applies to --format litert (dynamic-range int8), not {fmt}")
    output = Path(output) if output else default_output(model_path, fmt, quantize)
    _check_output(model_path, output, fmt, overwrite)
    files.check_model_file(model_path)  # before TensorFlow is imported
    check_packages(fmt)
    model = files.load_model(model_path)
    names = check_class_names(get_class_names(model), int(model.output_shape[-1]))
    shape = tuple(get_image_shape(model))
    if image_size:
        shape = (int(image_size), int(image_size), 3)
    if len(shape) != 3 or shape[0] is None or shape[1] is None:
        raise ExportError(f"{model_path} does not record the image size it takes; pass --image-size N")
    return output, model, names, shape


def _check_artifact(target: Path, fmt: str, x, reference, labels, quantize: bool, model_path: Path, where: str) -> dict:
    """Runs the written artifact in its own runtime on the check batch and
    compares it with the ``.keras`` model's ``reference`` probabilities.

    Returns:
        The figures of :func:`compare` and ``tolerance``.

    Raises:
        ExportError: random ops in the graph, outputs that change between
            calls, or a difference beyond the tolerance.
    """
    art = Artifact(target, fmt)
    randoms = [op for op in art.ops() if _RANDOM_OP.search(op)]
    if randoms:
        raise ExportError(f"the exported graph holds random ops ({', '.join(randoms)}); nothing written")
    probs = art.predict(x)
    figures = compare(reference, probs, labels)
    # The first batch again, as the same call: a batch of another size may take other kernels
    # (oneDNN float32 on an AVX2-only CPU differs in the last bits between 8 and 64 images),
    # so only a same-shape repeat must be bit-identical; random ops make it differ.
    again = art.predict(x[: min(len(x), BATCH)])
    if not np.array_equal(again, probs[: len(again)]):
        raise ExportError(f"the {fmt} artifact gives different outputs for the same images; nothing written")
    if quantize:
        figures["tolerance"] = f"top-1 agreement >= {MIN_QUANTIZED_AGREEMENT:.0%}"
        ok = figures["top1_agreement"] >= MIN_QUANTIZED_AGREEMENT
    else:
        figures["tolerance"] = f"max |probability difference| <= {MAX_PROB_DIFF:g}"
        ok = figures["max_prob_diff"] <= MAX_PROB_DIFF
    if not ok:
        raise ExportError(
            f"the {fmt} artifact disagrees with {model_path} on {where}: max |probability difference| "
            f"{figures['max_prob_diff']:.3g}, top-1 agreement {figures['top1_agreement']:.2%} "
            f"(tolerance: {figures['tolerance']}); nothing written"
        )
    return figures


def _info_record(model_path: Path, fmt: str, names, shape, quantize: bool, figures: dict) -> dict:
    """The artifact's ``kerasalex.json``: classes, input and output contract, decoding rule, the check's figures."""
    return {
        "class_names": names,
        "image_shape": [int(shape[0]), int(shape[1]), 3],
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, int(shape[0]), int(shape[1]), 3],
                  "values": "RGB 0..255"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, len(names)],
                   "values": "class probabilities (softmax)"},
        # How image files are decoded and resized for it (kerasalex predict).
        "preprocessing": files.read_model_metadata(model_path).get("preprocessing"),
        "format": fmt,
        "quantized": bool(quantize),
        "source": model_path.name,
        "check": {k: figures[k] for k in ("images", "max_prob_diff", "top1_agreement", "checked_on", "tolerance")},
    }


def _publish(tmp: Path, target: Path, output: Path, fmt: str, info: dict) -> int:
    """Moves the checked artifact and its ``kerasalex.json`` into place; returns its size in bytes."""
    if fmt == "saved_model":
        (target / "assets.extra").mkdir(exist_ok=True)
        (target / "assets.extra" / INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        _replace(target, output)
        return size
    side = tmp / "info.json"
    side.write_text(json.dumps(info, indent=1) + "\n")
    size = target.stat().st_size
    _replace(target, output)
    _replace(side, info_path(output, fmt))
    return size
