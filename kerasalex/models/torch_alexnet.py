"""torchvision's ImageNet AlexNet in Keras, layer for layer, with names that
mirror the torch state_dict keys (``features.0`` -> ``features_0``), so the
weight port in :mod:`kerasalex.porting` is a table plus two transposes.

Two builders share one layer stack:

* :func:`build_torch_alexnet` -- the kerasalex model: raw uint8 images in,
  torchvision's ``Resize(256)`` + ``CenterCrop(224)`` + ImageNet normalization
  as layers inside, then the stack, then the class-names identity.
* :func:`build_torch_alexnet_core` -- the pure torch-equivalent graph: a float
  input that is already normalized (the NHWC view of torch's NCHW input) and
  nothing else, for the port's numeric comparison with torch.

Both have the same weight-bearing layers in the same order, so a
``.weights.h5`` written from one loads into the other.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import keras
from keras import layers

from kerasalex import preprocessing
from kerasalex.models import set_model_info

# torchvision.models.AlexNet.features: (torch index, filters, kernel, stride, padding).
CONVS = (
    (0, 64, 11, 4, 2),
    (3, 192, 5, 1, 2),
    (6, 384, 3, 1, 1),
    (8, 256, 3, 1, 1),
    (10, 256, 3, 1, 1),
)
MAXPOOL_AFTER = {0: 2, 3: 5, 10: 12}  # conv index -> index of the MaxPool that follows its ReLU
# torchvision.models.AlexNet.classifier Linear layers: torch index -> units (None = num_classes).
DENSES = ((1, 4096), (4, 4096), (6, None))
CONV_LAYERS = tuple(f"features_{i}" for i, *_ in CONVS)
DENSE_LAYERS = tuple(f"classifier_{i}" for i, _ in DENSES)
HEAD_LAYER = "classifier_6"
POOL_SIZE = 6
# The smallest crop that leaves a 2x2 map after features_12. torch goes down to
# 63 px (a 1x1 map), but keras.layers.AdaptiveAveragePooling2D (3.15) cannot
# pool a 1x1 map up to 6x6: its two-window scheme needs at least 2 inputs.
MIN_CROP = 95


def _check_num_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}")


def _check_dropout(dropout) -> None:
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")


def _alexnet_stack(x, num_classes: int, dropout: float, seed: int | None):
    """torchvision's ``features`` / ``avgpool`` / ``classifier`` on an NHWC float tensor."""
    for index, filters, kernel, stride, padding in CONVS:
        # torch pads symmetrically; Keras "same" with stride 4 would pad (3, 4).
        x = layers.ZeroPadding2D(padding, name=f"features_{index}_pad")(x)
        x = layers.Conv2D(filters, kernel, strides=stride, padding="valid", name=f"features_{index}")(x)
        x = layers.ReLU(name=f"features_{index + 1}")(x)
        if index in MAXPOOL_AFTER:
            x = layers.MaxPooling2D(3, strides=2, name=f"features_{MAXPOOL_AFTER[index]}")(x)
    x = layers.AdaptiveAveragePooling2D(POOL_SIZE, name="avgpool")(x)
    # Keras flattens HWC where torch flattens CHW; the port reorders the rows
    # of classifier.1.weight instead of transposing here at run time.
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, seed=None if seed is None else seed + 2, name="classifier_0")(x)
    x = layers.Dense(4096, name="classifier_1")(x)
    x = layers.ReLU(name="classifier_2")(x)
    x = layers.Dropout(dropout, seed=None if seed is None else seed + 3, name="classifier_3")(x)
    x = layers.Dense(4096, name="classifier_4")(x)
    x = layers.ReLU(name="classifier_5")(x)
    return layers.Dense(num_classes, name=HEAD_LAYER, dtype="float32")(x)


