"""The model table: every architecture builds, runs on raw uint8 images of
any size, keeps its config, is made of stock Keras layers only (so plain Keras
loads its file, without kerasalex), and computes one deterministic function
on every inference path, however it was trained."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kerasalex import files
from kerasalex.models import (
    ARCHITECTURES,
    KERASALEX_CLASSES,
    TRAINING_FRONT_LAYERS,
    build_model,
    get_architecture,
    get_class_names,
    get_image_shape,
    inference_model,
    training_model,
)
from tests.conftest import BLOCK_KERASALEX, run_python
from tests.test_registry import MODEL_LIST, serialized_objects

# One row per architecture, small and fast: the registry test's table
# (tests/test_registry.py MODEL_LIST), so a new architecture adds one test row.
MODEL_TABLE = dict(MODEL_LIST)


def _build(arch, **kw):
    fn = get_architecture(arch).builder_fn()  # a row whose module is missing fails here
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


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Each architecture saved once by kerasalex, with its logits on a batch."""
    root = tmp_path_factory.mktemp("models")
    x = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.save(root / "x.npy", x)
    out = {}
    for arch in sorted(MODEL_TABLE):
        model = _build(arch, dropout=0.5, seed=0)
        path = files.save_model(model, root / f"{arch}.keras")
        np.save(root / f"{arch}.npy", model.predict(x, verbose=0))
        out[arch] = path
        keras.backend.clear_session()
    return root, out


@pytest.mark.parametrize("arch", sorted(MODEL_TABLE))
def test_keras_file_reloads_identically_with_safe_mode(arch, saved_models):
    root, paths = saved_models
    x = np.load(root / "x.npy")
    again = keras.saving.load_model(paths[arch], safe_mode=True)
    np.testing.assert_array_equal(np.load(root / f"{arch}.npy"), again.predict(x, verbose=0))
    # The checked loader attaches what the archive's metadata records.
    checked = files.load_model(paths[arch])
    assert get_class_names(checked) == ["a", "b", "c"]
    assert get_image_shape(checked) == (32, 32, 3)
    assert files.read_model_metadata(paths[arch]) == {"class_names": ["a", "b", "c"], "image_shape": [32, 32, 3]}


def test_plain_keras_loads_every_architecture_without_kerasalex(saved_models):
    """No kerasalex layer, optimizer or registration is needed: plain
    ``keras.saving.load_model`` (safe mode on) gives the same logits, and
    the class names are read from the archive with zipfile + json."""
    root, paths = saved_models
    code = BLOCK_KERASALEX + f"""
import json, zipfile
import numpy as np, keras
root = {str(root)!r}
x = np.load(root + "/x.npy")
for arch, path in {({a: str(p) for a, p in paths.items()})!r}.items():
    model = keras.saving.load_model(path)  # safe_mode defaults to True
    np.testing.assert_array_equal(model.predict(x, verbose=0), np.load(root + "/" + arch + ".npy"))
    names = json.loads(zipfile.ZipFile(path).read("metadata.json"))["kerasalex"]["class_names"]
    print(arch, names, model.input.dtype, model.input_shape)
"""
    r = run_python(code, cwd=root, env={"PYTHONPATH": None})
    assert r.returncode == 0, r.stderr[-3000:]
    for arch in paths:
        assert f"{arch} ['a', 'b', 'c'] uint8 (None, None, None, 3)" in r.stdout


def test_builders_make_exactly_the_allowlisted_stock_layers():
    """Every layer of every architecture (with its options on) and of the
    training front is a stock Keras layer, and the checked loader's allowlist
    of built layers is exactly that set."""
    seen = set()
    for arch in sorted(MODEL_TABLE):
        for kw in (dict(dropout=0.5, seed=0), dict(dropout=0.0)):
            if arch == "alexnet-torch":  # with a center crop too
                kw = {**kw, "resize": 96, "crop": 95}
            fn = get_architecture(arch).builder_fn()
            model = fn(num_classes=3, **{**MODEL_TABLE[arch], **kw})
            for trained in (model, training_model(model, augment=True, seed=0, random_erasing=0.25)):
                objects = serialized_objects(keras.saving.serialize_keras_object(trained))
                assert all(m.startswith("keras") for m, _ in objects), objects
                assert not any("registered_name" in str(o) and "kerasalex" in str(o) for o in objects)
                seen |= {c for m, c in objects if m.startswith(("keras.layers", "keras.src.models", "keras.src.layers",
                                                               "keras.src.ops")) or c == "Functional"}
    built = TRAINING_FRONT_LAYERS.union(*(a.layers for a in ARCHITECTURES.values()))
    ops = frozenset().union(*(a.ops for a in ARCHITECTURES.values()))
    assert seen == set(built) | set(ops)
    assert set(KERASALEX_CLASSES).isdisjoint(seen)


