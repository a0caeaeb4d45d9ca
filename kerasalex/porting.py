"""torchvision AlexNet state_dict -> Keras weights.

The port is a table (torch key -> Keras layer and variable) plus two
transposes -- conv ``OIHW -> HWIO`` and linear ``(out, in) -> (in, out)`` --
and one reordering: torch flattens the 256x6x6 feature map channel-first
(CHW) where Keras flattens it channel-last (HWC), so the rows of the first
classifier Linear are permuted. It ends with a numeric comparison against
torch on a random batch and refuses to write a port that disagrees.

Checkpoints are read with ``torch.load(..., weights_only=True)`` only: a
pickle that needs code execution is refused, and there is no fallback.
``torch`` is an optional dependency (``pip install "kerasalex[torch]"``) and
is imported only inside the functions that need it.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = (
    'pip install "kerasalex[torch]" (in a clone: pip install -e ".[torch]"; CPU-only wheel: pip install torch==2.13.0 '
    "--index-url https://download.pytorch.org/whl/cpu)"
)

# torch key -> (Keras layer, variable index: 0 = kernel, 1 = bias).
KEY_TABLE: dict[str, tuple[str, int]] = {}
for _i in (0, 3, 6, 8, 10):
    KEY_TABLE[f"features.{_i}.weight"] = (f"features_{_i}", 0)
    KEY_TABLE[f"features.{_i}.bias"] = (f"features_{_i}", 1)
for _i in (1, 4, 6):
    KEY_TABLE[f"classifier.{_i}.weight"] = (f"classifier_{_i}", 0)
    KEY_TABLE[f"classifier.{_i}.bias"] = (f"classifier_{_i}", 1)
del _i

# torchvision's shapes; None is the number of classes (taken from classifier.6).
EXPECTED_SHAPES: dict[str, tuple] = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 256 * 6 * 6), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (None, 4096), "classifier.6.bias": (None,),
}
FEATURE_SHAPE = (256, 6, 6)  # (C, H, W) of the map classifier.1 reads
CHECK_IMAGE_SIZE = 224
CHECK_BATCH = 2
# The port is refused when max|keras - torch| exceeds this fraction of max|torch logit|.
CHECK_RTOL = 1e-3
DEFAULT_OUTPUT = "saved_models/alexnet_imagenet.weights.h5"
# The 1000 ImageNet-1k class names in the order of torchvision's logits, one a
# line (torchvision's weights metadata, ``_IMAGENET_CATEGORIES``, BSD-3-Clause).
IMAGENET_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
# torch.save(..., _use_new_zipfile_serialization=False): pickle protocol 2, then the magic number 0x1950a86a20f9469cfc6c.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, index = torchvision's logit index
    (``"tench"``, ``"goldfish"``, ...), from the package's ``imagenet_classes.txt``."""
    names = IMAGENET_CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise ValueError(f"{IMAGENET_CLASSES_FILE} must list 1000 class names; it lists {len(names)}")
    return names


def import_torch():
    """Imports torch, or raises a ValueError that says how to install it."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"reading PyTorch checkpoints needs torch, which is not installed; {INSTALL_HINT}") from None
    return torch


def _first_line(exc: BaseException, limit: int = 240) -> str:
    from kerasalex.files import error_line

    return error_line(exc, limit)


def _short_list(names, limit: int = 6) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a torch checkpoint with ``weights_only=True`` and returns its flat
    ``name -> float32 array`` state_dict.

    Raises:
        ValueError: one line naming ``path`` and what is wrong: missing, empty,
            not a torch checkpoint, truncated, refused by ``weights_only``
            (the pickle would run code), or not a flat name -> tensor mapping.
    """
    torch = import_torch()
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ValueError(f"expected a PyTorch checkpoint file, got a folder: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes); expected a PyTorch checkpoint (.pth)")
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if head.startswith(ZIP_MAGIC):
        kind = "zip"
        if not _is_complete_zip(path):
            raise ValueError(
                f"{path} is a truncated or corrupt PyTorch checkpoint ({size} bytes; its zip archive is incomplete)"
            )
        if not _zip_has_torch_pickle(path):
            raise ValueError(f"{path} is not a PyTorch checkpoint ({size} bytes; a zip archive without a data.pkl)")
    elif head == LEGACY_MAGIC:
        kind = "legacy"
    else:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint ({size} bytes; it starts with {head[:8]!r}, expected a zip archive "
            "from torch.save)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        message = str(exc)
        if "Weights only load failed" in message:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
            if found:
                detail = f"it calls {found.group(1)}"
            else:
                found = re.search(r"(Unsupported operand \d+|Trying to call reduce[^\n.]*|Unsupported class[^\n.]*)", message)
                detail = found.group(1)[:120] if found else "an operation outside the tensor allowlist"
            raise ValueError(
                f"refused to load {path}: its pickle needs more than weights_only=True allows ({detail}), "
                "which could run code; only plain state_dicts of tensors are accepted"
            ) from None
        raise ValueError(
            f"{path} is a truncated or corrupt PyTorch checkpoint ({size} bytes, {kind} format; "
            f"torch.load: {_first_line(exc)})"
        ) from None
    return _flat_state_dict(obj, path, torch)


def _zip_has_torch_pickle(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any(name == "data.pkl" or name.endswith("/data.pkl") for name in zf.namelist())


def _is_complete_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _flat_state_dict(obj: Any, path: Path, torch) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a state_dict; expected a flat mapping of names to tensors "
            "(torch.save(model.state_dict(), path))"
        )
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"{path} is not a flat state_dict: key {key!r} is a {type(key).__name__}, expected a str")
        if not isinstance(value, torch.Tensor):
            hint = (
                "; it looks like a training checkpoint: save model.state_dict() itself"
                if isinstance(value, Mapping) else ""
            )
            raise ValueError(
                f"{path} is not a flat state_dict: {key!r} is a {type(value).__name__}, expected a tensor{hint}"
            )
        if value.layout != torch.strided or value.is_quantized or not value.is_floating_point():
            raise ValueError(
                f"{path}: tensor {key!r} is {value.dtype} ({value.layout}); expected a dense floating-point tensor"
            )
        out[key] = value.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
    return out


