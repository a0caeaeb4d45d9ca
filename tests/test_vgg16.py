"""The VGG16 transfer model and its two-stage loop (cached features, fine-tuning).

Random base weights and small inputs (32 px inside the model, a few dozen
digits) keep this fast on 2 CPU cores; the parameter counts at 224 px are
checked by building only.
"""

from __future__ import annotations

import functools
import json

import keras
import numpy as np
import pytest

from kerasalex import callbacks as C
from kerasalex import files, transfer
from kerasalex.config import TrainConfig, resolve_config
from kerasalex.data import carve_validation, load_digits_rgb
from kerasalex.models import vgg16 as V

SMALL = dict(input_shape=(32, 32, 3), input_size=32, base_weights=None)


@pytest.fixture(scope="module")
def digits():
    return carve_validation(load_digits_rgb(32), 0.2, limit=40)


@pytest.fixture
def small_vgg16(monkeypatch):
    """Makes the model table build vgg16 at 32 px inside the model."""
    monkeypatch.setattr(V, "build_vgg16_transfer", functools.partial(V.build_vgg16_transfer, input_size=32))


def _config(tmp_path, **kw):
    values = dict(
        arch="vgg16", dataset="digits", epochs=2, batch_size=16, optimizer="sgd", lr=0.01, momentum=0.9,
        nesterov=False, weight_decay=0.0, label_smoothing=0.0, schedule="constant", warmup_epochs=0.0,
        augment=False, dropout=0.0, precision="float32", run_dir=str(tmp_path / "run"),
    )
    values.update(kw)
    return TrainConfig(**values)