@pytest.mark.parametrize("arch", sorted(MODEL_TABLE))
def test_every_inference_path_gives_one_deterministic_output(arch):
    """Trained with augmentation and dropout on, the model (what every file
    holds) has no training-only layer left: model(x) == model(x) ==
    model.predict(x), while the training front does augment."""
    model = _build(arch, dropout=0.5, seed=0)
    trainer = training_model(model, augment=True, seed=0)
    assert inference_model(trainer) is model
    trainer.compile(optimizer=keras.optimizers.SGD(1e-3), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    trainer.fit(x, np.eye(3, dtype="float32")[[0, 1, 2, 0]], batch_size=4, epochs=1, verbose=0)
    assert not any(isinstance(l, (keras.layers.RandomFlip, keras.layers.RandomTranslation))
                   for l in model._flatten_layers())
    a, b, c = np.asarray(model(x)), np.asarray(model(x)), model.predict(x, verbose=0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    t1, t2 = np.asarray(trainer(x, training=True)), np.asarray(trainer(x, training=True))
    assert not np.allclose(t1, t2)  # the front augments (and dropout drops) while training


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
    assert names[:3] == ["image", "rescale", "resize"]


def test_alexnet_rescales_to_minus_one_one_inside_the_model():
    model = build_model("alexnet", num_classes=10)
    rescale = model.get_layer("rescale")
    out = keras.Model(model.input, rescale.output).predict(np.array([[[[0, 255, 127]] * 32] * 32], np.uint8), verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 1.0, 127 / 127.5 - 1], atol=1e-6)


def test_alexnet_dropout_is_training_only_and_augmentation_is_in_the_training_front():
    model = build_model("alexnet", num_classes=4, dropout=0.5, seed=3)
    assert sum(isinstance(l, keras.layers.Dropout) for l in model.layers) == 2
    assert not any(l.name.startswith("augment") for l in model.layers)
    trainer = training_model(model, augment=True, seed=3)
    assert [l.name for l in trainer.layers] == ["image", "augment_flip", "augment_translate", "alexnet"]
    x = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    a, b = model(x, training=False), model(x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    t1, t2 = model(x, training=True), model(x, training=True)
    assert not np.allclose(np.asarray(t1), np.asarray(t2))


def test_alexnet_other_input_sizes():
    model = build_model("alexnet", num_classes=5, input_shape=(64, 48, 3))
    assert model.predict(np.zeros((1, 64, 48, 3), np.uint8), verbose=0).shape == (1, 5)
    assert get_image_shape(model) == (64, 48, 3)


# --- the input contract: uint8 RGB of any size ---------------------------------


@pytest.mark.parametrize("arch", sorted(MODEL_TABLE))
def test_images_of_another_size_are_resized_inside_the_model(arch):
    """A 32 px model takes 64 px (and non-square) images, through model(x) and
    predict alike; a 64 px copy of an image (each pixel doubled) gives the
    32 px image's logits, since the bilinear 2x downscale averages the copies."""
    model = _build(arch)
    x = np.random.default_rng(6).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    y64 = model.predict(big, verbose=0)
    np.testing.assert_array_equal(y64, np.asarray(model(big)))
    if arch == "alexnet":  # resizes to 32: the doubled image comes back exactly
        np.testing.assert_allclose(y64, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    odd = np.random.default_rng(7).integers(0, 256, (1, 45, 70, 3), dtype=np.uint8)
    assert model.predict(odd, verbose=0).shape == (1, 3)


def test_float_images_are_refused_with_the_fix_in_the_message():
    """Keras casts a float batch to the uint8 input (so [0, 1] floats become 0s
    and 1s); kerasalex's own prediction path refuses them instead."""
    from kerasalex.evaluation import predict_logits

    model = build_model("alexnet", num_classes=3)
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"uint8 RGB with values 0\.\.255.*scaled to \[0, 1\].*\* 255"):
        predict_logits(model, x)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        predict_logits(model, np.zeros((32, 32, 3), np.uint8))
    assert predict_logits(model, (x * 255).round().astype("uint8")).shape == (2, 3)


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


def test_legacy_model_files_still_load_with_the_checked_loader(tmp_path):
    """Files written by earlier versions (ClassNames / ChannelReverse layers) load
    through kerasalex.files.load_model, class names included."""
    from kerasalex import preprocessing

    inputs = preprocessing.image_input((8, 8, 3))
    x = preprocessing.ChannelReverse(name="rgb_to_bgr")(inputs)
    x = preprocessing.rescale_symmetric(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(2, name="predictions")(x)
    old = keras.Model(inputs, preprocessing.class_names_head(x, ["cat", "dog"], 2), name="old")
    path = files.save_model(old, tmp_path / "old.keras")
    loaded = files.load_model(path)
    assert get_class_names(loaded) == ["cat", "dog"]
    z = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.predict(z, verbose=0), old.predict(z, verbose=0))
