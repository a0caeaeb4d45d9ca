"""The ``.keras`` archive kerasalex writes, and the metadata inside it.

What the model table adds (the classes its files hold, how a model carries
its class names and image shape, the weights writer) comes in as a
:class:`ModelFileRules`; nothing here imports the rest of kerasalex.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from kerasalex.files import TEMP_MARKER, ModelFileError, _json_default, atomic_path

# What kerasalex knows about the model (class names, image shape, what it was
# trained on) is metadata.json's "kerasalex" entry (see read_model_metadata);
# earlier versions wrote it as a kerasalex.json member, still accepted.
METADATA_KEY = "kerasalex"
LEGACY_METADATA_MEMBER = "kerasalex.json"
MAX_METADATA_BYTES = 64 * 1024**2


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

