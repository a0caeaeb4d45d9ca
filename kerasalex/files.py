"""Kill-safe file writing and checked model loading.

Every file kerasalex writes goes to a temporary file in the same folder, is
flushed to disk and then renamed over the target, so a kill at any moment
leaves either the old file or the new one, never a torn one.

This module imports nothing from kerasalex (``tests/test_registry.py`` checks
it): what model files may hold beyond stock Keras, and the metadata a model
carries, come from the model table as a :class:`ModelFileRules`, which
:mod:`kerasalex.models` installs with :func:`set_model_file_rules` when it is
imported. Without it the checked loader accepts stock Keras layers only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

TEMP_MARKER = ".tmp-"
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def error_line(exc: BaseException | str, limit: int = 240) -> str:
    """An error's message as one line for a user: its first non-empty line,
    never cut inside a word. A line longer than ``limit`` keeps its start and
    its end (where "[Errno -2] Name or service not known" and other causes
    are), joined by " ... ".

    Args:
        exc: the exception (its type name stands in for an empty message) or a text.
        limit: the most characters to return (at least 20).

    Example:
        >>> error_line(Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/"
        ...     "keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- "
        ...     "[Errno -2] Name or service not known"), 80)
        'URL fetch failure on ... None -- [Errno -2] Name or service not known'
    """
    text = str(exc).strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if not line:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    limit = max(20, int(limit))
    if len(line) <= limit:
        return line
    words = line.split(" ")
    budget = limit - len(" ... ")
    tail: list[str] = []
    used = 0
    for w in reversed(words):  # the end holds the cause: give it two thirds
        if used + len(w) + 1 > budget * 2 // 3:
            break
        tail.insert(0, w)
        used += len(w) + 1
    head: list[str] = []
    for w in words[: len(words) - len(tail)]:
        if used + len(w) + 1 > budget:
            break
        head.append(w)
        used += len(w) + 1
    if not tail:  # one enormous word: cut it, marked
        return line[: limit - 3] + "..."
    return " ".join(head) + " ... " + " ".join(tail) if head else "... " + " ".join(tail)


class DiskFullError(OSError):
    """Raised when a write fails because the disk (or a file size limit) is full."""


class ModelFileError(ValueError):
    """A model file that cannot or must not be loaded."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full_errno(exc: BaseException) -> int | None:
    """ENOSPC / EFBIG / EDQUOT anywhere in ``exc``'s chain (h5py and Keras wrap
    the OSError of the failed write in their own exceptions), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _raise_disk_full(exc: BaseException, path: Path) -> None:
    code = _disk_full_errno(exc)
    if code is not None:
        raise DiskFullError(
            code,
            f"disk full while writing {path} ({os.strerror(code)}); "
            "the previous file, if any, is unchanged",
        ) from exc


@contextlib.contextmanager
def _folder_lock(folder: Path, exclusive: bool) -> Iterator[bool]:
    """An advisory ``flock`` on ``folder``: writers hold it shared while their
    temporary file exists, :func:`remove_stale_temps` takes it exclusively, so a
    sweep never deletes the temporary file of a live writer (in any process or
    container on this host). Yields False when an exclusive lock is not free
    right now; True when held, or when the file system has no locks."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (not POSIX)
        yield True
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            yield False
            return
        except OSError:  # no flock on this file system
            pass
        yield True
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it over ``path`` on success.

    Args:
        path: the final file.
        suffix: extra suffix for the temporary name (Keras insists on
            ``.keras`` / ``.weights.h5`` endings).

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temporary files of writers killed earlier go first, so none accumulate.
    remove_stale_temps(path.parent)
    with _folder_lock(path.parent, exclusive=False):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            yield tmp_path
            _fsync_file(tmp_path)
            os.replace(tmp_path, path)
            _fsync_dir(path.parent)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            if isinstance(exc, Exception):
                _raise_disk_full(exc, path)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@dataclasses.dataclass(frozen=True)
