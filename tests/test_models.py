"""The model table: every architecture builds, runs on raw uint8, keeps its
config, and reloads (safe mode) to identical outputs."""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pytest

import kerasalex
from kerasalex import files
from kerasalex.models import ARCHITECTURES, build_model, get_architecture, get_class_names
from tests.conftest import run_python

# One row per architecture: small, fast build arguments.
MODEL_TABLE = {
    "alexnet": dict(input_shape=(32, 32, 3)),
    "alexnet-torch": dict(input_shape=(32, 32, 3), resize=96, crop=96),
    "vgg16": dict(input_shape=(32, 32, 3), input_size=32, base_weights=None),
}


def _available(arch):
    module = ARCHITECTURES[arch].builder.split(":")[0]
    return importlib.util.find_spec(module) is not None


def _build(arch, **kw):
    if not _available(arch):
        pytest.skip(f"{arch} builder not present")
    fn = get_architecture(arch).builder_fn()
    return fn(num_classes=3, class_names=["a", "b", "c"], **MODEL_TABLE[arch], **kw)


def test_table_covers_every_architecture():
    assert set(MODEL_TABLE) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(MODEL_TABLE))
def test_shape_no_nan_class_names(arch):
    model = _build(arch)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 3)
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    assert model.input.dtype == "uint8"
    assert get_class_names(model) == ["a", "b", "c"]


@pytest.mark.parametrize("arch", sorted(MODEL_TABLE))
def test_config_round_trip(arch):
    model = _build(arch)
    clone = keras.Model.from_config(model.get_config())
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    assert clone.count_params() == model.count_params()


@pytest.mark.parametrize("arch", sorted(MODEL_TABLE))
def test_keras_file_reloads_identically_with_safe_mode(arch, tmp_path):
    model = _build(arch)
    x = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    path = files.save_model(model, tmp_path / f"{arch}.keras")
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))
    assert get_class_names(again) == ["a", "b", "c"]


# --- the scratch AlexNet, exactly the study's stack --------------------------


def test_alexnet_parameter_count_is_the_studys():
    model = build_model("alexnet", num_classes=10)
    assert model.count_params() == 29_585_290


def test_alexnet_layer_stack():
    model = build_model("alexnet", num_classes=10)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [96, 256, 384, 384, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert all(c.activation.__name__ == "relu" for c in convs)
    pools = [l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]
    assert len(pools) == 3 and all(p.pool_size == (3, 3) and p.strides == (2, 2) for p in pools)
    names = [l.name for l in model.layers]
    # pools right after conv 1, 2 and 5
    assert names.index("block1_pool") == names.index("block1_conv1") + 1
    assert names.index("block2_pool") == names.index("block2_conv1") + 1
    assert names.index("block3_pool") == names.index("block3_conv3") + 1
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [d.units for d in dense] == [4096, 4096, 10]
    assert model.get_layer("block3_pool").output.shape[1:] == (3, 3, 256)
    assert not any(isinstance(l, keras.layers.Dropout) for l in model.layers)
    assert not any("augment" in n for n in names)


def test_alexnet_rescales_to_minus_one_one_inside_the_model():
    model = build_model("alexnet", num_classes=10)
    rescale = model.get_layer("rescale")
    out = keras.Model(model.input, rescale.output).predict(np.array([[[[0, 255, 127]] * 32] * 32], np.uint8), verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 1.0, 127 / 127.5 - 1], atol=1e-6)


def test_alexnet_dropout_and_augmentation_are_training_only():
    model = build_model("alexnet", num_classes=4, augment=True, dropout=0.5, seed=3)
    assert sum(isinstance(l, keras.layers.Dropout) for l in model.layers) == 2
    x = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    a, b = model(x, training=False), model(x, training=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    t1, t2 = model(x, training=True), model(x, training=True)
    assert not np.allclose(np.asarray(t1), np.asarray(t2))


def test_alexnet_other_input_sizes():
    model = build_model("alexnet", num_classes=5, input_shape=(64, 48, 3))
    assert model.predict(np.zeros((1, 64, 48, 3), np.uint8), verbose=0).shape == (1, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=10, input_shape=(8, 8, 3)), "at least 16"),
        (dict(num_classes=10, input_shape=(32, 32, 1)), "input_shape"),
        (dict(num_classes=10, dropout=1.0), "dropout"),
        (dict(num_classes=3, class_names=["a"]), "class_names"),
    ],
)
def test_alexnet_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("alexnet", **kwargs)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_model("resnet", num_classes=10)


def test_mixed_precision_keeps_logits_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("alexnet", num_classes=10)
        assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
        assert model.output.dtype == "float32"
        y = model.predict(np.zeros((1, 32, 32, 3), np.uint8), verbose=0)
        assert y.dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_saved_model_loads_in_a_fresh_process_and_predicts_identically(tmp_path):
    model = build_model("alexnet", num_classes=10, class_names=[f"c{i}" for i in range(10)], augment=True, dropout=0.5)
    x = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    files.save_model(model, tmp_path / "m.keras")
    code = f"""
import numpy as np, keras, kerasalex
m = keras.saving.load_model({str(tmp_path / 'm.keras')!r})  # safe_mode defaults to True
y = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)
np.testing.assert_array_equal(y, np.load({str(tmp_path / 'y.npy')!r}))
print("classes", kerasalex.models.get_class_names(m)[:2], m.input_shape, m.input.dtype)
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "classes ['c0', 'c1'] (None, 32, 32, 3) uint8" in r.stdout
