"""Canary for kerasalex._keras_internals: the private Keras names it relies on
still exist with the signatures it was written for, the installed Keras is in
its pinned range, and outside that range kerasalex falls back to the public
API. When one of these fails, a Keras upgrade changed an internal: re-check
``kerasalex/_keras_internals.py`` (and its measured reasons) before widening
``KERAS_RANGE`` and the pin in pyproject.toml."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from kerasalex import _keras_internals as K

ROOT = Path(__file__).resolve().parents[1]


def test_installed_keras_is_in_the_range_and_the_pin_matches_it():
    assert K.supported(), (
        f"keras {keras.__version__} is outside kerasalex._keras_internals.KERAS_RANGE {K.KERAS_RANGE}: "
        "kerasalex runs on the public API (more memory); re-check the internals, then widen the range"
    )
    pin = re.search(r'"keras>=([0-9.]+),<([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml must pin keras as keras>=X,<Y"
    low, high = pin.groups()
    assert high == K.KERAS_RANGE[1] and K.supported(low), (pin.groups(), K.KERAS_RANGE)
    assert K.supported("3.15.1") and not K.supported("3.16.0") and not K.supported("3.14.9")


def _signature(owner, name: str) -> list[str]:
    member = getattr(owner, name, None)
    assert member is not None, f"keras {keras.__version__}: {owner.__module__}.{owner.__qualname__}.{name} is gone"
    return list(inspect.signature(member).parameters)


@pytest.mark.parametrize(
    "owner, name, params",
    [
        ("saving_lib.H5IOStore", "__init__", ["self", "path_or_io", "archive", "mode"]),
        ("saving_lib.H5IOStore", "__setitem__", ["self", "key", "value"]),
        ("saving_lib.H5IOStore", "_create_h5_group", ["self", "path", "metadata"]),
        ("base_optimizer.BaseOptimizer", "save_own_variables", ["self", "store"]),
        ("base_optimizer.BaseOptimizer", "_apply_weight_decay", ["self", "variables"]),
        ("base_optimizer.BaseOptimizer", "_backend_update_step", ["self", "grads", "trainable_variables", "learning_rate"]),
        ("base_optimizer.BaseOptimizer", "_use_weight_decay", ["self", "variable"]),
        ("base_optimizer.BaseOptimizer", "_get_variable_index", ["self", "variable"]),
        ("keras.optimizers.SGD", "update_step", ["self", "gradient", "variable", "learning_rate"]),
    ],
)
def test_private_methods_keep_their_signatures(owner, name, params):
    from keras.src.optimizers import base_optimizer
    from keras.src.saving import saving_lib

    obj = {"saving_lib.H5IOStore": saving_lib.H5IOStore, "base_optimizer.BaseOptimizer": base_optimizer.BaseOptimizer,
           "keras.optimizers.SGD": keras.optimizers.SGD}[owner]
    found = _signature(obj, name)
    assert found == params, f"keras {keras.__version__} changed {owner}.{name}{tuple(params)} to {tuple(found)}"


def test_h5_store_keeps_the_attributes_lean_writes_use(tmp_path):
    from keras.src import backend
    from keras.src.saving import saving_lib

    assert callable(backend.standardize_dtype) and callable(backend.convert_to_numpy)
    store = saving_lib.H5IOStore(tmp_path / "x.weights.h5", mode="w")
    try:
        store.make("layers/dense")
        for attr in ("mode", "h5_file", "_h5_entry_path", "_h5_entry_initialized", "_h5_entry_group"):
            assert hasattr(store, attr), f"keras {keras.__version__}: H5IOStore.{attr} is gone"
        assert store.mode == "w" and store._h5_entry_path == "layers/dense" and store._h5_entry_initialized is False
        store._create_h5_group(store._h5_entry_path)
        assert store._h5_entry_initialized is True and hasattr(store._h5_entry_group, "create_dataset")
    finally:
        store.close()


def test_sgd_keeps_its_momentums_list():
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    v = keras.Variable(np.ones((2, 2), "float32"))
    opt.build([v])
    assert len(opt.momentums) == 1 and opt._get_variable_index(v) == 0, "SGD.momentums / _get_variable_index changed"


def test_outside_the_range_kerasalex_uses_the_public_api(tmp_path, monkeypatch):
    """An unsupported Keras: FusedSGD computes exactly keras.optimizers.SGD's
    update through SGD's own code, and saving leaves Keras's writer alone."""
    from keras.src.saving import saving_lib

    from kerasalex.optimizers import FusedSGD

    monkeypatch.setattr(K, "supported", lambda version=None: False)

    def run(opt):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(optimizer=opt, loss="mse")
        x = np.random.default_rng(0).random((8, 4)).astype("float32")
        model.fit(x, np.ones((8, 3), "float32"), batch_size=4, epochs=2, verbose=0)
        return [np.asarray(w) for w in model.weights]

    args = dict(momentum=0.9, nesterov=True, weight_decay=0.01)
    for a, b in zip(run(FusedSGD(0.1, **args)), run(keras.optimizers.SGD(0.1, **args))):
        np.testing.assert_array_equal(a, b)

    seen = []
    original = saving_lib.H5IOStore.__setitem__
    with K.lean_h5_writes():
        seen.append(saving_lib.H5IOStore.__setitem__)
    assert seen == [original]