class ModelFileRules:
    """What kerasalex's model table adds to this module's model files.

    Attributes:
        layers: layer class names a file may hold beyond :data:`STOCK_LAYERS`
            (every architecture's, the training front's, legacy ones).
        ops: Keras operation classes (``keras.src.ops``) a functional graph may call.
        classes: kerasalex's own serializable classes (registered as
            ``"kerasalex>Name"``): class name -> the module it must name.
        register_classes: imports the modules that register ``classes`` with Keras.
        describe: ``model -> dict``, the metadata a model carries itself
            (class names, image shape); :func:`save_model` writes it first.
        attach: ``(model, class_names, image_shape)``: gives a loaded model
            what its file's metadata records (either may be None).
        save_weights: ``(model, path)``: writes a ``.weights.h5``
            (default ``model.save_weights``).
    """

    layers: frozenset[str] = frozenset()
    ops: frozenset[str] = frozenset()
    classes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    register_classes: Callable[[], None] | None = None
    describe: Callable[[Any], dict] | None = None
    attach: Callable[[Any, list | None, list | None], None] | None = None
    save_weights: Callable[[Any, str], None] | None = None


_rules_source: Callable[[], ModelFileRules] = ModelFileRules


def set_model_file_rules(source: Callable[[], ModelFileRules]) -> None:
    """Installs the function that gives the current :class:`ModelFileRules`
    (called on every save and load, so rows added to the model table later
    count). :mod:`kerasalex.models` calls it on import."""
    global _rules_source
    _rules_source = source


def model_file_rules() -> ModelFileRules:
    """The :class:`ModelFileRules` in force (stock Keras only when none was installed)."""
    return _rules_source()


