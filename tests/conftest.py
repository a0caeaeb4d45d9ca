"""Shared test helpers. Tests run offline on 2 CPU cores: tiny models, tiny data."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _environment(changes) -> dict:
    """os.environ with ``changes`` applied (a value of None removes the variable)."""
    e = dict(os.environ)
    for k, v in (changes or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def run_python(code: str, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh Python process (fresh TensorFlow state)."""
    e = _environment(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e
    )


# Prepended to run_python code: a Python where `import kerasalex` fails,
# however it is installed (editable install, PYTHONPATH, current folder).
BLOCK_KERASALEX = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "kerasalex" or name.startswith("kerasalex."):
            raise ImportError("kerasalex is blocked in this test")
        return None
sys.meta_path.insert(0, _Block())
try:
    import kerasalex  # noqa: F401
    raise SystemExit("kerasalex was importable")
except ImportError:
    pass
"""


def run_kerasalex(args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Runs the real ``kerasalex`` CLI in a subprocess (``python -m kerasalex``)."""
    e = _environment(env)
    return subprocess.run(
        [sys.executable, "-m", "kerasalex", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e,
    )


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def invoke(cli_runner, tmp_path, monkeypatch):
    """Invokes the Click CLI in-process inside ``tmp_path``; returns the Result."""
    from kerasalex.cli import cli

    monkeypatch.chdir(tmp_path)

    def _invoke(args, expect_ok=True):
        result = cli_runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        if expect_ok and result.exit_code != 0:
            raise AssertionError(f"kerasalex {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}")
        return result

    return _invoke


def cifar_jpeg_dir() -> Path | None:
    """The extracted shared CIFAR-10 JPEG folder, if CI (or the user) pointed us at one."""
    p = os.environ.get("KERASALEX_CIFAR10_JPEG")
    if p and (Path(p) / "airplane").is_dir():
        return Path(p)
    return None


# --------------------------------------------------------------------------
# A tiny scratch AlexNet: the same stack and code path, 1,162 parameters
# (at 32 px, 10 classes) instead of 29,585,290. Mechanism tests train it; the
# full-size stack is checked where its size is the point (tests/test_models.py).
# --------------------------------------------------------------------------

TINY_FILTERS = (4, 4, 4, 4, 4)
TINY_DENSE_UNITS = 8


def build_tiny_alexnet(*args, **kwargs):
    """``kerasalex.models.alexnet.build_alexnet`` with ``filters=TINY_FILTERS``
    and ``dense_units=TINY_DENSE_UNITS`` unless given; the builder's own
    signature, so the model table passes it what it passes the real one."""
    from kerasalex.models.alexnet import build_alexnet

    kwargs.setdefault("filters", TINY_FILTERS)
    kwargs.setdefault("dense_units", TINY_DENSE_UNITS)
    return build_alexnet(*args, **kwargs)


def _signature_of_build_alexnet():
    import inspect

    from kerasalex.models.alexnet import build_alexnet

    sig = inspect.signature(build_alexnet)
    params = [p.replace(default=TINY_FILTERS) if p.name == "filters" else
              p.replace(default=TINY_DENSE_UNITS) if p.name == "dense_units" else p for p in sig.parameters.values()]
    return sig.replace(parameters=params)


@contextlib.contextmanager
def tiny_alexnet_registered():
    """While it lasts, the model table's ``alexnet`` row builds the tiny
    AlexNet (same name, recipe and code path; in this process only: a
    subprocess driver enters it itself, see :data:`TINY_DRIVER`)."""
    from kerasalex import models

    build_tiny_alexnet.__signature__ = _signature_of_build_alexnet()
    row = models.ARCHITECTURES["alexnet"]
    models.ARCHITECTURES["alexnet"] = dataclasses.replace(row, builder=f"{__name__}:build_tiny_alexnet")
    try:
        yield
    finally:
        models.ARCHITECTURES["alexnet"] = row


@pytest.fixture
def tiny_alexnet():
    """The ``alexnet`` row builds the tiny AlexNet for this test."""
    with tiny_alexnet_registered():
        yield


@contextlib.contextmanager
def op_determinism_restored():
    """Turns TensorFlow's op determinism back off afterwards if ``train
    --deterministic`` switched it on in this process (TensorFlow has no public
    way to switch it off; later tests must not run under it)."""
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    try:
        yield
    finally:
        if not before and tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


def cli_in(cwd, args):
    """Runs ``kerasalex ARGS`` in-process in ``cwd`` (Click's CliRunner,
    exceptions propagate); returns the Result (``exit_code``, ``output`` =
    stdout and stderr interleaved, ``stdout``, ``stderr``)."""
    from click.testing import CliRunner

    from kerasalex.cli import cli

    old = os.getcwd()
    os.chdir(cwd)
    try:
        with op_determinism_restored():
            return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


def invoke_in(args, cwd, expect=0):
    """:func:`cli_in` that checks the exit code (unless ``expect`` is None)."""
    result = cli_in(cwd, args)
    if expect is not None:
        assert result.exit_code == expect, f"exit {result.exit_code}:\n{result.output}"
    return result


def tiny_cli_in(cwd, args):
    """:func:`cli_in` with the tiny AlexNet in the model table."""
    with tiny_alexnet_registered():
        return cli_in(cwd, args)


# The real command line (``sys.argv[1:]``) with the tiny AlexNet in the model
# table, started as the ``kerasalex`` script is (TensorFlow imported only by
# the commands that need it). For the tests whose process boundary is the
# point: SIGKILL, SIGTERM, Ctrl-C, ``ulimit -f``, environment read at start-up.
# ``{prelude}`` runs before the command line.
TINY_DRIVER = f"""
import sys
sys.argv[0] = "kerasalex"
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
{{prelude}}
from conftest import tiny_alexnet_registered
from kerasalex.cli import main
with tiny_alexnet_registered():
    sys.exit(main(sys.argv[1:]))
"""


def tiny_command(args, prelude: str = "") -> list[str]:
    """The argv of a process running ``kerasalex ARGS`` with the tiny AlexNet."""
    return [sys.executable, "-c", TINY_DRIVER.format(prelude=prelude), *map(str, args)]


def run_tiny_kerasalex(args, cwd=None, timeout=600, env=None, prelude: str = "") -> subprocess.CompletedProcess:
    """:func:`run_kerasalex` with the tiny AlexNet (see :data:`TINY_DRIVER`)."""
    return subprocess.run(tiny_command(args, prelude), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_environment(env))
