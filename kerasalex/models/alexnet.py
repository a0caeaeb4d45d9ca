"""The study's scratch AlexNet for CIFAR-sized images (Keras functional API)."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

from kerasalex import preprocessing


def build_alexnet(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    class_names: Sequence[str] | None = None,
    augment: bool = False,
    dropout: float = 0.0,
    seed: int | None = None,
    kernel_initializer: str = "glorot_uniform",
    head_initializer: str = "glorot_uniform",
    name: str = "alexnet",
) -> keras.Model:
    """The study's scratch AlexNet, exactly its layer stack.

    Five 3x3 ``same`` Conv2D + ReLU (96, 256, 384, 384, 256 filters),
    MaxPool(3, stride 2) after conv 1, 2 and 5, Flatten, Dense 4096 ReLU,
    Dense 4096 ReLU, Dense ``num_classes`` (logits). At 32x32x3 with 10
    classes: 29,585,290 parameters.

    The input is raw uint8 RGB; rescaling to [-1, 1] (as the study) and the
    optional training-only augmentation are layers inside the model.

    Args:
        num_classes: number of classes (>= 2).
        input_shape: (height, width, 3); each side at least 16.
        class_names: names carried in the saved model (default "0".."n-1").
        augment: add random flip + translation (training only).
        dropout: dropout rate before each hidden Dense (0 = the study).
        seed: seed for the augmentation and dropout layers.
        kernel_initializer: initializer of every Conv2D/Dense kernel below
            the classifier (a Keras initializer name). ``"glorot_uniform"``
            (Keras' default, the study) scales a ReLU stack's signal down
            at every layer; ``"he_normal"`` (He et al. 2015, "Delving Deep into
            Rectifiers") keeps its variance, which this BatchNorm-free stack
            needs to leave the chance plateau within a few hundred steps.
        head_initializer: initializer of the last Dense (the logits).
            ``"zeros"`` starts every prediction uniform, at loss ln(classes),
            as ViT's zero-initialized head (Dosovitskiy et al. 2021): with
            He-initialized hidden layers a random head starts with logits of
            RMS ~3 (measured at 32 px), a loss far above ln(classes), and
            the first steps go to shrinking them.
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
    h, w = input_shape[0], input_shape[1]
    for side in (h, w):
        if side is not None and side < 16:
            raise ValueError(
                f"the scratch AlexNet needs inputs of at least 16x16 (three 3/2 max-pools). Received: input_shape={tuple(input_shape)}"
            )

    # === Functional Model ===
    inputs = preprocessing.image_input(input_shape)
    x = preprocessing.augment(inputs, augment, seed)
    x = preprocessing.rescale_symmetric(x)

    x = layers.Conv2D(96, 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block1_conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="block1_pool")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block2_conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="block2_pool")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block3_conv1")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block3_conv2")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", kernel_initializer=kernel_initializer, name="block3_conv3")(x)
    x = layers.MaxPooling2D(3, strides=2, name="block3_pool")(x)

    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="fc1_dropout")(x)
    x = layers.Dense(4096, activation="relu", kernel_initializer=kernel_initializer, name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=None if seed is None else seed + 2, name="fc2_dropout")(x)
    x = layers.Dense(4096, activation="relu", kernel_initializer=kernel_initializer, name="fc2")(x)
    logits = layers.Dense(num_classes, kernel_initializer=head_initializer, name="predictions", dtype="float32")(x)
    outputs = preprocessing.class_names_head(logits, class_names, num_classes)
    return keras.Model(inputs, outputs, name=name)
