"""Shared test helpers. Tests run offline on 2 CPU cores: tiny models, tiny data."""

from __future__ import annotations

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