def build_torch_alexnet_core(
    num_classes: int = 1000,
    input_shape: Sequence[int] = (224, 224, 3),
    dropout: float = 0.5,
    seed: int | None = None,
    name: str = "alexnet_torch_core",
) -> keras.Model:
    """torchvision's AlexNet alone: the graph that computes what torch computes.

    The input is float32, already normalized, in NHWC (torch's NCHW batch
    transposed by ``(0, 2, 3, 1)``); there is no resizing or normalization.
    The output is the float32 logits of ``classifier_6``.

    Args:
        num_classes: number of classes (>= 2).
        input_shape: (height, width, 3), each side at least 95 and known
            (``MIN_CROP``; the adaptive pool needs a static size).
        dropout: rate of ``classifier_0`` and ``classifier_3`` (training only).
        seed: seed for the dropout layers.
        name: model name.

    Example:
        >>> model = build_torch_alexnet_core(1000)
        >>> model.count_params()
        61100840
    """
    _check_num_classes(num_classes)
    _check_dropout(dropout)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3). Received: input_shape={input_shape}")
    for side in input_shape[:2]:
        if side is None or int(side) < MIN_CROP:
            raise ValueError(
                f"the torch AlexNet core needs a known input side of at least {MIN_CROP} (a 2x2 map after three "
                f"3/2 max-pools and a stride-4 conv). Received: input_shape={input_shape}"
            )

    # === Functional Model ===
    inputs = keras.Input(shape=input_shape, dtype="float32", name="image")
    logits = _alexnet_stack(inputs, num_classes, dropout, seed)
    return keras.Model(inputs, logits, name=name)


