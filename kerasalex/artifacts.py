"""Exported artifacts: the formats (SavedModel, LiteRT ``.tflite``, ONNX),
the packages each needs, where an artifact's ``kerasalex.json`` lives, and
:class:`Artifact`, an artifact loaded in its own runtime (TensorFlow, the
LiteRT interpreter, onnxruntime). :mod:`kerasalex.export` writes them."""

from __future__ import annotations

import importlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

FORMATS = ("saved_model", "litert", "onnx")
KERAS_FORMAT = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}
RUNTIME = {"saved_model": "TensorFlow", "litert": "the LiteRT interpreter", "onnx": "onnxruntime"}
# Python modules each format needs beyond TensorFlow (the converter and the runtime).
REQUIRED_MODULES = {
    "saved_model": (),
    "litert": ("ai_edge_litert",),
    "onnx": ("tf2onnx", "onnx", "onnxruntime"),
}
INSTALL_HINT = 'pip install "kerasalex[export]" (in a clone: pip install -e ".[export]")'
INFO_NAME = "kerasalex.json"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH = 64
_RANDOM_OP = re.compile(r"random|multinomial", re.IGNORECASE)


class ExportError(ValueError):
    """The export cannot be made or failed its check (one line, for the CLI)."""


# --------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------


def missing_modules(fmt: str) -> list[str]:
    """The Python modules ``fmt`` needs that cannot be imported here."""
    missing = []
    for name in REQUIRED_MODULES[fmt]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def check_packages(fmt: str) -> None:
    """Raises one line naming the extra to install when ``fmt``'s packages are missing."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    missing = missing_modules(fmt)
    if missing:
        raise ExportError(f"--format {fmt} needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}")



# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


def default_output(model_path: str | os.PathLike, fmt: str, quantize: bool = False) -> Path:
    """``<stem>_saved_model/``, ``<stem>.tflite`` (``<stem>_int8.tflite``) or ``<stem>.onnx`` beside the model."""
    model_path = Path(model_path)
    stem = model_path.name[: -len(".keras")] if model_path.name.endswith(".keras") else model_path.stem
    if fmt == "saved_model":
        return model_path.with_name(f"{stem}_saved_model")
    if fmt == "litert":
        return model_path.with_name(f"{stem}_int8.tflite" if quantize else f"{stem}.tflite")
    return model_path.with_name(f"{stem}.onnx")


def info_path(artifact: str | os.PathLike, fmt: str | None = None) -> Path:
    """Where an artifact's ``kerasalex.json`` lives (see the module docstring)."""
    artifact = Path(artifact)
    fmt = fmt or artifact_format(artifact)
    if fmt == "saved_model":
        return artifact / "assets.extra" / INFO_NAME
    return artifact.with_name(artifact.name + ".json")


