"""Random erasing and the one-cycle schedule (issue 19's ablations): both are
opt-in recipe options; these tests check their mechanisms on tiny models."""

from __future__ import annotations

import numpy as np
import pytest


def _tiny():
    from kerasalex.models import build_model

    return build_model("alexnet", num_classes=3, input_shape=(16, 16, 3), filters=(2, 2, 2, 2, 2), dense_units=4)


def test_random_erasing_fills_rectangles_in_training_only_and_never_in_the_saved_model():
    import keras

    from kerasalex.models import inference_model, training_model

    model = _tiny()
    trainer = training_model(model, augment=False, seed=0, random_erasing=1.0)
    front = keras.Model(trainer.input, trainer.get_layer("augment_erasing").output)
    x = np.full((16, 16, 16, 3), 7, np.uint8)
    y = np.asarray(front(x, training=True))
    erased = (y == 128.0).all(axis=-1)
    # Every image (probability 1) got one rectangle of 2-33% of its area,
    # and everything else is untouched.
    frac = erased.reshape(16, -1).mean(axis=1)
    assert np.all(frac > 0) and np.all(frac <= 0.34), frac
    assert np.all((y == 128.0) | (y == 7.0))
    # Not in inference: the front with training=False passes images through,
    # and the inference model has no erasing layer at all.
    assert np.array_equal(np.asarray(front(x, training=False)), x.astype("float32"))
    assert inference_model(trainer) is model
    assert not any("erasing" in layer.name for layer in model.layers)


def test_random_erasing_probability_is_per_image():
    import keras

    from kerasalex.models import training_model

    trainer = training_model(_tiny(), augment=False, seed=1, random_erasing=0.25)
    front = keras.Model(trainer.input, trainer.get_layer("augment_erasing").output)
    x = np.full((400, 16, 16, 3), 7, np.uint8)
    hit = (np.asarray(front(x, training=True)) == 128.0).any(axis=(1, 2, 3))
    # p = 0.25 exactly (not Keras's U(0, p) for a single-float factor): 100 +- 3 SE.
    assert 0.25 - 3 * 0.022 < hit.mean() < 0.25 + 3 * 0.022, hit.mean()


def test_random_erasing_option_is_checked():
    from kerasalex.config import TrainConfig

    with pytest.raises(ValueError, match="random_erasing must be a probability"):
        TrainConfig(random_erasing=1.5)


def test_onecycle_rises_for_30_percent_of_the_steps_then_anneals_to_zero():
    from kerasalex.config import TrainConfig
    from kerasalex.compiling import learning_rate_schedule

    sched = learning_rate_schedule(TrainConfig(schedule="onecycle", lr=0.02), steps_per_epoch=10, total_epochs=10)
    values = np.array([float(sched(step)) for step in range(0, 101)])
    assert values[0] == pytest.approx(0.02 / 25)
    assert int(np.argmax(values)) == 30 and values.max() == pytest.approx(0.02)
    assert np.all(np.diff(values[:31]) > 0) and np.all(np.diff(values[30:]) <= 1e-12)
    assert values[-1] == pytest.approx(0.0, abs=1e-9)


def test_a_new_train_option_is_searchable_and_reaches_the_trial_model():
    """random_erasing was added to TrainConfig and the option table only: the
    search space accepts it, and a trial builds the same model as train
    (the recipe's initializers included)."""
    import types

    from kerasalex.config import resolve_config
    from kerasalex.tuning.space import TUNABLE, validate_search_space
    from kerasalex.training import build_training_model

    assert TUNABLE["random_erasing"]["type"] is float
    space = validate_search_space({"random_erasing": {"values": [0.0, 0.25]}})
    assert "random_erasing" in space
    with pytest.raises(ValueError, match="random_erasing"):
        validate_search_space({"random_erasing": {"values": [1.5]}})
    config = resolve_config("alexnet", "default", random_erasing=0.5, image_size=16)
    data = types.SimpleNamespace(num_classes=3, image_shape=(16, 16, 3), class_names=["a", "b", "c"])
    model = build_training_model(config, data)
    assert tuple(model.get_layer("augment_erasing").factor) == (0.5, 0.5)
    inner = model.layers[-1]
    # default recipe: zero head (lecun hidden), in train and in every trial alike
    assert not np.any(inner.get_layer("predictions").kernel.numpy())
