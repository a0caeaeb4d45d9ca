"""In-model preprocessing: every model takes raw uint8 RGB images of any size.

Resizing, rescaling and normalization are stock Keras layers inside the
model, so they run on the accelerator, travel inside the ``.keras`` file, and
the file loads with plain Keras (``keras.saving.load_model``, safe mode on)
where kerasalex is not installed.

The input contract of every model: a batch of uint8 RGB images (N, H, W, 3),
values 0..255, of any H and W; the model resizes them itself to the size it
was trained at. Float arrays are cast to uint8 by Keras (so images scaled to
[0, 1] become 0s and 1s): pass uint8 (see :func:`check_images`).

Training-only augmentation is *not* part of these models: it is a front that
:func:`kerasalex.models.training_model` puts before a model for ``fit`` only
(see :func:`augment`), so no inference path (``model(x)``, ``predict``, an
exported graph) ever augments.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import layers, ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras.applications.vgg16.preprocess_input ("caffe" mode): BGR, minus these means.
VGG_BGR_MEAN = (103.939, 116.779, 123.68)


def image_input(input_shape: Sequence[int] = (None, None, 3), name: str = "image") -> keras.KerasTensor:
    """A raw-image input: uint8 RGB of ``input_shape`` (H, W, 3); H and W may be None."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3). Received: input_shape={input_shape}")
    return keras.Input(shape=input_shape, dtype="uint8", name=name)


