"""torchvision's AlexNet in Keras (kerasalex.models.torch_alexnet), without torch.

The numeric equivalence with torch is in test_porting.py; here: the layer
stack, the in-model preprocessing, saving/reloading, freezing, loading ported
weights and a training step on 32x32 uint8 images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kerasalex.models import build_model
from kerasalex.models.torch_alexnet import (
    CONV_LAYERS,
    DENSE_LAYERS,
    MIN_CROP,
    build_torch_alexnet,
    build_torch_alexnet_core,
)

# Small resize/crop keep the tests fast; 95 is the smallest crop (a 2x2 map before the adaptive pool).
SMALL = dict(resize=96, crop=95)
TORCH_KEYS = (
    ["features_0", "features_1", "features_2", "features_3", "features_4", "features_5", "features_6",
     "features_7", "features_8", "features_9", "features_10", "features_11", "features_12", "avgpool"]
    + [f"classifier_{i}" for i in range(7)]
)
CONV_PARAMS = 23_296 + 307_392 + 663_936 + 884_992 + 590_080  # the five torch convs


def _images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model10():
    """The CIFAR-10 fine-tuning graph at its real sizes (32 px in, 256 resize, 224 crop), via the table."""
    return build_model("alexnet-torch", num_classes=10, input_shape=(32, 32, 3), class_names=[f"c{i}" for i in range(10)], seed=0)


def test_imagenet_model_has_torchvision_parameter_count():
    model = build_torch_alexnet()
    assert model.count_params() == 61_100_840
    assert model.output_shape == (None, 1000)
    core = build_torch_alexnet_core()
    assert core.count_params() == 61_100_840
    # The weight-bearing layers match one to one, so a .weights.h5 fits both.
    assert [w.path for w in core.weights] == [w.path for w in model.weights]


def test_layer_names_mirror_torch_keys(model10):
    names = [layer.name for layer in model10.layers]
    stack = [n for n in names if n.startswith(("features_", "classifier_", "avgpool")) and not n.endswith("_pad")]
    assert stack == TORCH_KEYS
    for conv in CONV_LAYERS:
        assert names[names.index(conv) - 1] == f"{conv}_pad"
    # torch's symmetric padding is explicit; the convs themselves are "valid".
    assert model10.get_layer("features_0_pad").padding == ((2, 2), (2, 2))
    assert model10.get_layer("features_3_pad").padding == ((2, 2), (2, 2))
    assert model10.get_layer("features_6_pad").padding == ((1, 1), (1, 1))
    for conv, (k, s) in zip(CONV_LAYERS, [(11, 4), (5, 1), (3, 1), (3, 1), (3, 1)]):
        layer = model10.get_layer(conv)
        assert (layer.padding, layer.kernel_size, layer.strides) == ("valid", (k, k), (s, s))
    assert type(model10.get_layer("avgpool")).__name__ == "AdaptiveAveragePooling2D"
    assert model10.get_layer("classifier_6").dtype_policy.compute_dtype == "float32"
    # Preprocessing is inside: raw uint8 of any size in, normalize + resize + crop before the stack.
    assert model10.input.dtype == "uint8" and model10.input_shape == (None, None, None, 3)
    assert names[:4] == ["image", "normalize", "resize", "center_crop"]
    assert model10.get_layer("features_0_pad").input.shape[1:] == (224, 224, 3)


def test_32px_uint8_forward_is_finite(model10):
    out = np.asarray(model10.predict(_images(3), verbose=0))
    assert out.shape == (3, 10)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert not np.allclose(out[0], out[1])


def test_normalization_is_torchvision_imagenet(model10):
    import keras

    upto = keras.Model(model10.input, model10.get_layer("center_crop").output)
    value = 200
    x = np.full((1, 32, 32, 3), value, dtype=np.uint8)
    got = np.asarray(upto(x))
    expected = (value / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert got.shape == (1, 224, 224, 3)
    np.testing.assert_allclose(got[0, 100, 100], expected, rtol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 5, 6, 7, 8, 9, 11, 13, 17])
def test_adaptive_pool_is_torch_adaptive_avg_pool(n):
    """torch: output cell i averages input rows floor(i*n/6) .. ceil((i+1)*n/6) - 1."""
    import keras

    x = np.random.default_rng(n).standard_normal((1, n, n + 1, 4)).astype(np.float32)
    got = np.asarray(keras.layers.AdaptiveAveragePooling2D(6)(x))

    def bounds(size):
        return [(math.floor(i * size / 6), math.ceil((i + 1) * size / 6)) for i in range(6)]

    expected = np.zeros((1, 6, 6, 4), np.float32)
    for i, (h0, h1) in enumerate(bounds(n)):
        for j, (w0, w1) in enumerate(bounds(n + 1)):
            expected[0, i, j] = x[0, h0:h1, w0:w1].mean(axis=(0, 1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_save_and_reload_predict_identically(model10, tmp_path):
    from kerasalex.files import load_model, save_model
    from kerasalex.models import get_class_names

    path = save_model(model10, tmp_path / "alexnet_torch.keras")
    reloaded = load_model(path)
    x = _images(2, seed=1)
    np.testing.assert_array_equal(np.asarray(reloaded.predict(x, verbose=0)), np.asarray(model10.predict(x, verbose=0)))
    assert get_class_names(reloaded) == [f"c{i}" for i in range(10)]
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model10.layers]


def test_freeze_base_freezes_the_five_convs_only():
    model = build_torch_alexnet(10, input_shape=(32, 32, 3), freeze_base=True, **SMALL)
    frozen = {w.path.split("/")[0] for w in model.non_trainable_weights}
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert frozen == set(CONV_LAYERS)
    assert trainable == set(DENSE_LAYERS)
    n_trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert n_trainable == model.count_params() - CONV_PARAMS
    unfrozen = build_torch_alexnet(10, input_shape=(32, 32, 3), **SMALL)
    assert not unfrozen.non_trainable_weights


@pytest.mark.parametrize("freeze_base", [False, True])
def test_one_training_step_at_32px(freeze_base):
    import keras

    from kerasalex.models import training_model

    model = training_model(build_torch_alexnet(10, input_shape=(32, 32, 3), seed=1, freeze_base=freeze_base, **SMALL),
                           augment=True, seed=1)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = {w.path: np.array(w) for w in model.weights if "seed_generator" not in w.path}
    x, y = _images(8, seed=2), np.arange(8) % 10
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = {w.path: np.array(w) for w in model.weights if "seed_generator" not in w.path}
    for path, value in before.items():
        layer = path.split("/")[0]
        changed = not np.array_equal(value, after[path])
        assert changed == (not (freeze_base and layer in CONV_LAYERS)), path


def test_weights_h5_copies_all_but_head(tmp_path):
    donor = build_torch_alexnet_core(1000, dropout=0.0)
    rng = np.random.default_rng(3)
    for w in donor.weights:  # recognisable values, not the initializers'
        w.assign(rng.standard_normal(w.shape).astype(np.float32) * 0.01)
    path = tmp_path / "ported.weights.h5"
    donor.save_weights(path)

    model = build_torch_alexnet(10, input_shape=(32, 32, 3), weights=str(path), **SMALL)
    for name in CONV_LAYERS + DENSE_LAYERS[:-1]:
        for got, want in zip(model.get_layer(name).get_weights(), donor.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    head = model.get_layer("classifier_6")
    assert head.kernel.shape == (4096, 10)
    assert not np.allclose(np.asarray(head.kernel), 0.0)
    # The ported ImageNet weights also load straight into the 1000-class model.
    imagenet = build_torch_alexnet(1000)
    imagenet.load_weights(path)
    np.testing.assert_array_equal(np.asarray(imagenet.get_layer("classifier_6").kernel), np.asarray(donor.get_layer("classifier_6").kernel))


def test_weights_keras_copies_all_but_head(tmp_path):
    from kerasalex.files import save_model

    donor = build_torch_alexnet(1000, **SMALL)
    path = save_model(donor, tmp_path / "ported.keras")
    model = build_torch_alexnet(10, input_shape=(32, 32, 3), weights=str(path), freeze_base=True, **SMALL)
    for name in CONV_LAYERS + DENSE_LAYERS[:-1]:
        for got, want in zip(model.get_layer(name).get_weights(), donor.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    assert model.get_layer("classifier_6").kernel.shape == (4096, 10)
    assert not model.get_layer("features_0").trainable


def test_weights_of_another_model_is_one_clear_error(tmp_path):
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(ValueError, match=r"not a ported 1000-class torchvision AlexNet") as info:
        build_torch_alexnet(10, input_shape=(32, 32, 3), weights=str(path), **SMALL)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"weights file not found"):
        build_torch_alexnet(10, weights=str(tmp_path / "missing.weights.h5"), **SMALL)
    (tmp_path / "x.pth").write_bytes(b"0")
    with pytest.raises(ValueError, match=r"\.weights\.h5 or \.keras"):
        build_torch_alexnet(10, weights=str(tmp_path / "x.pth"), **SMALL)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=1), r"num_classes must be an integer >= 2\. Received: num_classes=1"),
        (dict(num_classes=10, dropout=1.0), r"Received: dropout=1\.0"),
        (dict(num_classes=10, resize=96, crop=128), r"Received: crop=128"),
        (dict(num_classes=10, resize=96, crop=MIN_CROP - 1), rf"Received: crop={MIN_CROP - 1}"),
        (dict(num_classes=10, input_shape=(4, 4, 3)), r"Received: input_shape=\(4, 4, 3\)"),
        (dict(num_classes=10, input_shape=(32, 32, 1)), r"Received: input_shape=\(32, 32, 1\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_torch_alexnet(**kwargs)


def test_core_rejects_too_small_or_unknown_sizes():
    with pytest.raises(ValueError, match=r"Received: input_shape=\(64, 64, 3\)"):
        build_torch_alexnet_core(10, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"Received: input_shape=\(None, None, 3\)"):
        build_torch_alexnet_core(10, input_shape=(None, None, 3))
