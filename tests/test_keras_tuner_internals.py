"""Canary for the private keras-tuner (and TensorFlow) internals that
kerasalex.tuning relies on: each check names the internal that went missing
or changed, so a keras-tuner upgrade fails here, loudly, not in a search."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from conftest import REPO

TUNING = REPO / "kerasalex" / "tuning"
ADAPTER = TUNING / "_keras_tuner_internals.py"


def _params(func) -> tuple[str, ...]:
    out = []
    for p in inspect.signature(func).parameters.values():
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        out.append(prefix + p.name)
    return tuple(out)


def test_installed_keras_tuner_is_the_pinned_one_and_others_are_refused():
    import keras_tuner

    from kerasalex.tuning import _keras_tuner_internals as K

    K.check_version()  # the installed one
    low, high = K.SUPPORTED
    assert K._version_tuple(low) <= K._version_tuple(keras_tuner.__version__) < K._version_tuple(high)
    for other in ("1.4.7", high, "1.5.0", "2.0.0"):
        with pytest.raises(ImportError, match=rf"keras-tuner>={re.escape(low)},<{re.escape(high)}; installed: keras-tuner {re.escape(other)}"):
            K.check_version(other)
    # pyproject pins the same range.
    assert f'"keras-tuner>={low},<{high}"' in (REPO / "pyproject.toml").read_text()


def test_private_methods_exist_with_the_signatures_read():
    import keras_tuner

    from kerasalex.tuning._keras_tuner_internals import PRIVATE_METHODS

    for (cls_name, method), expected in PRIVATE_METHODS.items():
        cls = getattr(keras_tuner, cls_name)
        func = getattr(cls, method, None)
        assert func is not None, f"keras-tuner internal {cls_name}.{method} is gone"
        assert _params(func) == expected, (
            f"keras-tuner internal {cls_name}.{method} changed signature: {_params(func)}, expected {expected}")


def test_names_from_keras_tuner_src(tmp_path, monkeypatch):
    from kerasalex.tuning import _keras_tuner_internals as K
    from kerasalex.tuning import RandomOracle, SearchTuner, KerasalexHyperModel, validate_search_space
    from kerasalex.config import TrainConfig

    for status in ("COMPLETED", "FAILED", "INVALID", "RUNNING"):
        assert hasattr(K.TrialStatus, status), f"keras_tuner.src.engine.trial.TrialStatus.{status} is gone"
    for name in ("load", "from_state", "get_state"):
        assert callable(getattr(K.Trial, name, None)), f"keras_tuner.src.engine.trial.Trial.{name} is gone"

    for var in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert K.has_chief_oracle() is False, "keras_tuner.src.distribute.utils.has_chief_oracle changed"

    # A real oracle inside a real tuner: the attributes and state keys read.
    space = validate_search_space({"batch_size": {"fixed": 32}})
    hypermodel = KerasalexHyperModel(TrainConfig(), space, data=None)
    tuner = SearchTuner(oracle=RandomOracle(objective="val_accuracy", max_trials=1), hypermodel=hypermodel,
                        directory=str(tmp_path), project_name="p", overwrite=False)
    oracle = tuner.oracle
    for attr in K.PRIVATE_ORACLE_ATTRIBUTES:
        assert hasattr(oracle, attr), f"keras-tuner internal Oracle.{attr} is gone"
    assert Path(oracle._project_dir) == tmp_path / "p"
    assert K.retry_queue(oracle) == []
    missing = set(K.ORACLE_STATE_KEYS) - set(oracle.get_state())
    assert not missing, f"keras-tuner Oracle.get_state() lost {sorted(missing)}"
    oracle.set_state(oracle.get_state())  # what the repair writes back is read

    servicer, add_to_server = K.oracle_servicer(oracle)
    assert servicer.stop_triggered is False, "keras_tuner.src.distribute.oracle_chief.OracleServicer changed"
    assert callable(add_to_server), "keras_tuner.src.protos.get_service_grpc() lost add_OracleServicer_to_server"
    oracle.tuner_ids = set()
    assert K.chief_may_exit(oracle) is True, "keras_tuner.src.distribute.oracle_chief.exit_chief changed"


def test_tensorflow_gradient_registry_is_found_and_pruned():
    import tensorflow as tf

    from kerasalex.tuning import _keras_tuner_internals as K

    registry = K._gradient_registry()
    assert isinstance(registry, dict), (
        "tensorflow.python.framework.ops._gradient_registry._registry is gone: trials would leak a model each")
    before = set(registry)

    @tf.custom_gradient
    def square(x):
        return x * x, lambda dy: 2 * x * dy

    with K.forget_traced_gradients():
        tf.function(lambda x: square(x))(tf.constant(2.0))
        added = [k for k in set(registry) - before if str(k).startswith("CustomGradient-")]
        assert added, "a traced tf.custom_gradient no longer registers itself: revisit forget_traced_gradients"
    assert not [k for k in set(registry) - before if str(k).startswith("CustomGradient-")]


def test_private_names_live_in_the_adapter_only():
    """No other module imports keras_tuner.src or touches TensorFlow's gradient
    registry, and every private keras-tuner method the package overrides or
    calls is listed (and so canary-checked) in PRIVATE_METHODS."""
    import keras_tuner

    from kerasalex.tuning._keras_tuner_internals import PRIVATE_METHODS

    listed = {m for _, m in PRIVATE_METHODS}
    for path in sorted((REPO / "kerasalex").rglob("*.py")):
        if path == ADAPTER:
            continue
        text = path.read_text()
        rel = path.relative_to(REPO)
        assert "keras_tuner.src" not in text, f"{rel} uses keras_tuner.src; move it to {ADAPTER.name}"
        assert "_gradient_registry" not in text, f"{rel} uses TensorFlow's gradient registry; move it to {ADAPTER.name}"
    for path in sorted(TUNING.glob("*.py")):
        names = set(re.findall(r"def (_[a-z]\w*)\(self", path.read_text()))
        names |= set(re.findall(r"\b(?:self|super\(\))\.(_[a-z]\w*)\(", path.read_text()))
        for name in sorted(names):
            theirs = any(hasattr(c, name) for c in (keras_tuner.Oracle, keras_tuner.Tuner, keras_tuner.Hyperband))
            assert not theirs or name in listed, (
                f"{path.relative_to(REPO)} overrides or calls keras-tuner's private {name}; list it in PRIVATE_METHODS")