def build_torch_alexnet(
    num_classes: int = 1000,
    input_shape: Sequence[int] = (224, 224, 3),
    class_names: Sequence[str] | None = None,
    dropout: float = 0.5,
    seed: int | None = None,
    weights: str | None = None,
    freeze_base: bool = False,
    resize: int = 256,
    crop: int = 224,
    name: str = "alexnet_torch",
) -> keras.Model:
    """torchvision's AlexNet with its preprocessing inside: raw uint8 in, logits out.

    Layers: ``normalize`` (``(x / 255 - mean) / std`` with the ImageNet mean
    and std); ``resize`` (bilinear resize to ``resize`` x ``resize``,
    torchvision's ``Resize`` for square images) and ``center_crop`` to
    ``crop`` x ``crop`` (torchvision's eval transform: the normalization, a
    per-channel affine map, commutes with both); then exactly
    torchvision's stack -- ``features_0`` .. ``features_12`` (convolutions with
    explicit symmetric ``ZeroPadding2D`` named ``features_<i>_pad``), ``avgpool``
    (adaptive average pool to 6x6, exact for any size), ``flatten``,
    ``classifier_0`` .. ``classifier_6`` (float32 logits). The input takes
    uint8 images of any size. Training-only augmentation is not in the model:
    see :func:`kerasalex.models.training_model`. With 1000 classes:
    61,100,840 parameters.

    Args:
        num_classes: number of classes (>= 2).
        input_shape: (height, width, 3) of the raw images it is fed (e.g.
            32x32 CIFAR-10 images; the model resizes any size); each side at
            least 8 or None.
        class_names: names saved with the model (default "0".."n-1").
        dropout: rate of ``classifier_0`` and ``classifier_3`` (torchvision: 0.5).
        seed: seed for the dropout layers.
        weights: None (random initialization), or the path of a ported
            ``.weights.h5`` (1000 classes) or full ``.keras`` model written by
            ``kerasalex port-weights``. Every layer except the head
            ``classifier_6`` is copied from it; the head is freshly initialized
            for ``num_classes``.
        freeze_base: freeze the five convolutions ``features_0/3/6/8/10``.
            ``classifier_1``, ``classifier_4`` and the head ``classifier_6``
            stay trainable (dropout still applies while training).
        resize: side the images are resized to (torchvision: 256).
        crop: side of the center crop fed to the network (torchvision: 224);
            ``MIN_CROP`` (95) <= crop <= resize.
        name: model name.

    Example:
        >>> model = build_torch_alexnet(10, input_shape=(32, 32, 3))
        >>> model.output_shape
        (None, 10)
    """
    _check_num_classes(num_classes)
    _check_dropout(dropout)
    for arg, value in (("resize", resize), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{arg} must be an integer. Received: {arg}={value!r}")
    if not MIN_CROP <= crop <= resize:
        raise ValueError(
            f"crop must be at least {MIN_CROP} (a 2x2 map after three 3/2 max-pools and a stride-4 conv) and at most "
            f"resize={resize}. Received: crop={crop}"
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3). Received: input_shape={input_shape}")
    for side in input_shape[:2]:
        if side is not None and int(side) < 8:
            raise ValueError(f"input sides must be at least 8 pixels. Received: input_shape={input_shape}")
    if weights is not None and not isinstance(weights, (str, Path)):
        raise ValueError(f"weights must be None or a path to a .weights.h5 or .keras file. Received: weights={weights!r}")
    class_names = preprocessing.check_class_names(class_names, num_classes)

    # === Functional Model ===
    inputs = preprocessing.image_input()
    # Normalizing first (per-channel affine: the same function as after the
    # resize and crop) gives the resize float input; see preprocessing.resize.
    x = preprocessing.imagenet_normalize(inputs)
    x = preprocessing.resize_center_crop(x, resize, crop)
    logits = _alexnet_stack(x, num_classes, dropout, seed)
    model = keras.Model(inputs, logits, name=name)
    set_model_info(model, class_names, input_shape)

    if weights is not None:
        copy_base_weights(load_pretrained(weights), model)
    if freeze_base:
        for layer_name in CONV_LAYERS:
            model.get_layer(layer_name).trainable = False
    return model


def load_pretrained(weights: str | Path) -> keras.Model:
    """Loads a ported AlexNet: a ``.weights.h5`` (into a 1000-class core model)
    or a full ``.keras`` file (checked, safe-mode loading).

    Raises:
        ValueError: the file is missing, of the wrong kind, or not a ported AlexNet.
    """
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"weights file not found. Received: weights={str(weights)!r}")
    if path.name.endswith(".weights.h5"):
        donor = build_torch_alexnet_core(1000, dropout=0.0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                donor.load_weights(path)
        except Exception as exc:  # h5py / Keras raise many types for foreign files
            from kerasalex.files import error_line

            first = error_line(exc)
            raise ValueError(
                f"weights={str(weights)!r} is not a ported 1000-class torchvision AlexNet .weights.h5 "
                f"({type(exc).__name__}: {first})"
            ) from None
        return donor
    if path.suffix == ".keras":
        from kerasalex.files import load_model

        return load_model(path)
    raise ValueError(f"weights must be a .weights.h5 or .keras file from `kerasalex port-weights`. Received: weights={str(weights)!r}")


def copy_base_weights(donor: keras.Model, model: keras.Model, skip: Sequence[str] = (HEAD_LAYER,)) -> list[str]:
    """Copies the weights of every conv and dense layer except ``skip`` from
    ``donor`` to ``model``, by layer name; returns the names copied.

    Raises:
        ValueError: ``donor`` lacks one of the layers or a shape differs.
    """
    copied = []
    for layer_name in CONV_LAYERS + DENSE_LAYERS:
        if layer_name in skip:
            continue
        try:
            source = donor.get_layer(layer_name)
        except ValueError:
            raise ValueError(
                f"the pretrained model {donor.name!r} has no layer {layer_name!r}; expected a torchvision AlexNet "
                "from `kerasalex port-weights`"
            ) from None
        target = model.get_layer(layer_name)
        values = source.get_weights()
        expected = [tuple(w.shape) for w in target.weights]
        got = [tuple(v.shape) for v in values]
        if got != expected:
            raise ValueError(
                f"layer {layer_name!r} of the pretrained model {donor.name!r} has weight shapes {got}; expected {expected}"
            )
        target.set_weights(values)
        copied.append(layer_name)
    return copied


__all__ = [
    "build_torch_alexnet",
    "build_torch_alexnet_core",
    "copy_base_weights",
    "load_pretrained",
    "CONV_LAYERS",
    "DENSE_LAYERS",
    "HEAD_LAYER",
    "MIN_CROP",
]
