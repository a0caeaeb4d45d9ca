"""FusedSGD: keras.optimizers.SGD's arithmetic, done in place; saved and
reloaded (safe mode, allowlist) like any Keras optimizer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kerasalex import files
from kerasalex.optimizers import FusedSGD


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(16, activation="relu")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(keras.layers.Reshape((2, 2, 4))(x))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def _train(optimizer, mode, steps=6):
    model = _mlp()
    model.compile(optimizer=optimizer, loss=keras.losses.MeanSquaredError(), run_eagerly=mode == "eager",
                  jit_compile=mode == "xla")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8 * steps, 6)).astype("float32")
    y = rng.normal(size=(8 * steps, 3)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("mode", ["graph", "eager", "xla"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(momentum=0.9, nesterov=True, weight_decay=5e-3),
        dict(momentum=0.9, nesterov=False),
        dict(momentum=0.0, weight_decay=1e-2),
        dict(momentum=0.5, nesterov=True),
    ],
    ids=["nesterov-wd", "momentum", "plain-wd", "nesterov"],
)
def test_matches_keras_sgd(kwargs, mode):
    schedule = keras.optimizers.schedules.CosineDecay(0.001, decay_steps=12, warmup_target=0.05, warmup_steps=3)
    ours = _train(FusedSGD(schedule, **kwargs), mode)
    theirs = _train(keras.optimizers.SGD(schedule, **kwargs), mode)
    start = _mlp()
    for a, b, s in zip(ours.get_weights(), theirs.get_weights(), start.get_weights()):
        assert not np.allclose(a, s)  # it trained
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.optimizer.variables, theirs.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_config_is_sgds_and_round_trips():
    opt = FusedSGD(0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    config = opt.get_config()
    assert config == {**keras.optimizers.SGD(0.02, momentum=0.9, nesterov=True, weight_decay=5e-4).get_config(), "name": config["name"]}
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is FusedSGD and again.get_config() == config


def test_compiled_model_with_it_saves_and_resumes_exactly(tmp_path):
    """A model compiled with FusedSGD passes the load-time allowlist, comes back
    with its optimizer state, and continues training as if never saved."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    model = _mlp()
    model.compile(optimizer=FusedSGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = files.save_model(model, tmp_path / "m.keras")
    loaded = files.load_model(path, compile=True)
    assert type(loaded.optimizer) is FusedSGD
    assert int(loaded.optimizer.iterations) == 4
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_other_optimizer_classes_from_kerasalex_are_refused(tmp_path):
    """The allowlist names kerasalex's optimizers one by one, not the module."""
    model = _mlp()
    model.compile(optimizer=FusedSGD(0.05), loss="mse")
    path = files.save_model(model, tmp_path / "m.keras")
    import json
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    config["compile_config"]["optimizer"]["class_name"] = "EvilSGD"
    config["compile_config"]["optimizer"]["registered_name"] = "kerasalex>EvilSGD"
    members["config.json"] = json.dumps(config).encode()
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(files.ModelFileError, match="optimizer class 'EvilSGD' is not one of kerasalex's"):
        files.load_model(bad, compile=True)


def test_updates_run_one_after_another():
    """In a traced step every variable's update (one XLA-compiled call:
    decay and momentum step) waits for the previous one's, so their
    temporaries never coexist."""
    import tensorflow as tf

    variables = [keras.Variable(np.ones((4, 4), "float32"), name=f"v{i}") for i in range(3)]
    opt = FusedSGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    opt.build(variables)

    @tf.function
    def step():
        opt.apply([tf.ones((4, 4))] * 3, variables)

    graph = step.get_concrete_function().graph
    def xla_call(op):
        try:
            return op.type.endswith("PartitionedCall") and bool(op.get_attr("_XlaMustCompile"))
        except ValueError:  # no such attribute
            return False

    applies = [op for op in graph.get_operations() if xla_call(op)]
    assert len(applies) == 3
    assert not [op for op in graph.get_operations() if op.type.startswith("ResourceApply")]

    def ancestors(op, seen=None):
        seen = set() if seen is None else seen
        for parent in list(op.control_inputs) + [t.op for t in op.inputs]:
            if parent not in seen:
                seen.add(parent)
                ancestors(parent, seen)
        return seen

    earlier = sorted(sum(other in ancestors(op) for other in applies) for op in applies)
    assert earlier == [0, 1, 2]
    step()
    expected = 1 - 0.1 * 0.01 - 0.1 * (1 + 0.9)  # decay, then the Nesterov step from zero momentum
    for v in variables:
        np.testing.assert_allclose(np.asarray(v), expected, rtol=1e-6)