def validate_state_dict(state_dict: Mapping[str, np.ndarray], source: str = "state_dict") -> int:
    """Checks that ``state_dict`` is torchvision's AlexNet; returns its number of classes.

    Raises:
        ValueError: one line naming the missing and unexpected keys and the
            first shape mismatch.
    """
    keys = set(state_dict)
    expected = set(EXPECTED_SHAPES)
    missing, unexpected = expected - keys, keys - expected
    head = state_dict.get("classifier.6.weight")
    num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    mismatch = None
    for key, shape in EXPECTED_SHAPES.items():  # torch's order, so "first" is stable
        if key not in state_dict:
            continue
        want = tuple(num_classes if d is None else d for d in shape)
        got = tuple(state_dict[key].shape)
        if got != want:
            mismatch = f"{key} is {got}, expected {want}"
            break
    if num_classes is not None and num_classes < 2:
        mismatch = mismatch or f"classifier.6.weight is {tuple(head.shape)}, expected at least 2 classes"
    if missing or unexpected or mismatch:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing, limit=len(EXPECTED_SHAPES))}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected, limit=8)}")
        if mismatch:
            parts.append(f"first shape mismatch: {mismatch}")
        hint = ""
        if unexpected and all(k.startswith("module.") for k in keys):
            hint = " (keys start with 'module.': save model.module.state_dict() of the DataParallel model)"
        raise ValueError(f"{source} is not a torchvision AlexNet state_dict: {'; '.join(parts)}{hint}")
    for key, value in state_dict.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: tensor {key!r} contains NaN or infinite values")
    return num_classes


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """torch arrays -> ``{keras layer name: [kernel, bias]}`` for :mod:`kerasalex.models.torch_alexnet`.

    Conv ``OIHW -> HWIO``; linear ``(out, in) -> (in, out)``; the rows of
    ``classifier.1`` reordered from torch's CHW flatten to Keras's HWC flatten.
    Call :func:`validate_state_dict` first.
    """
    out: dict[str, list] = {}
    for key, (layer, index) in KEY_TABLE.items():
        value = np.asarray(state_dict[key], dtype=np.float32)
        if value.ndim == 4:  # conv (out, in, kh, kw) -> (kh, kw, in, out)
            value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:
            if key == "classifier.1.weight":
                c, h, w = FEATURE_SHAPE
                # column c*36 + h*6 + w (CHW) -> column h*6*256 + w*256 + c (HWC)
                value = value.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(value.shape[0], -1)
            value = value.T
        out.setdefault(layer, [None, None])[index] = np.ascontiguousarray(value)
    return out


def set_keras_weights(model, weights: Mapping[str, list[np.ndarray]]) -> None:
    """Assigns :func:`convert_state_dict`'s output to a torch AlexNet Keras model."""
    for layer_name, values in weights.items():
        model.get_layer(layer_name).set_weights(values)


def torch_alexnet(num_classes: int = 1000, dropout: float = 0.5):
    """torchvision's ``AlexNet`` module (same structure and state_dict keys),
    defined here so the port's check needs only torch, not torchvision."""
    torch = import_torch()
    nn = torch.nn

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
            )
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=dropout),
                nn.Linear(256 * 6 * 6, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )

        def forward(self, x):
            x = self.features(x)
            x = self.avgpool(x)
            x = torch.flatten(x, 1)
            return self.classifier(x)

    return AlexNet()


