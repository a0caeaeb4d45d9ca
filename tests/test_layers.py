"""The package's layers as docs/architecture.md draws them: a module imports
only modules of its own layer or below (read from the source with ast, every
import, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kerasalex

PACKAGE = Path(kerasalex.__file__).parent

# docs/architecture.md's table: top-level module or package -> layer.
LAYERS = {
    "files": 0, "_keras_internals": 0, "preprocessing": 0, "distribute": 0,
    "models": 1, "optimizers": 1,
    "config": 2, "options": 2, "data": 2, "device": 2, "reports": 2,
    "runs": 3, "compiling": 3, "callbacks": 3, "evaluation": 3, "provenance": 3, "metrics": 3,
    "artifacts": 3, "export": 3, "compare": 3, "porting": 3,
    "training": 4, "transfer": 4,
    "tuning": 5, "study": 5,
    "cli": 6, "commands": 6, "__main__": 6,
}
# The package's __init__ imports models/preprocessing/optimizers to register them.
SKIP = {"__init__"}


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kerasalex":
                out.update(a.name for a in node.names)
            elif node.module.startswith("kerasalex."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("kerasalex."))
    return out


def test_every_module_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - SKIP
    missing = sorted(units - set(LAYERS))
    assert not missing, f"modules with no layer in docs/architecture.md / LAYERS: {missing}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    unit = _unit(path)
    if unit in SKIP:
        return
    upward = sorted(t for t in _imports(path) if t in LAYERS and LAYERS[t] > LAYERS[unit])
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {LAYERS[unit]}) imports higher layers: " + ", ".join(
        f"{t} ({LAYERS[t]})" for t in upward)
