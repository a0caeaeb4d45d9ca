"""In-model preprocessing: every model takes raw uint8 RGB images.

Rescaling, resizing, normalization and training-only augmentation are Keras
layers inside the model, so they run on the accelerator and travel inside the
``.keras`` file. No ``Lambda`` layers: the two layers Keras lacks are real,
registered classes, so safe-mode loading works.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers, ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras.applications.vgg16.preprocess_input ("caffe" mode): BGR, minus these means.
VGG_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="kerasalex")
class ClassNames(layers.Layer):
    """Identity on the logits that carries the class names in the saved model.

    It also casts the logits to float32, so under a mixed-precision policy the
    softmax and the loss stay in float32.

    Args:
        class_names: one name per output unit.
    """

    def __init__(self, class_names: Sequence[str] | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.class_names = [str(c) for c in class_names] if class_names is not None else None

    def call(self, inputs):
        return ops.cast(inputs, "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"class_names": self.class_names})
        return config


@keras.saving.register_keras_serializable(package="kerasalex")
class ChannelReverse(layers.Layer):
    """Reverses the channel axis (RGB -> BGR), as VGG16's caffe-style input wants."""

    def call(self, inputs):
        return ops.flip(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def image_input(input_shape: Sequence[int], name: str = "image") -> keras.KerasTensor:
    """A raw-image input: uint8 RGB of ``input_shape`` (H, W, 3); H and W may be None."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3). Received: input_shape={input_shape}")
    return keras.Input(shape=input_shape, dtype="uint8", name=name)


def augment(x, enabled: bool, seed: int | None = None, translate: float = 0.125):
    """Training-only augmentation: random horizontal flip and random translation
    (the "pad 4 and crop 32" of CIFAR recipes, as a translation of up to 1/8 of
    the image with zero fill). Identity at inference.
    """
    if not enabled:
        return x
    x = layers.RandomFlip("horizontal", seed=seed, name="augment_flip")(x)
    x = layers.RandomTranslation(
        translate, translate, fill_mode="constant", fill_value=0.0, seed=None if seed is None else seed + 1,
        name="augment_translate",
    )(x)
    return x


def rescale_symmetric(x):
    """uint8 [0, 255] -> [-1, 1], as the study (``x / 127.5 - 1``)."""
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)


def imagenet_normalize(x):
    """uint8 [0, 255] -> torchvision's ImageNet normalization ((x/255 - mean) / std)."""
    mean = [m * 255.0 for m in IMAGENET_MEAN]
    var = [(s * 255.0) ** 2 for s in IMAGENET_STD]
    return layers.Normalization(mean=mean, variance=var, name="normalize")(x)


def vgg_preprocess(x):
    """keras.applications.vgg16.preprocess_input as layers: RGB->BGR, minus the caffe means."""
    x = ChannelReverse(name="rgb_to_bgr")(x)
    return layers.Normalization(mean=list(VGG_BGR_MEAN), variance=[1.0, 1.0, 1.0], name="normalize")(x)


def resize_center_crop(x, resize: int, crop: int):
    """torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` for square inputs, as layers."""
    x = layers.Resizing(resize, resize, interpolation="bilinear", name="resize")(x)
    if crop != resize:
        x = layers.CenterCrop(crop, crop, name="center_crop")(x)
    return x


def class_names_head(logits, class_names: Sequence[str] | None, num_classes: int):
    """Attaches the :class:`ClassNames` identity to the logits."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names must have num_classes={num_classes} entries. Received {len(class_names)}: {list(class_names)[:5]}..."
        )
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    return ClassNames(class_names, name="class_names")(logits)
