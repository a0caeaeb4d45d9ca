"""Kill-safe file writing and checked model loading.

Every file kerasalex writes goes to a temporary file in the same folder, is
flushed to disk and then renamed over the target, so a kill at any moment
leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_MARKER = ".tmp-"
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class DiskFullError(OSError):
    """Raised when a write fails because the disk (or a file size limit) is full."""


class ModelFileError(ValueError):
    """A model file that cannot or must not be loaded."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _raise_disk_full(exc: OSError, path: Path) -> None:
    if exc.errno in _DISK_FULL:
        raise DiskFullError(
            exc.errno,
            f"disk full while writing {path} ({os.strerror(exc.errno)}); "
            "the previous file, if any, is unchanged",
        ) from exc


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        _raise_disk_full(exc, path)
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
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


def save_model(model, path: str | os.PathLike) -> Path:
    """Saves a Keras model (``.keras`` or ``.weights.h5``) atomically."""
    path = Path(path)
    if path.name.endswith(".weights.h5"):
        with atomic_path(path, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
    elif path.suffix == ".keras":
        with atomic_path(path, suffix=".keras") as tmp:
            model.save(tmp)
    else:
        raise ValueError(f"model path must end in .keras or .weights.h5. Received: {path}")
    return path


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


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Deletes temporary files left by a killed writer in ``folder``; returns the count."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if p.name.startswith(".") and TEMP_MARKER in p.name and p.is_file():
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

# Layer classes a kerasalex model may contain. Anything else is refused before
# Keras deserializes it: Lambda (arbitrary code), TFSMLayer (loads a
# SavedModel), TorchModuleWrapper (pickle), JaxLayer, and so on.
ALLOWED_LAYERS = frozenset(
    {
        "InputLayer", "Functional", "Sequential", "Model",
        "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "Flatten",
        "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
        "AdaptiveAveragePooling2D", "AdaptiveMaxPooling2D", "ZeroPadding2D",
        "Dropout", "SpatialDropout2D", "BatchNormalization", "LayerNormalization",
        "Activation", "ReLU", "Softmax", "Add", "Concatenate", "Multiply", "Reshape",
        "Rescaling", "Resizing", "CenterCrop", "Normalization",
        "RandomFlip", "RandomTranslation", "RandomCrop", "RandomRotation", "RandomZoom",
        "RandomContrast", "RandomBrightness",
        # kerasalex's own layers (registered under the "kerasalex>" package)
        "ClassNames", "ChannelReverse", "CachedFeatures",
    }
)
REFUSED_LAYERS = frozenset(
    {"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer",
     "StringLookup", "IntegerLookup", "TextVectorization", "Hashing"}
)
_SAFE_MODULE_PREFIXES = ("keras", "kerasalex")


def _check_config(node: Any, path: Path) -> None:
    if isinstance(node, list):
        for item in node:
            _check_config(item, path)
        return
    if not isinstance(node, dict):
        return
    class_name = node.get("class_name")
    if isinstance(class_name, str):
        if class_name in ("__lambda__", "__function__") or class_name in REFUSED_LAYERS:
            raise ModelFileError(f"refused to load {path}: it contains a {class_name!r} object, which can run code")
        module = node.get("module") or ""
        registered = node.get("registered_name") or ""
        if module and not module.split(".")[0] in _SAFE_MODULE_PREFIXES:
            raise ModelFileError(f"refused to load {path}: object {class_name!r} comes from module {module!r}, not Keras")
        is_layer = module.startswith("keras.layers") or module.startswith("keras.src.layers") or registered.startswith("kerasalex>")
        if is_layer and class_name not in ALLOWED_LAYERS:
            raise ModelFileError(
                f"refused to load {path}: layer class {class_name!r} is not on kerasalex's allowlist"
            )
        if module.startswith("keras.activations") or class_name == "function":
            cfg = node.get("config")
            if not isinstance(cfg, str):
                raise ModelFileError(f"refused to load {path}: a serialized function with config {cfg!r}")
    for value in node.values():
        _check_config(value, path)


def check_model_file(path: str | os.PathLike) -> dict:
    """Checks a user-supplied ``.keras`` file before Keras touches it.

    Refuses: missing files, legacy HDF5 full models, anything that is not a
    complete zip archive, zip bombs (member count, total size, compression
    ratio), absolute or ``..`` member names, and configs naming layers outside
    :data:`ALLOWED_LAYERS`. Returns the parsed ``config.json``.

    Raises:
        ModelFileError: with one line naming the file and the problem.
    """
    import zipfile

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"expected a .keras model file, got a folder: {path}")
    if path.suffix.lower() in (".h5", ".hdf5"):
        raise ModelFileError(
            f"refused to load {path}: legacy HDF5 full models are not accepted (they bypass safe mode); "
            "use a .keras file"
        )
    if path.suffix.lower() != ".keras":
        raise ModelFileError(f"expected a .keras model file. Received: {path}")
    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
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
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name.split("/")[0]:
                raise ModelFileError(f"refused to load {path}: unsafe archive member name {name!r}")
            total += info.file_size
            if info.compress_size and info.file_size > 1024 * 1024 and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
                raise ModelFileError(f"refused to load {path}: member {name!r} has a suspicious compression ratio")
        if total > MAX_MODEL_BYTES:
            raise ModelFileError(f"refused to load {path}: {total} bytes uncompressed (limit {MAX_MODEL_BYTES})")
        names = {i.filename for i in infos}
        if "config.json" not in names:
            raise ModelFileError(f"corrupt or incomplete model file: {path} (no config.json inside)")
        try:
            config = json.loads(zf.read("config.json"))
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelFileError(f"corrupt or incomplete model file: {path} (unreadable config.json)") from exc
        if "model.weights.h5" not in names:
            raise ModelFileError(f"corrupt or incomplete model file: {path} (no weights inside)")
        bad = zf.testzip()
        if bad is not None:
            raise ModelFileError(f"corrupt or incomplete model file: {path} (member {bad!r} fails its checksum)")
    _check_config(config, path)
    return config


def load_model(path: str | os.PathLike, compile: bool = False):
    """Loads a ``.keras`` model after :func:`check_model_file`, with safe mode on.

    Raises:
        ModelFileError: the file is missing, corrupt, or refused.
    """
    import keras

    import kerasalex.preprocessing  # noqa: F401  (registers custom layers)

    check_model_file(path)
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except ModelFileError:
        raise
    except Exception as exc:  # Keras raises many types for broken files
        raise ModelFileError(
            f"corrupt or incomplete model file: {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