def artifact_format(path: str | os.PathLike) -> str:
    """``saved_model`` (a folder with ``saved_model.pb``), ``litert`` (``.tflite``) or ``onnx`` (``.onnx``).

    Raises:
        ExportError: none of these.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ExportError(f"{path} is a folder without saved_model.pb: not a SavedModel")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return "litert"
    if suffix == ".onnx":
        return "onnx"
    raise ExportError(f"{path}: expected a .keras model, a SavedModel folder, a .tflite or an .onnx file")


# --------------------------------------------------------------------------
# Running artifacts
# --------------------------------------------------------------------------


class Artifact:
    """An exported model loaded in its own runtime.

    Attributes:
        path, format: the artifact.
        info: its ``kerasalex.json`` ({} when there is none).
        class_names: from ``info``, else "0".."n-1".
        image_shape: (H, W, 3) the artifact takes.
    """

    def __init__(self, path: str | os.PathLike, fmt: str | None = None, threads: int | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise ExportError(f"model not found: {self.path}")
        self.format = fmt or artifact_format(self.path)
        check_packages(self.format)
        self.threads = threads
        self.info = self._read_info()
        self._run: Callable[[np.ndarray], np.ndarray]
        try:
            shape, classes = getattr(self, f"_open_{self.format}")()
        except ExportError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ExportError(f"{RUNTIME[self.format]} could not load {self.path} ({type(exc).__name__}: {first})") from None
        self.image_shape = tuple(self.info.get("image_shape") or shape)
        names = self.info.get("class_names")
        self.class_names = list(names) if names and len(names) == classes else [str(i) for i in range(classes)]

    def _read_info(self) -> dict:
        p = info_path(self.path, self.format)
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            raise ExportError(f"{p} is not JSON") from None
        return data if isinstance(data, dict) else {}

    # --- runtimes ----------------------------------------------------------

    def _open_saved_model(self):
        import tensorflow as tf

        loaded = tf.saved_model.load(str(self.path))
        fn = loaded.signatures["serving_default"]
        (_, spec), = fn.structured_input_signature[1].items()
        out_key = OUTPUT_NAME if OUTPUT_NAME in fn.structured_outputs else next(iter(fn.structured_outputs))
        self._loaded, self._fn = loaded, fn
        in_key = next(iter(fn.structured_input_signature[1]))
        self._run = lambda x: fn(**{in_key: tf.constant(x)})[out_key].numpy()
        return tuple(spec.shape[1:]), int(fn.structured_outputs[out_key].shape[-1])

    def _open_litert(self):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = it = Interpreter(model_path=str(self.path), num_threads=self.threads)
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        if inp["dtype"] != np.uint8:
            raise ExportError(f"{self.path} takes {np.dtype(inp['dtype']).name} input, not uint8 images")

        def run(x):
            if tuple(it.get_input_details()[0]["shape"]) != x.shape:
                it.resize_tensor_input(inp["index"], list(x.shape))
                it.allocate_tensors()
            it.set_tensor(inp["index"], x)
            it.invoke()
            return np.array(it.get_tensor(out["index"]))

        it.allocate_tensors()  # a Flex (Select TF) op fails here: the stock interpreter has none
        self._run = run
        return tuple(int(d) for d in inp["shape"][1:]), int(out["shape"][-1])

    def _open_onnx(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        self._session = s = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        inp, out = s.get_inputs()[0], s.get_outputs()[0]
        if inp.type != "tensor(uint8)":
            raise ExportError(f"{self.path} takes {inp.type} input, not uint8 images")
        self._run = lambda x: s.run([out.name], {inp.name: x})[0]
        return tuple(int(d) for d in inp.shape[1:]), int(out.shape[-1])

    # --- use -----------------------------------------------------------------

    def predict(self, x: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 images (N, H, W, 3) of :attr:`image_shape`."""
        from kerasalex.preprocessing import check_images

        x = check_images(x)
        if tuple(x.shape[1:3]) != tuple(self.image_shape[:2]):
            raise ExportError(
                f"{self.path} takes {self.image_shape[0]}x{self.image_shape[1]} images; got {x.shape[1]}x{x.shape[2]}"
            )
        out = [np.asarray(self._run(np.ascontiguousarray(x[i : i + batch_size])), np.float32)
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def ops(self) -> list[str]:
        """The op types in the artifact's graph (for the random-op check)."""
        return graph_ops(self.path, self.format)


def graph_ops(path: str | os.PathLike, fmt: str | None = None) -> list[str]:
    """The op types of an artifact: TensorFlow ops of the SavedModel's serving
    graph (with its functions), LiteRT builtin op names, ONNX op types."""
    path = Path(path)
    fmt = fmt or artifact_format(path)
    if fmt == "saved_model":
        import tensorflow as tf

        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        gd = fn.graph.as_graph_def()
        return sorted({n.op for n in gd.node} | {n.op for f in gd.library.function for n in f.node_def})
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        return sorted({d["op_name"] for d in it._get_ops_details()})
    import onnx

    return sorted({n.op_type for n in onnx.load(str(path)).graph.node})


def random_ops(path: str | os.PathLike, fmt: str | None = None) -> list[str]:
    """The random ops in an artifact's graph (there must be none)."""
    return [op for op in graph_ops(path, fmt) if _RANDOM_OP.search(op)]