def compare_with_torch(
    state_dict: Mapping[str, np.ndarray],
    keras_model,
    image_size: int = CHECK_IMAGE_SIZE,
    batch: int = CHECK_BATCH,
    seed: int = 0,
) -> dict[str, float]:
    """Runs torch's AlexNet (loaded strictly from ``state_dict``) and the Keras
    core model on the same random normalized batch; returns the figures.

    ``keras_model`` must take NHWC float input of ``image_size`` (see
    :func:`kerasalex.models.torch_alexnet.build_torch_alexnet_core`).
    """
    torch = import_torch()
    num_classes = int(state_dict["classifier.6.weight"].shape[0])
    module = torch_alexnet(num_classes)
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, strict=True)
    module.eval()
    x = np.random.default_rng(seed).standard_normal((batch, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():
        torch_logits = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    keras_logits = np.asarray(keras_model(x, training=False), dtype=np.float32)
    diff = np.abs(keras_logits - torch_logits)
    scale = float(np.max(np.abs(torch_logits)))
    return {
        "image_size": int(image_size),
        "batch": int(batch),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_logit": scale,
        "rel_diff": float(diff.max() / scale) if scale > 0 else float(diff.max()),
        "top1_agree": bool(np.array_equal(keras_logits.argmax(-1), torch_logits.argmax(-1))),
    }


def _check_output_path(output_path: str | Path) -> Path:
    output = Path(output_path)
    if not (output.name.endswith(".weights.h5") or output.suffix == ".keras"):
        raise ValueError(f"the output must end in .weights.h5 or .keras. Received: output={str(output_path)!r}")
    if output.is_dir():
        raise ValueError(f"the output is a folder; expected a file path. Received: output={str(output_path)!r}")
    return output


def port_torchvision_alexnet(pth_path: str | Path, output_path: str | Path = DEFAULT_OUTPUT, check: bool = True) -> dict:
    """Ports a torchvision AlexNet checkpoint (e.g. ``alexnet-owt-7be5be79.pth``)
    to Keras and writes it atomically.

    Args:
        pth_path: a torch ``state_dict`` saved with ``torch.save``.
        output_path: ``*.weights.h5`` (weights of
            :func:`~kerasalex.models.torch_alexnet.build_torch_alexnet_core` /
            ``build_torch_alexnet``, same layers) or ``*.keras`` (the full
            uint8-input ImageNet classifier: resize 256, crop 224, normalize;
            a 1000-class checkpoint gets the ImageNet class names, see
            :func:`imagenet_class_names`).
        check: compare the Keras logits with torch's on a random 224x224 batch
            before writing; a relative difference over ``CHECK_RTOL`` is refused.

    Returns:
        The figures: ``source``, ``output``, ``num_classes``, ``num_params``,
        ``checked`` and, when checked, ``image_size``, ``batch``,
        ``max_abs_diff``, ``mean_abs_diff``, ``max_abs_logit``, ``rel_diff``,
        ``top1_agree``.

    Raises:
        ValueError: one line; nothing is written.

    Example:
        >>> port_torchvision_alexnet("alexnet-owt-7be5be79.pth", "saved_models/alexnet_imagenet.weights.h5")["max_abs_diff"]
        1.9e-06
    """
    from kerasalex.files import save_model
    from kerasalex.models.torch_alexnet import build_torch_alexnet, build_torch_alexnet_core

    output = _check_output_path(output_path)
    state_dict = load_state_dict(pth_path)
    num_classes = validate_state_dict(state_dict, source=str(pth_path))
    converted = convert_state_dict(state_dict)

    core = build_torch_alexnet_core(num_classes, input_shape=(CHECK_IMAGE_SIZE, CHECK_IMAGE_SIZE, 3))
    set_keras_weights(core, converted)
    figures: dict[str, Any] = {
        "source": str(pth_path),
        "output": str(output),
        "num_classes": num_classes,
        "num_params": int(core.count_params()),
        "checked": bool(check),
    }
    if check:
        figures.update(compare_with_torch(state_dict, core))
        if not figures["rel_diff"] <= CHECK_RTOL:
            raise ValueError(
                f"the Keras port of {pth_path} disagrees with torch: max |logit difference| {figures['max_abs_diff']:.3g} "
                f"is {figures['rel_diff']:.3g} of max |logit| (limit {CHECK_RTOL}); nothing written"
            )
    if output.suffix == ".keras":
        # A 1000-class checkpoint is torchvision's ImageNet head: the model
        # carries the class names, so `predict` says "goldfish", not "1".
        # The inference model (stock layers, uint8 images of any size in)
        # loads with plain Keras; its metadata records 224 px and the classes.
        names = imagenet_class_names() if num_classes == 1000 else None
        model = build_torch_alexnet(num_classes, class_names=names)
        set_keras_weights(model, converted)
        from kerasalex.data import ResizeRule

        # predict/evaluate decode files for it as torchvision does (shorter side + centre crop).
        save_model(model, output, metadata={"arch": "alexnet-torch", "source": Path(pth_path).name,
                                            "preprocessing": ResizeRule(224, "crop", "bilinear").to_dict()})
    else:
        save_model(core, output)  # same weight-bearing layers in the same order as build_torch_alexnet
    return figures


__all__ = [
    "CHECK_RTOL",
    "DEFAULT_OUTPUT",
    "EXPECTED_SHAPES",
    "KEY_TABLE",
    "compare_with_torch",
    "convert_state_dict",
    "imagenet_class_names",
    "import_torch",
    "load_state_dict",
    "port_torchvision_alexnet",
    "set_keras_weights",
    "torch_alexnet",
    "validate_state_dict",
]
