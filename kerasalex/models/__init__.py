"""The model table: architecture name -> builder and everything known about it.

Adding an architecture costs one module with a ``build_*`` function, one row
in :data:`ARCHITECTURES` and one row in the tests' model table
(``tests/test_registry.py``); see CONTRIBUTING.md. Its row holds its recipe
values, description, input size, pretrained-weight option, training loop,
study membership and the Keras classes its files hold (the checked loader's
allowlist, handed to :mod:`kerasalex.files` by :func:`model_file_rules`), so
no code outside ``models/`` branches on an architecture's name.

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
from typing import Any, Callable, Mapping, Sequence

from kerasalex import files

# Options `train` and `tune` pass to every builder, whatever the architecture
# (TrainConfig fields that always hold a value): a builder that does not take
# one ignores it. Any other option a builder does not take is an error.
SHARED_OPTIONS = frozenset({"dropout", "seed", "kernel_initializer", "head_initializer"})


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
        cpu_images_per_second: precision policy -> (training images/s at
            batch 128 and its image size, where it was measured) on the
            reference CPU (:data:`kerasalex.training.MEASURED_ON`; keys
            ending in ``":avx2"``: float32 on a CPU without AVX-512,
            :data:`kerasalex.training.MEASURED_ON_AVX2`; ending in
            ``":amx"``: bfloat16 on a CPU with AMX,
            :data:`kerasalex.training.MEASURED_ON_AMX`), quoted by a run's
            first line.
        study_weights_flag: the ``kerasalex study`` option (without ``--``)
            that passes its pretrained weights, when it has one.
        recipes: its values per recipe (``{"default": {...}, "study":
            {...}}``, :class:`kerasalex.config.TrainConfig` field names): they
            override the recipe's shared values
            (:data:`kerasalex.config.RECIPES`), which override the dataclass
            defaults.
        layers: the Keras layer classes (``class_name``) its saved model
            holds; the checked loader (:func:`kerasalex.files.load_model`)
            refuses files with any class not on some row (or stock-safe).
        ops: the Keras operation classes (``keras.src.ops``) its functional
            graph calls, likewise allowed.
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
    recipes: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    layers: frozenset[str] = frozenset()
    ops: frozenset[str] = frozenset()
    cpu_images_per_second: Mapping[str, tuple[float, str]] = dataclasses.field(default_factory=dict)

    def builder_fn(self) -> Callable[..., Any]:
        module, func = self.builder.split(":")
        return getattr(importlib.import_module(module), func)

    def builder_args(self) -> set[str]:
        return set(inspect.signature(self.builder_fn()).parameters)

    def recipe(self, recipe: str) -> dict[str, Any]:
        """Its own values for ``recipe`` (empty when it has none)."""
        return dict(self.recipes.get(recipe, {}))

    def check_options(self, **kwargs):
        """Raises the one-line ValueError of :meth:`build` for a non-None
        option the builder does not take (so a run can refuse it before
        loading any data)."""
        params = inspect.signature(self.builder_fn()).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        given = {k: v for k, v in kwargs.items() if v is not None}
        refused = sorted(k for k in given if k not in params and k not in SHARED_OPTIONS)
        if refused:
            options = sorted(k for k in params if k not in ("num_classes", "input_shape", "class_names", "name"))
            raise ValueError(
                f"architecture {self.name!r} does not take the option {refused[0]} "
                f"(its builder's arguments: {', '.join(options)}). Received: {refused[0]}={given[refused[0]]!r}"
            )

    def build(self, **kwargs):
        """Calls the builder. ``None`` values are "unset" and dropped, so the
        builder's defaults hold; :data:`SHARED_OPTIONS` the builder does not
        take are dropped too.

        Raises:
            ValueError: a non-None option the builder does not take (such as
                ``weights`` for the scratch ``alexnet``), named with the
                architecture, in one line.
        """
        fn = self.builder_fn()
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        given = {k: v for k, v in kwargs.items() if v is not None}
        self.check_options(**given)
        return fn(**{k: v for k, v in given.items() if takes_any or k in params})


# The Keras classes every functional model holds, and the training front's
# (kerasalex.models.training_model, in resume files).
_FUNCTIONAL = frozenset({"InputLayer", "Functional"})
TRAINING_FRONT_LAYERS = _FUNCTIONAL | {"RandomFlip", "RandomTranslation", "RandomErasing"}
_CONV_NET = _FUNCTIONAL | {"Rescaling", "Resizing", "Conv2D", "MaxPooling2D", "Flatten", "Dropout", "Dense"}

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
            # Measured training speed (batch 128, 32 px; the default recipe until 2026-12-03) on 2
            # vCPUs of an AMD EPYC with AVX512-BF16, no GPU: what a run's
            # first line quotes. bfloat16: the README's 30-epoch CIFAR-10
            # run; float32: benchmarks/bench_gpu.py on 5,000 CIFAR-10 images.
            # "float32:avx2": 2 vCPUs of an AMD EPYC with AVX2 and no AVX-512
            # (kerasalex.training.MEASURED_ON_AVX2), the first epoch of a
            # CIFAR-10 run (45,000 images, batch 128; history.csv).
            # "mixed_bfloat16:amx": 2 vCPUs of an Intel Xeon with AMX-BF16
            # (kerasalex.training.MEASURED_ON_AMX), the median Done-line
            # images/s of four `train --limit 12800 --epochs 2 --batch-size
            # 128 --lr 0.04` runs (README, "Benchmarks"); batch 64 trains
            # ~20% fewer images/s there.
            cpu_images_per_second={
                "mixed_bfloat16": (225.6, "the README's 30-epoch batch-128 CIFAR-10 run"),
                "float32": (137.0, "benchmarks/bench_gpu.py"),
                "float32:avx2": (34.8, "an epoch of the README's 5-epoch batch-128 CIFAR-10 run"),
                "mixed_bfloat16:amx": (484.0, "paired 2-epoch batch-128 runs on 12,800 CIFAR-10 images"),
            },
            recipes={
                # No dropout at every budget; batch 128 with lr 0.04 in runs of
                # at least 1,400 steps at batch 128 (CIFAR-10's 45,000 images
                # from 4 epochs, so the default 30), else batch 64 with lr
                # 0.02, and at least 2,500 optimizer steps per run (see
                # kerasalex.config.auto_batch_size: the batch halves, never
                # below 16, only on small datasets or short budgets;
                # CIFAR-10's 45,000 images get batch 32 for 3 epochs or
                # fewer). Measured on CIFAR-10's 45,000 images (README,
                # "Results", 2 vCPUs AMD EPYC, bfloat16): 5 epochs, batch 128
                # + dropout 0.5 73.9% held-out, batch 128 without 77.0%,
                # batch 64 without 81.0%; 8 epochs of the previous default,
                # batch 128 + dropout: 79.98%; 30 epochs at batch 64 without
                # dropout 87.24% (88.48% with flip TTA) vs batch 128 +
                # dropout 86.36% (86.56%). Dropout also slows the small runs:
                # digits, 5 epochs at batch 16, 93.1% test with dropout 0.5,
                # 97.5% without. 1,000 steps (the rule's first value) got
                # every small run off the chance plateau. The rest of the
                # default recipe is TrainConfig's defaults (SGD + Nesterov,
                # warm-up + cosine, flip + translate, label smoothing 0.1,
                # weight decay 5e-4). Runs of 10 epochs or fewer train with
                # random flips only, no translation (translate_min_epochs=11):
                # measured flip-only vs with it (README, "Results" and "Recipe
                # ablations"), CIFAR-10's 45,000 images at batch 64: 4 epochs
                # 80.94% vs 78.92% held-out, 5 epochs 82.42% vs 81.02%, 10
                # epochs 85.20% vs 84.90% (a tie; training accuracy 96.5% vs
                # 88.3%); 1,000 images per class: 5 epochs 68.84% vs 63.30%
                # test, 10 epochs 74.40% vs 72.44%; digits, 5 epochs: 98.33%
                # vs 97.5%. The 30-epoch run keeps it (87.24%; training
                # accuracy 98.6% even with it). Batch 128 and lr 0.04 (the
                # linear scaling rule, Goyal et al. 2017: twice batch 64's
                # 0.02) from 1,400 steps at 128: a step's fixed cost (the
                # weight casts and the SGD update over 29.6M parameters,
                # memory traffic) makes batch 64 train 0.77-0.80x the images/s
                # of batch 128 on 2 vCPUs of an Intel Xeon with AMX-BF16
                # (README, "Benchmarks"; 6-13% fewer on the AMD EPYC,
                # benchmarks/bench_batch_speed.py), so batch 64's extra steps
                # per epoch do not pay per second there: CIFAR-10, flip only,
                # batch 128 5 epochs 81.30% held-out in 487 s (Intel Xeon)
                # against batch 64 4 epochs 80.82-81.22% in 487-496 s (the
                # same CPU type, a day before), and 30 epochs 87.50% (88.68%
                # flip TTA) against batch 64's 87.24% (88.48%). lr 0.08 at
                # batch 128 did worse (4 epochs: 77.54% vs 0.04's
                # 79.32%). Below 1,400 steps (small datasets, CIFAR-10 in 3
                # epochs or fewer) batch 64 and lr 0.02 stay, where the
                # min-steps rule starts from them (digits, 1,000 images per
                # class: the figures above).
                "default": dict(batch_size=64, dropout=0.0, min_steps=2500, translate_min_epochs=11,
                                long_run_steps=1400, long_run_batch_size=128, long_run_lr=0.04),
            },
            layers=_CONV_NET,
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
            recipes={
                # Fine-tuned from ImageNet weights. lr 0.01 (half the scratch
                # 0.02: the pretrained features should move, not be relearned)
                # with a 1-epoch warm-up, so the random new head's early
                # gradients do not wreck them, then cosine decay; 10 epochs,
                # since a pretrained net converges in a few; batch 64, since
                # every image is 224 px inside the model (~50x the compute of
                # a 32 px image); weight decay 1e-4 (torchvision's AlexNet
                # recipe); dropout 0.5 (its own); augment + label smoothing
                # 0.1 as our other recipes; all layers trained, as the study.
                "default": dict(
                    optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
                    label_smoothing=0.1, schedule="cosine", warmup_epochs=1.0, augment=True,
                    batch_size=64, epochs=10, dropout=0.5, freeze_base=False,
                ),
                # torchvision's AlexNet keeps its two Dropout(0.5) layers in train mode.
                "study": dict(dropout=0.5, freeze_base=False),
            },
            layers=_CONV_NET | {"ZeroPadding2D", "ReLU", "AdaptiveAveragePooling2D", "CenterCrop"},
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
            recipes={
                # Two stages (kerasalex.transfer). Stage 1: the study's head
                # over the frozen ImageNet base, trained on cached base
                # features (so no augmentation: the cache needs the same input
                # every epoch), which makes an epoch cost a few dense layers.
                # Adam 1e-3 with a 1-epoch warm-up and cosine decay, batch 128,
                # 10 epochs; dropout 0.5 and label smoothing 0.1 against the
                # study's head, which memorised the training set by epoch 7
                # (train 100%, val loss rising). Stage 2: the keras-io recipe,
                # block5 unfrozen at Adam 1e-5 (cosine-decayed) for 8 epochs,
                # end to end at 224 px; weight decay 0 (Keras's decoupled decay
                # is scaled by the learning rate, so it would be inert at 1e-5).
                "default": dict(
                    optimizer="adam", lr=1e-3, weight_decay=0.0, label_smoothing=0.1, schedule="cosine",
                    warmup_epochs=1.0, augment=False, batch_size=128, epochs=10, dropout=0.5, freeze_base=True,
                    fine_tune_epochs=8, unfreeze_from="block5_conv1", fine_tune_lr=1e-5,
                ),
                "study": dict(epochs=10, freeze_base=True, fine_tune_epochs=0),
            },
            layers=_CONV_NET,
            ops=frozenset({"Flip"}),  # the RGB -> BGR flip of its preprocessing
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


def training_model(model, augment: bool = False, seed: int | None = None, random_erasing: float = 0.0,
                   translate: float = 0.125):
    """The model ``fit`` trains: ``model`` nested behind the training-only
    augmentation front (random flip + translation when ``augment``).

    The two share every weight, so training this trains ``model``; the
    front's layers exist only here, so ``model`` (what :func:`inference_model`
    returns, and what every user-facing file holds) never augments. The
    resume state saves this model, with its optimizer and random-layer states.

    Args:
        model: an inference model from a builder (uncompiled).
        augment: add the augmentation front.
        seed: the augmentation layers' seed (``seed``, ``seed + 1``, ``seed + 2``).
        random_erasing: probability of random erasing per image (0 = off);
            see :func:`kerasalex.preprocessing.augment`.
        translate: the largest random translation, as a fraction of the
            image side (0 = flip only).
    """
    import keras

    from kerasalex import preprocessing

    if is_training_model(model):
        raise ValueError(f"model {model.name!r} is already a training model")
    inputs = keras.Input(shape=tuple(model.input.shape[1:]), dtype=model.input.dtype, name="image")
    x = preprocessing.augment(inputs, augment, seed, translate=translate, random_erasing=random_erasing)
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


# --------------------------------------------------------------------------
# What kerasalex.files needs to save and check-load model files (it imports
# nothing from the package; this hands it the table's knowledge)
# --------------------------------------------------------------------------

# kerasalex's own serializable classes (registered as "kerasalex>Name"): the
# layers of files written by earlier versions, and the optimizer of resume
# states. Class name -> the module a file must name for it.
KERASALEX_CLASSES = {
    "ClassNames": "kerasalex.preprocessing",
    "ChannelReverse": "kerasalex.preprocessing",
    "FusedSGD": "kerasalex.optimizers",
}


def _register_classes() -> None:
    importlib.import_module("kerasalex.preprocessing")
    importlib.import_module("kerasalex.optimizers")


def _attach(model, class_names, image_shape) -> None:
    set_model_info(model, class_names=class_names, image_shape=image_shape)


def _describe(model) -> dict:
    return model_info(model) if _info(model) else {}


def _save_weights(model, path) -> None:
    from kerasalex import _keras_internals

    _keras_internals.lean_save_weights(model, path)


def model_file_rules() -> files.ModelFileRules:
    """The :class:`kerasalex.files.ModelFileRules` of the table as it is now:
    every architecture's ``layers`` and ``ops``, the training front's layers,
    kerasalex's own classes, and how a model's class names and image shape
    ride in its file. Installed in :mod:`kerasalex.files` on import."""
    layers = TRAINING_FRONT_LAYERS.union(*(a.layers for a in ARCHITECTURES.values()))
    ops = frozenset().union(*(a.ops for a in ARCHITECTURES.values()))
    return files.ModelFileRules(
        layers=layers | {n for n, m in KERASALEX_CLASSES.items() if m == "kerasalex.preprocessing"},
        ops=ops,
        classes=dict(KERASALEX_CLASSES),
        register_classes=_register_classes,
        describe=_describe,
        attach=_attach,
        save_weights=_save_weights,
    )


files.set_model_file_rules(model_file_rules)


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "KERASALEX_CLASSES",
    "SHARED_OPTIONS",
    "TRAINING_FRONT_LAYERS",
    "build_model",
    "get_architecture",
    "get_class_names",
    "get_image_shape",
    "inference_model",
    "is_training_model",
    "model_file_rules",
    "model_info",
    "set_model_info",
    "training_model",
]
