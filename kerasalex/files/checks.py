"""Checks of a user-supplied ``.keras`` file, and the checked loader.

:func:`check_model_file` refuses hostile or broken archives before Keras
reads them; :func:`load_model` (what ``evaluate``, ``predict`` and
``--resume`` use) checks, then loads with safe mode on. What may be in a file
beyond the stock Keras layers here comes from the model table's
:class:`kerasalex.files.ModelFileRules`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kerasalex.files import ModelFileError, error_line
from kerasalex.files.archive import LEGACY_METADATA_MEMBER, ModelFileRules, model_file_rules, read_model_metadata

MAX_MODEL_MEMBERS = 64
MAX_MODEL_BYTES = 8 * 1024**3
MAX_COMPRESSION_RATIO = 200
# A weights dataset may not declare more than this many bytes beyond 1000x
# what it stores (an HDF5 "shape bomb" allocates the declared size).
MAX_DECLARED_BYTES = 1024**3
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# What a .keras archive of ours holds; anything else (assets/ of lookup layers,
# sharded weights, ...) is refused.
MODEL_MEMBERS = frozenset({"config.json", "metadata.json", "model.weights.h5", LEGACY_METADATA_MEMBER})

# Layer classes a model file may contain: these stock layers, which hold only
# weights (no code, no files), for simple models made elsewhere (evaluated or
# predicted with kerasalex), and what the model table adds
# (ModelFileRules.layers: every architecture's Architecture.layers, the
# training front's, the legacy ones). Anything else is refused before Keras
# deserializes it: Lambda (arbitrary code), TFSMLayer (loads a SavedModel),
# TorchModuleWrapper (pickle), JaxLayer, lookup layers (read a vocabulary file
# or URL), and so on.
STOCK_LAYERS = frozenset(
    {
        "Sequential", "Model", "DepthwiseConv2D", "SeparableConv2D", "AveragePooling2D",
        "GlobalAveragePooling2D", "GlobalMaxPooling2D", "AdaptiveMaxPooling2D", "SpatialDropout2D",
        "BatchNormalization", "LayerNormalization", "Activation", "Softmax", "Add", "Concatenate",
        "Multiply", "Reshape",
        "Normalization",  # the normalize layer of files written by earlier versions
    }
)
_OPS_MODULES = ("keras.src.ops",)
REFUSED_LAYERS = frozenset(
    {"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer",
     "StringLookup", "IntegerLookup", "TextVectorization", "Hashing"}
)
# Functions a config may name (activations, losses, metrics); any other
# function reference (keras.utils.get_file, keras.config.enable_unsafe_deserialization, ...)
# is refused.
ALLOWED_FUNCTIONS = frozenset(
    {
        "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "mish", "sigmoid",
        "hard_sigmoid", "hard_silu", "hard_swish", "tanh", "softmax", "log_softmax", "softplus",
        "softsign", "exponential", "linear",
        "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy",
        "mean_squared_error", "mean_absolute_error", "categorical_accuracy",
        "sparse_categorical_accuracy", "binary_accuracy", "accuracy",
        "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy",
    }
)
# Keras's markers for values inside a config (tensors, tuples, arrays).
_VALUE_MARKERS = frozenset(
    {"__keras_tensor__", "__tensor__", "__numpy__", "__tuple__", "__bytes__", "__typespec__", "__slice__", "__ellipsis__"}
)
_LAYER_MODULES = ("keras.layers", "keras.src.layers", "keras.models", "keras.src.models")
# Modules of plain value objects (initializers, optimizers, losses, dtype policies).
_VALUE_MODULES = (
    "keras.initializers", "keras.src.initializers", "keras.regularizers", "keras.src.regularizers",
    "keras.constraints", "keras.src.constraints", "keras.optimizers", "keras.src.optimizers",
    "keras.losses", "keras.src.losses", "keras.metrics", "keras.src.metrics",
    "keras.dtype_policies", "keras.src.dtype_policies",
)
_FUNCTION_MODULES = (
    "keras.activations", "keras.src.activations", "keras.losses", "keras.src.losses",
    "keras.metrics", "keras.src.metrics",
)
_KERAS_TOP_LEVEL = frozenset({"DTypePolicy", "FloatDTypePolicy"})


def _in_modules(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def allowed_layers(rules: ModelFileRules | None = None) -> frozenset[str]:
    """The layer classes a checked model file may hold: :data:`STOCK_LAYERS`
    and those of ``rules`` (default: :func:`model_file_rules`)."""
    rules = rules or model_file_rules()
    return STOCK_LAYERS | rules.layers


def _check_object(node: dict, path: Path, rules: ModelFileRules, layers: frozenset[str]) -> None:
    """Checks one serialized object (a dict with ``class_name``) of a config
    against ``rules`` (``layers``: :func:`allowed_layers` of them)."""

    def refuse(why: str):
        raise ModelFileError(f"refused to load {path}: {why}")

    class_name = node["class_name"]
    module = node.get("module")
    registered = node.get("registered_name")
    config = node.get("config")
    if module is not None and not isinstance(module, str):
        refuse(f"object {class_name!r} has a module of type {type(module).__name__}")
    if class_name in ("__lambda__", "__function__") or class_name in REFUSED_LAYERS or registered in REFUSED_LAYERS:
        refuse(f"it contains a {class_name!r} object, which can run code or read other files")
    if class_name == "function":
        if not (isinstance(config, str) and config in ALLOWED_FUNCTIONS and module and _in_modules(module, _FUNCTION_MODULES)):
            refuse(f"it references the function {module}.{config}, which is not an allowed activation, loss or metric")
        if registered not in (None, config):
            refuse(f"function {config!r} is registered as {registered!r}")
        return
    if class_name in _VALUE_MARKERS:
        if module is not None or registered is not None:
            refuse(f"value marker {class_name!r} names module {module!r}")
        return
    if not module:  # legacy configs name layers without a module
        if class_name not in layers:
            refuse(f"class {class_name!r} (no module) is not on kerasalex's layer allowlist")
    elif _in_modules(module, ("kerasalex",)):
        if rules.classes.get(class_name) != module:
            ours = sorted(n for n, m in rules.classes.items() if m == module)
            if module.endswith(".optimizers"):
                refuse(f"optimizer class {class_name!r} is not one of kerasalex's ({', '.join(ours)})")
            refuse(f"layer class {class_name!r} is not on kerasalex's allowlist")
    elif _in_modules(module, _LAYER_MODULES):
        if class_name not in layers:
            refuse(f"layer class {class_name!r} is not on kerasalex's allowlist")
    elif _in_modules(module, _OPS_MODULES):
        if class_name not in rules.ops:
            refuse(f"op {module}.{class_name} is not on kerasalex's allowlist ({', '.join(sorted(rules.ops))})")
    elif _in_modules(module, _VALUE_MODULES):
        if not (class_name[:1].isupper() and class_name.isidentifier()):
            refuse(f"{module}.{class_name} is not a class")
    elif module == "keras":
        if class_name not in _KERAS_TOP_LEVEL | layers:
            refuse(f"object keras.{class_name} is not allowed")
    else:
        refuse(f"object {class_name!r} comes from module {module!r}, which is not allowed")
    if registered not in (None, class_name, f"kerasalex>{class_name}"):
        refuse(f"object {class_name!r} is registered as {registered!r}")
    if isinstance(config, dict):
        name = config.get("name")
        # Keras builds temporary paths from layer names (CVE-2026-12479).
        if isinstance(name, str) and ("/" in name or "\\" in name or ".." in name or "\x00" in name):
            refuse(f"layer name {name!r} contains a path")


def _check_config(node: Any, path: Path, rules: ModelFileRules, layers: frozenset[str], depth: int = 0) -> None:
    if depth > 100:
        raise ModelFileError(f"refused to load {path}: its config nests deeper than 100 levels")
    if isinstance(node, list):
        for item in node:
            _check_config(item, path, rules, layers, depth + 1)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("class_name"), str):
        _check_object(node, path, rules, layers)
    elif "class_name" in node:
        raise ModelFileError(f"refused to load {path}: a class_name of type {type(node['class_name']).__name__}")
    for value in node.values():
        _check_config(value, path, rules, layers, depth + 1)


def _check_weights_h5(zf, path: Path) -> None:
    """Refuses weights that read other files (external or soft links, external
    storage, virtual datasets: CVE-2026-1669) or declare far more data than they
    store (shape bombs)."""
    import h5py

    def refuse(why: str):
        raise ModelFileError(f"refused to load {path}: its weights {why}")

    with zf.open("model.weights.h5") as raw:
        try:
            h5 = h5py.File(raw, "r")
        except Exception as exc:  # h5py raises OSError / ValueError for damaged files
            raise ModelFileError(f"corrupt or incomplete model file: {path} (unreadable model.weights.h5)") from exc
        with h5:
            # h5py cannot raise through its visit callbacks: collect, stop, raise after.
            problems: list[str] = []

            def on_link(name, link):
                if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
                    problems.append(f"hold a {type(link).__name__} at {name!r}, which points outside the weights")
                    return True
                return None

            h5.visititems_links(on_link)
            if problems:
                refuse(problems[0])

            def on_object(name, obj):
                if not isinstance(obj, h5py.Dataset):
                    return None
                if obj.external:
                    problems.append(f"dataset {name!r} keeps its data in another file ({obj.external[0][0]!r})")
                elif obj.is_virtual:
                    problems.append(f"dataset {name!r} is a virtual dataset mapped from other files")
                elif obj.dtype.kind not in "fiub":
                    problems.append(f"dataset {name!r} has dtype {obj.dtype}, not numbers")
                else:
                    declared, stored = int(obj.size) * obj.dtype.itemsize, obj.id.get_storage_size()
                    if declared > MAX_DECLARED_BYTES and declared > 1000 * max(1, stored):
                        problems.append(f"dataset {name!r} declares {declared} bytes but stores {stored}")
                return True if problems else None

            h5.visititems(on_object)
            if problems:
                refuse(problems[0])


def check_model_file(path: str | os.PathLike, rules: ModelFileRules | None = None) -> dict:
    """Checks a user-supplied ``.keras`` file before Keras touches it.

    Refuses: missing files, legacy HDF5 full models (``.h5``/``.hdf5``, or an
    HDF5 file under another name), anything that is not a complete zip
    archive, zip bombs (member count, total size, compression ratio), absolute,
    ``..`` or unexpected member names, configs with objects outside the
    allowlists (:func:`allowed_layers`, :data:`ALLOWED_FUNCTIONS`, Keras value
    modules, ``rules``' ops and classes) or layer names that are paths, and
    weights with links, external or virtual datasets or shape bombs. Returns
    the parsed ``config.json``.

    Args:
        path: the ``.keras`` file.
        rules: what the file may hold beyond stock Keras (default:
            :func:`model_file_rules`, the model table's).

    Raises:
        ModelFileError: with one line naming the file and the problem.
    """
    import zipfile

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"expected a .keras model file, got a folder: {path}")
    legacy = (
        f"refused to load {path}: legacy HDF5 full models are not accepted (Keras ignores safe mode for them); "
        "use a .keras file"
    )
    if path.suffix.lower() in (".h5", ".hdf5"):
        raise ModelFileError(legacy)
    if path.suffix.lower() != ".keras":
        raise ModelFileError(f"expected a .keras model file. Received: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            raise ModelFileError(legacy)
    if size > MAX_MODEL_BYTES:
        raise ModelFileError(f"refused to load {path}: {size} bytes (limit {MAX_MODEL_BYTES})")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelFileError(
            f"corrupt or incomplete model file: {path} ({size} bytes; not a complete .keras archive)"
        ) from exc
    with zf:
        _check_members(zf, path, size)
        try:
            config = json.loads(zf.read("config.json"))
        except (ValueError, zipfile.BadZipFile, OSError, EOFError, RecursionError) as exc:
            raise ModelFileError(f"corrupt or incomplete model file: {path} (unreadable config.json)") from exc
        if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
            raise ModelFileError(f"corrupt or incomplete model file: {path} (config.json is not a model config)")
        rules = rules or model_file_rules()
        _check_config(config, path, rules, allowed_layers(rules))
        _check_weights_h5(zf, path)
    return config


def _check_members(zf, path: Path, size: int) -> None:
    """Refuses archives with too many, too large, oddly named, unexpected or
    missing members, or a member that fails its checksum."""
    import zipfile

    infos = zf.infolist()
    if len(infos) > MAX_MODEL_MEMBERS:
        raise ModelFileError(f"refused to load {path}: {len(infos)} archive members (limit {MAX_MODEL_MEMBERS})")
    total = 0
    for info in infos:
        name = info.filename
        if (
            name.startswith(("/", "\\")) or "\\" in name or "\x00" in name
            or ".." in name.split("/") or ":" in name.split("/")[0]
        ):
            raise ModelFileError(f"refused to load {path}: unsafe archive member name {name!r}")
        if name not in MODEL_MEMBERS:
            raise ModelFileError(
                f"refused to load {path}: unexpected archive member {name!r} "
                f"(a kerasalex model holds only {', '.join(sorted(MODEL_MEMBERS))})"
            )
        total += info.file_size
        if info.file_size > 1024 * 1024 and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size):
            raise ModelFileError(f"refused to load {path}: member {name!r} has a suspicious compression ratio")
    if total > MAX_MODEL_BYTES:
        raise ModelFileError(f"refused to load {path}: {total} bytes uncompressed (limit {MAX_MODEL_BYTES})")
    names = {i.filename for i in infos}
    if "config.json" not in names:
        raise ModelFileError(f"corrupt or incomplete model file: {path} (no config.json inside)")
    if "model.weights.h5" not in names:
        raise ModelFileError(f"corrupt or incomplete model file: {path} (no weights inside)")
    try:
        bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelFileError(f"corrupt or incomplete model file: {path} ({size} bytes; {exc})") from exc
    if bad is not None:
        raise ModelFileError(f"corrupt or incomplete model file: {path} (member {bad!r} fails its checksum)")


def load_model(path: str | os.PathLike, compile: bool = False, rules: ModelFileRules | None = None):
    """Loads a ``.keras`` model after :func:`check_model_file`, with safe mode
    on, and attaches the class names and image shape kerasalex recorded in it
    (:func:`read_model_metadata`, through :attr:`ModelFileRules.attach`; see
    :func:`kerasalex.models.get_class_names`).

    Args:
        path: the ``.keras`` file.
        compile: restore the optimizer and compile (resume states).
        rules: default :func:`model_file_rules` (the model table's).

    Models written by kerasalex load with plain ``keras.saving.load_model``
    as well; this is the loader for files from elsewhere. Files written
    by earlier kerasalex versions (with its legacy layers) load here too.

    Raises:
        ModelFileError: the file is missing, corrupt, or refused.
    """
    import keras

    rules = rules or model_file_rules()
    if rules.register_classes is not None:
        rules.register_classes()
    check_model_file(path, rules)
    meta = read_model_metadata(path)
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except ModelFileError:
        raise
    except Exception as exc:  # Keras raises many types for broken files
        raise ModelFileError(
            f"corrupt or incomplete model file: {path} ({type(exc).__name__}: {error_line(exc)})"
        ) from exc
    names, shape = meta.get("class_names"), meta.get("image_shape")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        outputs = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
        if outputs is not None and len(names) != outputs:
            raise ModelFileError(
                f"corrupt model file: {path} (its metadata names {len(names)} classes, the model has {outputs} outputs)"
            )
    else:
        names = None
    if not (isinstance(shape, list) and len(shape) == 3 and all(d is None or isinstance(d, int) for d in shape)):
        shape = None
    if rules.attach is not None and (names is not None or shape is not None):
        rules.attach(model, names, shape)
    return model
