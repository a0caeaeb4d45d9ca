"""The study's transfer model: an ImageNet VGG16 base (``keras.applications``,
without its top) and a dense head, with the resize to 224 px and VGG16's own
input normalization as layers inside the model.

The base is one nested functional model named ``vgg16`` (layers
``block1_conv1`` .. ``block5_pool``), so it can be frozen, unfrozen from a
named layer, and run alone to cache its features
(:mod:`kerasalex.transfer`). The head starts at the ``flatten`` layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import keras
from keras import layers

from kerasalex import preprocessing
from kerasalex.files import error_line
from kerasalex.models import set_model_info

BASE_NAME = "vgg16"
HEAD_START = "flatten"
WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{WEIGHTS_FILE}"
# Five 2x2 max-pools: 32 px leaves a 1x1 map (keras.applications' own minimum).
MIN_INPUT_SIZE = 32


def keras_weights_cache() -> Path:
    """The folder where Keras's ``get_file`` looks for (and downloads) model weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _fetch_hint() -> str:
    return (
        f"fetch {WEIGHTS_URL} into {keras_weights_cache()}/ (the Keras cache), "
        f"or pass its path with --base-weights PATH"
    )


def build_vgg16_base(input_size: int = 224, base_weights: str | os.PathLike | None = "imagenet") -> keras.Model:
    """``keras.applications.VGG16`` without its top, at ``input_size`` px.

    Args:
        input_size: side of the square input (>= 32).
        base_weights: ``"imagenet"`` (Keras's download/cache), ``None`` or
            ``"none"`` (random initialization), or the path of a local
            ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (or a Keras
            ``.weights.h5`` of the same layers), loaded offline.

    Returns:
        The functional base named ``vgg16``; input float (H, W, 3) BGR minus
        the caffe means, output (H/32, W/32, 512).

    Raises:
        ValueError: the weights cannot be had; the message names the file to
            fetch and where to put it.
    """
    shape = (int(input_size), int(input_size), 3)
    if base_weights is None or (isinstance(base_weights, str) and base_weights.lower() == "none"):
        return keras.applications.VGG16(include_top=False, weights=None, input_shape=shape)
    if isinstance(base_weights, str) and base_weights.lower() == "imagenet":
        try:
            return keras.applications.VGG16(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:  # get_file raises a bare Exception when offline
            cause = error_line(exc)
            raise ValueError(
                f"could not get the ImageNet VGG16 weights ({type(exc).__name__}: {cause}); "
                f"offline, {_fetch_hint()}"
            ) from None
    path = Path(base_weights).expanduser()
    if not path.is_file():
        raise ValueError(
            f"base_weights file not found: {path}; expected a local {WEIGHTS_FILE}: {_fetch_hint()}. "
            f"Received: base_weights={str(base_weights)!r}"
        )
    if not path.name.lower().endswith((".h5", ".hdf5")):
        raise ValueError(
            f"base_weights must be an .h5 weights file ({WEIGHTS_FILE}). Received: base_weights={str(base_weights)!r}"
        )
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=shape)
    try:
        base.load_weights(path)
    except Exception as exc:
        cause = error_line(exc)
        raise ValueError(
            f"{path} does not hold VGG16 notop weights ({type(exc).__name__}: {cause}); "
            f"expected {WEIGHTS_FILE} from {WEIGHTS_URL}"
        ) from None
    return base


def build_vgg16_transfer(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    class_names: Sequence[str] | None = None,
    dropout: float = 0.0,
    seed: int | None = None,
    base_weights: str | os.PathLike | None = "imagenet",
    input_size: int = 224,
    head: Sequence[int] = (512, 512),
    freeze_base: bool = True,
    name: str = "vgg16_transfer",
) -> keras.Model:
    """The study's VGG16 transfer model: raw uint8 images in, logits out.

    Layers: ``normalize`` + a channel flip (exactly
    ``keras.applications.vgg16.preprocess_input``, in stock Keras, see
    :func:`kerasalex.preprocessing.vgg_preprocess`); ``resize`` (bilinear, to
    ``input_size`` x ``input_size``; the input takes uint8 images of any size,
    and the caffe normalization commutes with the resize); ``vgg16``, the nested
    base, called with ``training=False``; then the head: ``flatten``, ``fc1``
    .. ``fcN`` (Dense ReLU, one per entry of ``head``, each followed by
    ``fcK_dropout`` when ``dropout`` > 0) and ``predictions`` (float32
    logits). Training-only augmentation is not in the model: see
    :func:`kerasalex.models.training_model`. At 224 px with 10 classes and the
    study's head: 27,828,042 parameters, 13,113,354 of them trainable with
    the base frozen.

    Args:
        num_classes: number of classes (>= 2).
        input_shape: (height, width, 3) of the raw images it is fed (the
            model resizes any size).
        class_names: names saved with the model (default "0".."n-1").
        dropout: dropout rate after each hidden Dense of the head (0 = the study).
        seed: seed for the dropout layers.
        base_weights: ``"imagenet"``, ``None``/``"none"`` or a local notop
            ``.h5`` path; see :func:`build_vgg16_base`.
        input_size: side the images are resized to inside the model (>= 32).
        head: units of the hidden Dense layers.
        freeze_base: make the base non-trainable.
        name: model name.

    Example:
        >>> model = build_vgg16_transfer(10, base_weights=None)
        >>> model.count_params()
        27828042
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < MIN_INPUT_SIZE:
        raise ValueError(
            f"input_size must be an integer >= {MIN_INPUT_SIZE} (VGG16's five 2x2 max-pools). Received: input_size={input_size!r}"
        )
    head = tuple(head)
    if not all(isinstance(u, int) and not isinstance(u, bool) and u >= 1 for u in head):
        raise ValueError(f"head must be a sequence of positive unit counts. Received: head={head!r}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3). Received: input_shape={input_shape}")
    class_names = preprocessing.check_class_names(class_names, num_classes)

    # === Functional Model ===
    inputs = preprocessing.image_input()
    x = preprocessing.vgg_preprocess(inputs)
    x = preprocessing.resize(x, input_size, input_size)
    base = build_vgg16_base(input_size, base_weights)
    base.trainable = not freeze_base
    # training=False: the base runs in inference mode even while it is being
    # fine-tuned (the keras-io transfer-learning recipe).
    x = base(x, training=False)

    x = layers.Flatten(name=HEAD_START)(x)
    for i, units in enumerate(head, start=1):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, seed=None if seed is None else seed + 1 + i, name=f"fc{i}_dropout")(x)
    logits = layers.Dense(num_classes, name="predictions", dtype="float32")(x)
    model = keras.Model(inputs, logits, name=name)
    return set_model_info(model, class_names, input_shape)
