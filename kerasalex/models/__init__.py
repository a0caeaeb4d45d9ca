"""The model table: architecture name -> builder and its defaults.

Adding an architecture costs one module with a ``build_*`` function, one row
in :data:`ARCHITECTURES` and one row in the tests' model table.

Every builder is a plain function returning a functional ``keras.Model`` whose
input is raw uint8 RGB images and whose output is float32 logits followed by a
:class:`kerasalex.preprocessing.ClassNames` identity that carries the class
names. They share these arguments: ``num_classes``, ``input_shape``,
``class_names``, ``augment``, ``seed``; architecture-specific arguments follow.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One row of the model table.

    Attributes:
        name: the ``--arch`` name.
        builder: ``"module:function"`` of the builder, imported on first use.
        description: one line for ``kerasalex models``.
        image_size: the size images are fed at by default (folder images are
            resized to it on the host; the model may resize further inside).
        min_image_size: the smallest input side the builder accepts.
        resize: how images of another shape are made square by default
            (:class:`kerasalex.data.ResizeRule`): ``"crop"`` (shorter side,
            centre crop) for ImageNet weights, which were trained and
            evaluated that way; ``"squash"`` for a model trained from scratch.
        fit: optional custom training loop (see :meth:`fit_fn`).
    """

    name: str
    builder: str
    description: str
    image_size: int = 32
    min_image_size: int = 16
    resize: str = "squash"
    fit: str | None = None

    def fit_fn(self) -> Callable[..., Any] | None:
        """The architecture's own training loop (``"module:function"``), if it
        has one, called as ``fit(model, config, data, callbacks, verbose,
        initial_epoch) -> model``; None means :func:`kerasalex.training.fit_standard`."""
        if self.fit is None:
            return None
        module, func = self.fit.split(":")
        return getattr(importlib.import_module(module), func)

    def builder_fn(self) -> Callable[..., Any]:
        module, func = self.builder.split(":")
        return getattr(importlib.import_module(module), func)

    def builder_args(self) -> set[str]:
        return set(inspect.signature(self.builder_fn()).parameters)

    def build(self, **kwargs):
        """Calls the builder with the arguments it accepts; ``None`` values are
        dropped so unset options keep the builder's defaults."""
        accepted = self.builder_args()
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k in accepted}
        return self.builder_fn()(**kwargs)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture(
            "alexnet",
            "kerasalex.models.alexnet:build_alexnet",
            "the study's scratch AlexNet for 32x32 images (29.6M parameters)",
            image_size=32,
            min_image_size=16,
        ),
        Architecture(
            "alexnet-torch",
            "kerasalex.models.torch_alexnet:build_torch_alexnet",
            "torchvision's ImageNet AlexNet (weights ported from PyTorch), fed at 224 px inside the model",
            image_size=32,
            min_image_size=8,
            resize="crop",  # torchvision's Resize(256) + CenterCrop(224)
        ),
        Architecture(
            "vgg16",
            "kerasalex.models.vgg16:build_vgg16_transfer",
            "ImageNet VGG16 base (frozen by default) + the study's dense head, fed at 224 px inside the model",
            image_size=32,
            min_image_size=8,
            resize="crop",  # VGG's ImageNet training: isotropic rescale + crop
            fit="kerasalex.transfer:fit_transfer",
        ),
    ]
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; expected one of: {', '.join(ARCHITECTURES)}"
        ) from None


def build_model(arch: str, **kwargs):
    """Builds ``arch`` from the table. See :class:`Architecture.build`."""
    return get_architecture(arch).build(**kwargs)


def get_class_names(model) -> list[str]:
    """The class names a kerasalex model carries (its ``class_names`` layer)."""
    from kerasalex.preprocessing import ClassNames

    for layer in reversed(model.layers):
        if isinstance(layer, ClassNames):
            return list(layer.class_names)
    n = int(model.output_shape[-1])
    return [str(i) for i in range(n)]


def get_image_shape(model) -> tuple:
    """The (H, W, C) input shape of a model (H, W may be None)."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape[1:])


__all__ = ["ARCHITECTURES", "Architecture", "build_model", "get_architecture", "get_class_names", "get_image_shape"]
