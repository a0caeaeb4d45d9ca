"""The model table: architecture name -> builder and its defaults.

Adding an architecture costs one module with a ``build_*`` function, one row
in :data:`ARCHITECTURES` and one row in the tests' model table.

Every builder is a plain function returning the *inference* model: a
functional ``keras.Model`` of stock Keras layers only, whose input is raw
uint8 RGB images of any size (it resizes them itself) and whose output is
float32 logits. Its class names and the image size it is fed at ride on the
model object (:func:`get_class_names`, :func:`get_image_shape`) and are
written into the ``.keras`` archive by :func:`kerasalex.files.save_model`. The
builders share these arguments: ``num_classes``, ``input_shape`` (the size
images are fed at), ``class_names``, ``seed``; architecture-specific
arguments follow.

Training-only augmentation is not in it: :func:`training_model` puts the
augmentation front before it for ``fit``, and :func:`inference_model` takes
it back out, so every file a user gets holds the inference model, and
``model(x)``, ``model.predict(x)`` and every exported graph compute the same
deterministic function.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable, Sequence


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
        loop: the training loop :mod:`kerasalex.training` runs for it:
            ``"standard"`` (one ``fit``) or ``"transfer"`` (frozen-base head
            training, then optional fine-tuning). A name, so the model table
            never imports training code.
        weights_option: the :class:`kerasalex.config.TrainConfig` field that
            holds its pretrained weights (``"weights"``: the whole network;
            ``"base_weights"``: the base of a transfer model), or None when it
            only trains from scratch.
        weights_required: whether it needs a weights file to be worth
            training in the study (a ported network without its weights is a
            random one).
        study_label: its row label in ``kerasalex study``; None = not in the
            study's default model list.
        study_weights_flag: the ``kerasalex study`` option (without ``--``)
            that passes its pretrained weights, when it has one.
    """

    name: str
    builder: str
    description: str
    image_size: int = 32
    min_image_size: int = 16
    resize: str = "squash"
    loop: str = "standard"
    weights_option: str | None = None
    weights_required: bool = False
    study_label: str | None = None
    study_weights_flag: str | None = None

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
            study_label="AlexNet from scratch (the study's 32x32 AlexNet)",
        ),
        Architecture(
            "alexnet-torch",
            "kerasalex.models.torch_alexnet:build_torch_alexnet",
            "torchvision's ImageNet AlexNet (weights ported from PyTorch), fed at 224 px inside the model",
            image_size=32,
            min_image_size=8,
            resize="crop",  # torchvision's Resize(256) + CenterCrop(224)
            weights_option="weights",
            weights_required=True,
            study_label="torchvision AlexNet with ImageNet weights, fine-tuned",
            study_weights_flag="alexnet-weights",
        ),
        Architecture(
            "vgg16",
            "kerasalex.models.vgg16:build_vgg16_transfer",
            "ImageNet VGG16 base (frozen by default) + the study's dense head, fed at 224 px inside the model",
            image_size=32,
            min_image_size=8,
            resize="crop",  # VGG's ImageNet training: isotropic rescale + crop
            loop="transfer",
            weights_option="base_weights",
            study_label="VGG16 transfer: ImageNet base + the study's dense head",
            study_weights_flag="vgg-weights",
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


# --------------------------------------------------------------------------
# What a model object knows about itself (written to / read from the
# archive's metadata.json by kerasalex.files.save_model / load_model)
# --------------------------------------------------------------------------

_INFO_ATTR = "_kerasalex_info"


def _info(model) -> dict:
    return getattr(model, _INFO_ATTR, None) or {}


def set_model_info(model, class_names: Sequence[str] | None = None, image_shape: Sequence[int | None] | None = None):
    """Attaches the class names and the image shape it is fed at to ``model``
    (a plain attribute, outside Keras's tracking; returns ``model``)."""
    info = dict(_info(model))
    if class_names is not None:
        info["class_names"] = [str(c) for c in class_names]
    if image_shape is not None:
        info["image_shape"] = [None if d is None else int(d) for d in image_shape]
    object.__setattr__(model, _INFO_ATTR, info)
    return model


def get_class_names(model) -> list[str]:
    """The class names of a kerasalex model: those attached by its builder or
    read from its file (:func:`kerasalex.files.read_model_metadata`), else a legacy ``class_names``
    layer's, else "0".."n-1"."""
    names = _info(model).get("class_names")
    if names:
        return list(names)
    from kerasalex.preprocessing import ClassNames

    for m in (model, inference_model(model)):
        for layer in reversed(m.layers):
            if isinstance(layer, ClassNames) and layer.class_names:
                return list(layer.class_names)
    n = int(model.output_shape[-1])
    return [str(i) for i in range(n)]


def get_image_shape(model) -> tuple:
    """The (H, W, 3) a model is fed at: what its builder or file recorded,
    else its input shape (H, W may be None; the models resize any size)."""
    shape = _info(model).get("image_shape")
    if shape:
        return tuple(shape)
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape[1:])


def model_info(model) -> dict:
    """``{"class_names": [...], "image_shape": [...]}`` of ``model`` (what
    :func:`kerasalex.files.save_model` writes into the archive's metadata)."""
    return {"class_names": get_class_names(model), "image_shape": list(get_image_shape(model))}


# --------------------------------------------------------------------------
# Training front: augmentation for fit only
# --------------------------------------------------------------------------

TRAINING_SUFFIX = "_training"


def training_model(model, augment: bool = False, seed: int | None = None):
    """The model ``fit`` trains: ``model`` nested behind the training-only
    augmentation front (random flip + translation when ``augment``).

    The two share every weight, so training this trains ``model``; the
    front's layers exist only here, so ``model`` (what :func:`inference_model`
    returns, and what every user-facing file holds) never augments. The
    resume state saves this model, with its optimizer and random-layer states.

    Args:
        model: an inference model from a builder (uncompiled).
        augment: add the augmentation front.
        seed: the augmentation layers' seed (``seed``, ``seed + 1``).
    """
    import keras

    from kerasalex import preprocessing

    if is_training_model(model):
        raise ValueError(f"model {model.name!r} is already a training model")
    inputs = keras.Input(shape=tuple(model.input.shape[1:]), dtype=model.input.dtype, name="image")
    x = preprocessing.augment(inputs, augment, seed)
    trainer = keras.Model(inputs, model(x), name=f"{model.name}{TRAINING_SUFFIX}")
    object.__setattr__(trainer, _INFO_ATTR, dict(_info(model)))
    return trainer


def is_training_model(model) -> bool:
    """Whether ``model`` is a :func:`training_model` front around an inference model."""
    name = getattr(model, "name", "") or ""
    if not name.endswith(TRAINING_SUFFIX):
        return False
    inner = name[: -len(TRAINING_SUFFIX)]
    return any(layer.name == inner and hasattr(layer, "layers") for layer in getattr(model, "layers", ()))


def inference_model(model):
    """The inference model inside a :func:`training_model` (``model`` itself
    when it is not one); it carries the front's class names and image shape."""
    if not is_training_model(model):
        return model
    inner = model.get_layer(model.name[: -len(TRAINING_SUFFIX)])
    if _info(model) and not _info(inner):
        object.__setattr__(inner, _INFO_ATTR, dict(_info(model)))
    return inner


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "build_model",
    "get_architecture",
    "get_class_names",
    "get_image_shape",
    "inference_model",
    "is_training_model",
    "model_info",
    "set_model_info",
    "training_model",
]