def _compiled(config, data, augment=False, **build):
    """The model train() fits: the inference model behind the training front."""
    from kerasalex.models import training_model
    from kerasalex.training import compile_model

    keras.utils.set_random_seed(0)
    model = training_model(V.build_vgg16_transfer(data.num_classes, **{**SMALL, **build}), augment=augment,
                           seed=build.get("seed"))
    steps = -(-len(data.train) // config.batch_size)
    return compile_model(model, config, steps, total_epochs=config.epochs)


class Recorder(keras.callbacks.Callback):
    """Records which model each epoch end saw, and the epoch numbers."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((epoch + 1, self.model, dict(logs or {})))


# --- the model ----------------------------------------------------------------


def test_parameter_counts_at_224_are_the_studys():
    model = V.build_vgg16_transfer(10, base_weights=None)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert model.count_params() == 27_828_042
    assert trainable == 13_113_354
    assert model.get_layer("flatten").output.shape[1:] == (25088,)
    unfrozen = V.build_vgg16_transfer(10, base_weights=None, freeze_base=False)
    assert sum(int(np.prod(w.shape)) for w in unfrozen.trainable_weights) == 27_828_042


def test_layer_stack_and_in_model_preprocessing():
    model = V.build_vgg16_transfer(3, input_shape=(16, 16, 3), input_size=32, base_weights=None, dropout=0.5, seed=1)
    names = [l.name for l in model.layers]
    assert names == ["image", "normalize", "resize", "vgg16", "flatten", "fc1", "fc1_dropout",
                     "fc2", "fc2_dropout", "predictions"]
    assert [type(op).__name__ for op in model.operations[1:4]] == ["Rescaling", "Flip", "Resizing"]
    assert model.input.dtype == "uint8" and model.input_shape == (None, None, None, 3)
    base = model.get_layer("vgg16")
    assert isinstance(base, keras.Model) and not base.trainable and not base.trainable_weights
    assert base.get_layer("block5_conv1") is not None
    # The frozen base is called with training=False, and that survives serialization.
    node = next(l for l in model.get_config()["layers"] if l["name"] == "vgg16")["inbound_nodes"][0]
    assert node["kwargs"]["training"] is False
    # normalize + flip == vgg16.preprocess_input, bit for bit (stock Keras, no ChannelReverse)
    import tensorflow as tf

    x = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ours = keras.Model(model.input, model.get_layer("resize").input).predict(x, verbose=0)
    np.testing.assert_array_equal(ours, keras.applications.vgg16.preprocess_input(x.astype("float32")))
    # + resize == tf.image.resize + preprocess_input (the affine map commutes with the resize)
    ours = keras.Model(model.input, model.get_layer("resize").output).predict(x, verbose=0)
    ref = keras.applications.vgg16.preprocess_input(tf.image.resize(x.astype("float32"), (32, 32)).numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    # images of the base's size pass the resize unchanged
    same = V.build_vgg16_transfer(3, **SMALL)
    y = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ours = keras.Model(same.input, same.get_layer("resize").output).predict(y, verbose=0)
    np.testing.assert_array_equal(ours, keras.applications.vgg16.preprocess_input(y.astype("float32")))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(input_size=16), "input_size must be an integer >= 32"),
        (dict(dropout=1.0), "dropout"),
        (dict(head=(512, 0)), "head"),
        (dict(input_shape=(32, 32, 1)), "input_shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {**dict(num_classes=3, base_weights=None, input_size=32), **kwargs}
    with pytest.raises(ValueError, match=match):
        V.build_vgg16_transfer(**args)


# --- base weights -------------------------------------------------------------


def test_offline_imagenet_error_says_which_file_and_where(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    def offline(fname, origin=None, **kw):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(ValueError) as err:
        V.build_vgg16_transfer(10, base_weights="imagenet", input_size=32)
    msg = str(err.value)
    assert "\n" not in msg
    assert V.WEIGHTS_URL in msg
    assert str(tmp_path / "kh" / "models") in msg
    assert "--base-weights PATH" in msg


def test_missing_weights_path_error(tmp_path):
    with pytest.raises(ValueError) as err:
        V.build_vgg16_transfer(10, base_weights=str(tmp_path / "nope.h5"), input_size=32)
    msg = str(err.value)
    assert "\n" not in msg and "not found" in msg and str(tmp_path / "nope.h5") in msg
    assert V.WEIGHTS_URL in msg and V.WEIGHTS_FILE in msg


def test_weights_file_of_another_model_is_refused(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(ValueError, match="does not hold VGG16 notop weights"):
        V.build_vgg16_transfer(10, base_weights=str(tmp_path / "other.weights.h5"), input_size=32)


@pytest.mark.parametrize("fmt", ["legacy-h5", "keras-weights-h5"])
def test_local_notop_weights_file_loads_offline(tmp_path, fmt):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    if fmt == "legacy-h5":  # the layout of the file Keras downloads
        path = tmp_path / V.WEIGHTS_FILE
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, source)
    else:
        path = tmp_path / "vgg16_notop.weights.h5"
        source.save_weights(path)
    model = V.build_vgg16_transfer(10, base_weights=str(path), input_size=32)
    for a, b in zip(source.weights, model.get_layer("vgg16").weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- the feature cache --------------------------------------------------------


def test_compute_features_in_memory_on_disk_and_overflow(tmp_path, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)

    def scaled(factor):
        inp = keras.Input((4, 4, 3))
        return keras.Model(inp, keras.layers.Rescaling(factor)(inp))

    small = scaled(0.5)
    mem = transfer.compute_features(small, x, batch_size=3)
    assert mem.dtype == np.float16 and not isinstance(mem, np.memmap)
    np.testing.assert_array_equal(mem, (x * 0.5).astype(np.float16))

    monkeypatch.setattr(transfer, "MEMORY_LIMIT_BYTES", 0)
    disk = transfer.compute_features(small, x, batch_size=3, folder=tmp_path / "f", name="train")
    assert isinstance(disk, np.memmap)
    np.testing.assert_array_equal(disk, mem)
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["train.npy"]  # no temporary left

    # values beyond float16's range: stored as float32, nothing lost
    big = scaled(1000.0)
    wide = transfer.compute_features(big, x, batch_size=3, folder=tmp_path / "g", name="val")
    assert wide.dtype == np.float32
    np.testing.assert_allclose(wide, x * 1000.0, rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["val.npy"]


def test_split_model_shares_layers_and_stitches_exactly():
    model = V.build_vgg16_transfer(4, **SMALL, dropout=0.5)
    features, head = transfer.split_model(model)
    assert head.get_layer("fc1") is model.get_layer("fc1")
    x = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), head.predict(features.predict(x, verbose=0), verbose=0), rtol=1e-6, atol=1e-6
    )
    # splitting again (a resumed loop) still finds the boundary inside the model
    again, _ = transfer.split_model(model)
    assert again.output.shape == features.output.shape


def test_cached_training_equals_end_to_end_training(tmp_path, digits, monkeypatch):
    from kerasalex.training import fit_standard

    monkeypatch.setattr(transfer, "CACHE_DTYPE", np.float32)  # same inputs as end to end, bit for bit
    monkeypatch.setattr(transfer, "MEMORY_LIMIT_BYTES", 0)  # and exercise the on-disk cache
    config = _config(tmp_path)
    cached = _compiled(config, digits)
    direct = _compiled(config, digits)
    for a, b in zip(cached.weights, direct.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    calls = []
    real = transfer.compute_features
    monkeypatch.setattr(transfer, "compute_features", lambda *a, **k: calls.append(k["name"]) or real(*a, **k))

    rec = Recorder()
    transfer.fit_transfer(cached, config, digits, [rec], 0, 0)
    fit_standard(direct, config, digits, [], 0, 0)

    assert calls == ["train", "val"]  # the base ran once per split, not once per epoch
    assert [e for e, _, _ in rec.seen] == [1, 2]
    assert all(m is cached for _, m, _ in rec.seen)  # callbacks saw the end-to-end model
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rec.seen[-1][2])
    assert not (tmp_path / "run" / "features").exists()  # the cache is removed after the head stage
    initial = _compiled(config, digits)
    for a, b, c in zip(cached.trainable_weights, direct.trainable_weights, initial.trainable_weights):
        assert not np.array_equal(np.asarray(a), np.asarray(c))  # it trained
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    x = digits.val.x
    np.testing.assert_allclose(cached.predict(x, verbose=0), direct.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    features, head = transfer.split_model(cached)
    np.testing.assert_allclose(
        cached.predict(x, verbose=0), head.predict(features.predict(x, verbose=0), verbose=0), rtol=1e-6, atol=1e-6
    )


def test_augmentation_or_trainable_base_trains_end_to_end(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(transfer, "compute_features", lambda *a, **k: pytest.fail("must not cache"))
    config = _config(tmp_path, epochs=1, augment=True)
    model = _compiled(config, digits, augment=True, seed=0)
    assert not transfer.can_cache(model)
    transfer.fit_transfer(model, config, digits, [], 0, 0)
    assert not transfer.can_cache(_compiled(config, digits, freeze_base=False))


# --- fine-tuning --------------------------------------------------------------


def test_fine_tuning_changes_only_the_unfrozen_layers_and_reloads(tmp_path, digits):
    config = _config(tmp_path, epochs=1, fine_tune_epochs=1, fine_tune_lr=1e-3, unfreeze_from="block5_conv1")
    model = _compiled(config, digits)
    before = {w.path: np.array(w) for w in model.weights}
    rec = Recorder()
    transfer.fit_transfer(model, config, digits, [rec], 0, 0)

    assert [e for e, _, _ in rec.seen] == [1, 2]  # one continuous history
    changed = {w.path for w in model.weights if not np.array_equal(before[w.path], np.asarray(w))}
    base_changed = {p.split("/")[0] for p in changed if p.startswith("block")}
    assert base_changed == {"block5_conv1", "block5_conv2", "block5_conv3"}
    assert {"fc1/kernel", "fc2/kernel", "predictions/kernel"} <= changed
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)

    path = files.save_model(model, tmp_path / "ft.keras")
    again = files.load_model(path)
    x = digits.val.x
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))
    assert [w.path for w in again.trainable_weights] == [w.path for w in model.trainable_weights]


def test_bad_unfreeze_from_fails_before_any_training(tmp_path, digits):
    config = _config(tmp_path, epochs=1, fine_tune_epochs=1, unfreeze_from="block9_conv1")
    model = _compiled(config, digits)
    before = [np.array(w) for w in model.weights]
    with pytest.raises(ValueError, match="unfreeze_from must name a layer of the vgg16 base.*block5_conv1"):
        transfer.fit_transfer(model, config, digits, [], 0, 0)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, model.weights))


# --- through train() and the CLI ---------------------------------------------


def _interrupt_after(monkeypatch, epoch_done):
    real = C.ResumeState.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch + 1 == epoch_done:
            raise C.TrainingInterrupted("test stop")

    monkeypatch.setattr(C.ResumeState, "on_epoch_end", on_epoch_end)


def test_resume_in_both_stages_equals_an_uninterrupted_run(tmp_path, small_vgg16, monkeypatch):
    from kerasalex.training import train

    def config(name):
        return resolve_config(
            arch="vgg16", dataset="digits", limit=40, epochs=4, fine_tune_epochs=2, base_weights="none",  # 2 + 2
            dropout=0.5, batch_size=16, precision="float32", fine_tune_lr=1e-3,
            run_dir=str(tmp_path / name), output=str(tmp_path / f"{name}.keras"),
        )

    whole = train(config("whole"), verbose=0)
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)  # in the head stage
        with pytest.raises(C.TrainingInterrupted):
            train(config("parts"), verbose=0)
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)  # in the fine-tuning stage
        with pytest.raises(C.TrainingInterrupted):
            train(config("parts"), resume=True, verbose=0)
    assert json.loads((tmp_path / "parts" / "resume" / "state.json").read_text())["epochs_done"] == 3
    parts = train(config("parts"), resume=True, verbose=0)

    assert [r["epoch"] for r in parts.history] == [1, 2, 3, 4]
    for a, b in zip(whole.history, parts.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-6)
    m1, m2 = files.load_model(whole.model_path), files.load_model(parts.model_path)
    for a, b in zip(m1.weights, m2.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "parts" / "features").exists()


def test_cli_study_recipe_then_reload(invoke, small_vgg16, tmp_path):
    result = invoke(["train", "--arch", "vgg16", "--recipe", "study", "--dataset", "digits", "--limit", "40",
                     "--epochs", "2", "--fine-tune-epochs", "1", "--base-weights", "none", "--run-dir", "r",
                     "-o", "m.keras"])
    assert "cached vgg16 features" in result.output
    assert "fine-tuning block5_conv1, block5_conv2, block5_conv3" in result.output
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["momentum"], cfg["batch_size"], cfg["freeze_base"]) == ("sgd", 0.001, 0.9, 30, True)
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    model = files.load_model(tmp_path / "m.keras")
    assert model.input.dtype == "uint8" and model.output_shape == (None, 10)


def test_study_recipe_values():
    study = resolve_config(arch="vgg16", recipe="study")
    assert (study.optimizer, study.lr, study.momentum, study.batch_size, study.epochs) == ("sgd", 0.001, 0.9, 30, 10)
    assert study.freeze_base is True and study.fine_tune_epochs == 0 and study.augment is False
    ours = resolve_config(arch="vgg16")
    assert ours.freeze_base is True and ours.augment is False  # the head stage can use the cache
    assert ours.fine_tune_epochs > 0 and ours.unfreeze_from == "block5_conv1"


def test_cli_missing_base_weights_is_one_line(invoke, tmp_path):
    result = invoke(["train", "--arch", "vgg16", "--dataset", "digits", "--limit", "20", "--epochs", "1",
                     "--base-weights", str(tmp_path / "missing.h5")], expect_ok=False)
    assert result.exit_code != 0
    assert "base_weights file not found" in result.output and V.WEIGHTS_URL in result.output