def check_images(x, what: str = "images") -> np.ndarray:
    """Checks a batch against the models' input contract (uint8, (N, H, W, 3)).

    Keras casts a float batch to the uint8 input silently, so float images in
    [0, 1] would all become 0 or 1 (and give chance accuracy): refused here
    with the fix in the message.

    Raises:
        ValueError: not a (N, H, W, 3) uint8 batch.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{what} must be a batch of RGB images (N, H, W, 3). Received shape {x.shape}")
    if x.dtype != np.uint8:
        hint = ""
        if x.dtype.kind == "f" and x.size and float(np.nanmax(x)) <= 1.0:
            hint = " (these look scaled to [0, 1]: use (x * 255).round().astype('uint8'))"
        raise ValueError(
            f"{what} must be uint8 RGB with values 0..255, as the models take them. Received dtype {x.dtype}{hint}"
        )
    return x


def resize(x, height: int, width: int, name: str = "resize"):
    """Bilinear resize to ``height`` x ``width`` (an exact identity for images
    that already have that size), so a model takes images of any size.

    Put it after the first layer that makes the uint8 images float (rescale
    or normalize; both are per-channel affine maps, which commute with
    bilinear resizing and cropping): Keras's ``Resizing`` rounds an integer
    input back to integers when called eagerly (``model(x)``) but not inside
    a ``tf.function`` (``predict``, exported graphs), so on uint8 it would
    make ``model(x)`` and ``model.predict(x)`` differ.

    Called with ``training=False``: Keras 3.15's ``Resizing`` declares
    ``training=True`` as its default, and a plain ``model(x)`` then runs every
    later layer in training mode (a BatchNormalization after it would use
    batch statistics; measured).
    """
    return layers.Resizing(height, width, interpolation="bilinear", name=name)(x, training=False)


def augment(x, enabled: bool, seed: int | None = None, translate: float = 0.125, random_erasing: float = 0.0):
    """Training-only augmentation: random horizontal flip and random translation
    by up to ``translate`` of the image (1/8: the "pad 4 and crop 32" of CIFAR
    recipes; 0: flip only, no translation layer), by whole pixels (nearest),
    with zero fill. The output stays
    whole numbers 0..255, so it passes exactly into a model's uint8 input.

    Keras's image augmentation layers augment whenever they are called
    without ``training=False`` (a plain ``model(x)`` too), so these layers
    belong only in the training front of :func:`kerasalex.models.training_model`,
    never in a model that is saved for inference.

    ``random_erasing`` > 0 adds ``keras.layers.RandomErasing`` after them
    (also when ``enabled`` is False): with that probability per image, one
    rectangle of 2-33% of the area (Keras's default scale; Zhong et al. 2017
    use 2-40%) is filled with the constant 128 (mid-grey: about the mean
    pixel, which the models' rescaling maps to ~0, as timm's ``const`` mode).
    """
    if random_erasing:
        p = float(random_erasing)
        x = augment(x, enabled, seed, translate)
        # factor=(p, p): Keras draws each image's probability from
        # U(factor[0], factor[1]); a single float p would mean U(0, p).
        return layers.RandomErasing(
            factor=(p, p), scale=(0.02, 0.33), fill_value=128.0, value_range=(0, 255),
            seed=None if seed is None else seed + 2, name="augment_erasing",
        )(x)
    if not enabled:
        return x
    x = layers.RandomFlip("horizontal", seed=seed, name="augment_flip")(x)
    if not translate:
        return x
    x = layers.RandomTranslation(
        translate, translate, fill_mode="constant", fill_value=0.0, interpolation="nearest",
        seed=None if seed is None else seed + 1, name="augment_translate",
    )(x)
    return x


def rescale_symmetric(x):
    """uint8 [0, 255] -> [-1, 1], as the study (``x / 127.5 - 1``)."""
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)


def imagenet_normalize(x):
    """uint8 [0, 255] -> torchvision's ImageNet normalization ((x/255 - mean) / std),
    as a per-channel ``Rescaling``: ``x * (1 / (255 std)) - mean / std``.

    Not ``keras.layers.Normalization``: Keras 3.15's ONNX export (tf2onnx
    1.17) turns that layer's constant mean and variance into extra required
    graph inputs, so the exported file cannot run on images alone.
    """
    scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
    offset = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    return layers.Rescaling(scale=scale, offset=offset, name="normalize")(x)


def vgg_preprocess(x):
    """``keras.applications.vgg16.preprocess_input`` in stock Keras, bit for
    bit: ``normalize`` (a ``Rescaling`` by 1 with per-channel offsets)
    subtracts the caffe means (in RGB order), then
    ``keras.ops.flip`` reverses the channels (a ``Flip`` op in the functional
    graph: no weights, serialized and loaded by plain Keras):
    ``(x - mean_rgb)[..., ::-1] == x[..., ::-1] - mean_bgr``.

    (Folding the flip into ``block1_conv1``'s kernel instead would cost no op
    but is not exact, max |diff| 2e-6 of the features' range, and would leave
    a ``vgg16`` base that no longer takes ``preprocess_input``'s BGR; a frozen
    permutation ``Dense(3)`` is exact too but adds 9 parameters.)
    """
    # x * 1 + (-mean) == x - mean exactly; a Rescaling, not a Normalization
    # (see imagenet_normalize: ONNX export).
    x = layers.Rescaling(scale=1.0, offset=[-m for m in VGG_BGR_MEAN[::-1]], name="normalize")(x)
    return ops.flip(x, axis=-1)


def resize_center_crop(x, resize: int, crop: int):
    """torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` for square inputs,
    as layers (on float input: see :func:`resize`)."""
    x = layers.Resizing(resize, resize, interpolation="bilinear", name="resize")(x, training=False)  # see resize()
    if crop != resize:
        x = layers.CenterCrop(crop, crop, name="center_crop")(x, training=False)
    return x


def check_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """``class_names`` as strings ("0".."n-1" when None), checked against ``num_classes``."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names must have num_classes={num_classes} entries. Received {len(class_names)}: {list(class_names)[:5]}..."
        )
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    return [str(c) for c in class_names]


# --------------------------------------------------------------------------
# Legacy layers: models written by earlier kerasalex versions hold them. They stay
# registered so kerasalex.files.load_model still reads those files; no
# builder uses them (files with them need `import kerasalex` to load).
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kerasalex")
class ClassNames(layers.Layer):
    """Legacy: an identity on the logits that carried the class names (and
    cast the logits to float32). Class names now travel in the ``.keras``
    archive's metadata.json (:func:`kerasalex.files.read_model_metadata`)."""

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
    """Legacy: reversed the channel axis (RGB -> BGR); see :func:`vgg_preprocess`."""

    def call(self, inputs):
        return ops.flip(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def class_names_head(logits, class_names: Sequence[str] | None, num_classes: int):
    """Legacy: attaches a :class:`ClassNames` identity to the logits (the
    layout of models written by earlier versions; the builders no longer use it)."""
    return ClassNames(check_class_names(class_names, num_classes), name="class_names")(logits)
