"""The study's scratch AlexNet for CIFAR-sized images (Keras functional API)."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

from kerasalex import preprocessing
from kerasalex.models import set_model_info


def build_alexnet(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    class_names: Sequence[str] | None = None,
    dropout: float = 0.0,
    seed: int | None = None,
    kernel_initializer: str = "glorot_uniform",
    head_initializer: str = "glorot_uniform",
    filters: Sequence[int] = (96, 256, 384, 384, 256),
    dense_units: int = 4096,
    name: str = "alexnet",
) -> keras.Model:
    """The study's scratch AlexNet, exactly its layer stack.

    Five 3x3 ``same`` Conv2D + ReLU (96, 256, 384, 384, 256 filters),
    MaxPool(3, stride 2) after conv 1, 2 and 5, Flatten, Dense 4096 ReLU,
    Dense 4096 ReLU, Dense ``num_classes`` (logits). At 32x32x3 with 10
    classes: 29,585,290 parameters.

    The input is raw uint8 RGB images of any size: ``rescale`` to [-1, 1] (as
    the study) and ``resize`` (bilinear, to ``input_shape``; an exact identity
    at that size) are layers inside the model. Training-only augmentation is not: see
    :func:`kerasalex.models.training_model`.

    Args:
        num_classes: number of classes (>= 2).
        input_shape: (height, width, 3) the network runs at (images of other
            sizes are resized to it); each side at least 16.
        class_names: names saved with the model (default "0".."n-1").
        dropout: dropout rate before each hidden Dense (0 = the study).
        seed: seed for the dropout layers.
        kernel_initializer: initializer of every Conv2D/Dense kernel below
            the classifier (a Keras initializer name). ``"glorot_uniform"``
            (Keras' default, the study) shrinks this ReLU stack's signal at
            every layer (logits of RMS 0.03 at 32 px: SGD sits on the chance
            plateau for hundreds of steps); ``"he_normal"`` (He et al. 2015)
            keeps it but makes the first full-rate steps blow up the logits;
            ``"lecun_normal"`` (variance 1/fan_in), the default recipe's,
            sits between (measured, README "Recipes").
        head_initializer: initializer of the last Dense (the logits).
            ``"zeros"`` starts every prediction uniform, at loss
            ln(classes), as ViT's zero-initialized head (Dosovitskiy et al. 2021).
        filters: the five convolutions' filter counts (the study's by
            default; smaller values give a tiny configuration of the same
            stack, as the tests use).
        dense_units: units of each of the two hidden Dense layers (4096, the
            study's).
        name: model name.

    Example:
        >>> model = build_alexnet(10)
        >>> model.count_params()
        29585290
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2. Received: num_classes={num_classes}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3). Received: input_shape={input_shape}")
    h, w = input_shape[0], input_shape[1]
    for side in (h, w):
        if side is None or side < 16:
            raise ValueError(
                f"the scratch AlexNet needs a known input size of at least 16x16 (three 3/2 max-pools). Received: input_shape={input_shape}"
            )
    filters = tuple(int(f) for f in filters)
    if len(filters) != 5 or min(filters) < 1:
        raise ValueError(f"filters must be five positive integers. Received: filters={filters}")
    if int(dense_units) < 1:
        raise ValueError(f"dense_units must be a positive integer. Received: dense_units={dense_units}")
    class_names = preprocessing.check_class_names(class_names, num_classes)

    # === Functional Model ===
    inputs = preprocessing.image_input()
    x = preprocessing.rescale_symmetric(inputs)
    x = preprocessing.resize(x, h, w)

    x = layers.Conv2D(filters[0], 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block1_conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="block1_pool")(x)
    x = layers.Conv2D(filters[1], 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block2_conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="block2_pool")(x)
    x = layers.Conv2D(filters[2], 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block3_conv1")(x)
    x = layers.Conv2D(filters[3], 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block3_conv2")(x)
    x = layers.Conv2D(filters[4], 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block3_conv3")(x)
    x = layers.MaxPooling2D(3, strides=2, name="block3_pool")(x)

    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="fc1_dropout")(x)
    x = layers.Dense(dense_units, activation="relu", kernel_initializer=kernel_initializer, name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=None if seed is None else seed + 2, name="fc2_dropout")(x)
    x = layers.Dense(dense_units, activation="relu", kernel_initializer=kernel_initializer, name="fc2")(x)
    logits = layers.Dense(num_classes, kernel_initializer=head_initializer, name="predictions", dtype="float32")(x)
    model = keras.Model(inputs, logits, name=name)
    return set_model_info(model, class_names, input_shape)