def float32_policies(node: Any) -> Any:
    """A serialized Keras config with every mixed-precision dtype policy
    (``mixed_bfloat16``, ``mixed_float16``) replaced by ``float32``. The
    variables of a mixed-precision model are float32 already, so its weights
    load unchanged into the float32 model."""
    if isinstance(node, list):
        return [float32_policies(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: float32_policies(v) for k, v in node.items()}
    if out.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(out.get("config"), dict):
        name = out["config"].get("name")
        if isinstance(name, str) and name.startswith("mixed_"):
            out["config"] = {**out["config"], "name": "float32"}
    return out


def _write_keras_archive(model, target: Path, metadata: dict | None = None, float32: bool = False) -> None:
    """Writes ``model`` as a ``.keras`` zip: config.json, metadata.json,
    model.weights.h5, the layout ``keras.saving.load_model`` reads; when
    ``metadata`` is given, it goes into metadata.json under ``"kerasalex"``
    (beside Keras's own ``keras_version`` and ``date_saved``; Keras does not
    read the member when loading). Not a fourth member: Keras extracts every
    member of an archive with more than three (weights included) to a
    temporary folder on each load, for assets.

    Keras's own ``model.save`` builds the weights file in an in-memory buffer
    first (for the scratch AlexNet with its SGD momentum: +240 MB of peak RSS);
    here the weights go to a temporary ``.weights.h5`` on disk (written by
    :attr:`ModelFileRules.save_weights`) and are copied into the archive from
    there.
    """
    import datetime
    import zipfile

    import keras

    config = keras.saving.serialize_keras_object(model)
    if float32:
        config = float32_policies(config)
    keras_metadata = {"keras_version": keras.__version__, "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    if metadata is not None:
        keras_metadata[METADATA_KEY] = metadata
    fd, weights = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARKER}", suffix=".weights.h5", dir=target.parent)
    os.close(fd)
    save_weights = model_file_rules().save_weights
    try:
        os.unlink(weights)
        if save_weights is not None:
            save_weights(model, weights)
        else:
            model.save_weights(weights)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr("metadata.json", json.dumps(keras_metadata, default=_json_default, indent=1))
            zf.writestr("config.json", json.dumps(config))
            zf.write(weights, "model.weights.h5")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(weights)


def save_model(model, path: str | os.PathLike, metadata: dict | None = None, float32: bool = False) -> Path:
    """Saves a Keras model (``.keras`` or ``.weights.h5``) atomically: a
    temporary file in the same folder, flushed, then renamed over ``path``.

    Args:
        model: the Keras model.
        path: ``*.keras`` or ``*.weights.h5``.
        metadata: a JSON-serializable dict stored under ``"kerasalex"`` in the
            ``.keras`` archive's metadata.json (see :func:`read_model_metadata`), on top of
            the class names and image shape a kerasalex model carries
            (:attr:`ModelFileRules.describe`); ignored for ``.weights.h5``.
        float32: write the layers' dtype policies as float32 (``.keras``):
            for the inference files a user gets, which then load and compute
            the same on any device, ``model(x)`` and ``model.predict(x)``
            alike (under a bfloat16 policy eager calls round every op's output
            to bfloat16 while ``predict``'s fused graph does not); mixed
            precision is a training setting. The weights are unchanged.
    """
    path = Path(path)
    if path.name.endswith(".weights.h5"):
        with atomic_path(path, suffix=".weights.h5") as tmp:
            tmp.unlink()
            model.save_weights(tmp)
    elif path.suffix == ".keras":
        describe = model_file_rules().describe
        own = describe(model) if describe is not None else {}
        if own:
            metadata = {**own, **(metadata or {})}
        with atomic_path(path, suffix=".keras") as tmp:
            _write_keras_archive(model, tmp, metadata, float32=float32)
    else:
        raise ValueError(f"model path must end in .keras or .weights.h5. Received: {path}")
    return path


def read_model_metadata(path: str | os.PathLike) -> dict:
    """What kerasalex recorded about the model in a ``.keras`` file: the
    ``"kerasalex"`` entry of its metadata.json (``class_names``,
    ``image_shape``; for a trained model also ``arch``, ``dataset``,
    ``config``), or {} when it has none (a model saved by plain Keras).
    Without kerasalex::

        import json, zipfile
        meta = json.loads(zipfile.ZipFile("model.keras").read("metadata.json"))["kerasalex"]
        meta["class_names"]

    (Files written by earlier kerasalex versions kept it in a ``kerasalex.json`` member;
    that is read too.)

    Raises:
        ModelFileError: the file is not a readable zip, or the entry is not a
            JSON object.
    """
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for member in ("metadata.json", LEGACY_METADATA_MEMBER):
                if member not in names:
                    continue
                info = zf.getinfo(member)
                if info.file_size > MAX_METADATA_BYTES:
                    raise ModelFileError(f"refused to read {path}: {member} is {info.file_size} bytes")
                try:
                    data = json.loads(zf.read(info))
                except ValueError:
                    raise ModelFileError(f"corrupt model file: {path} ({member} is not JSON)") from None
                if member == "metadata.json":
                    if not isinstance(data, dict) or METADATA_KEY not in data:
                        continue
                    data = data[METADATA_KEY]
                if not isinstance(data, dict):
                    raise ModelFileError(f"corrupt model file: {path} (its kerasalex metadata is not a JSON object)")
                return data
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelFileError(f"corrupt or incomplete model file: {path} ({exc})") from None
    return {}


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Publishes ``src`` at ``dst`` atomically (a hard link when possible: our
    files are only ever replaced, never modified in place)."""
    import shutil

    dst = Path(dst)
    with atomic_path(dst, suffix=Path(src).suffix) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like one of :func:`atomic_path`'s temporary files."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARKER in name


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Deletes temporary files left in ``folder`` by killed writers; returns the count.

    Nothing is deleted while a live writer holds a temporary file in
    ``folder`` (see :func:`_folder_lock`); the next write sweeps instead.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    with _folder_lock(folder, exclusive=True) as free:
        if not free:
            return 0
        for p in folder.iterdir():
            if is_temp_file(p) and (p.is_symlink() or p.is_file()):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


# --------------------------------------------------------------------------
# Checked model loading
# --------------------------------------------------------------------------

MAX_MODEL_MEMBERS = 64
MAX_MODEL_BYTES = 8 * 1024**3
MAX_COMPRESSION_RATIO = 200
# A weights dataset may not declare more than this many bytes beyond 1000x
# what it stores (an HDF5 "shape bomb" allocates the declared size).
MAX_DECLARED_BYTES = 1024**3
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# What a .keras archive of ours holds; anything else (assets/ of lookup layers,
# sharded weights, ...) is refused.
# What kerasalex knows about the model (class names, image shape, what it was
# trained on) is metadata.json's "kerasalex" entry (see read_model_metadata);
# earlier versions wrote it as a kerasalex.json member, still accepted.
METADATA_KEY = "kerasalex"
LEGACY_METADATA_MEMBER = "kerasalex.json"
MODEL_MEMBERS = frozenset({"config.json", "metadata.json", "model.weights.h5", LEGACY_METADATA_MEMBER})
MAX_METADATA_BYTES = 64 * 1024**2

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
            refuse(f"class {module}.{class_name} is not one of kerasalex's ({', '.join(sorted(rules.classes))})")
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
