"""The search space: which :class:`~kerasalex.config.TrainConfig` fields a
search may tune, the ``--search-space`` JSON format, its checks, and its
translation into keras-tuner hyperparameters."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from kerasalex.config import OPTIMIZERS, SCHEDULES

# The default search space, in the ``--search-space`` JSON format. Names are
# TrainConfig fields. ``momentum`` only matters to sgd.
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "optimizer": {"values": ["sgd", "adam", "adamw"]},
    "lr": {"min": 1e-4, "max": 1e-1, "sampling": "log"},
    "momentum": {"min": 0.8, "max": 0.99},
    "weight_decay": {"min": 1e-6, "max": 1e-2, "sampling": "log"},
    "dropout": {"min": 0.0, "max": 0.6, "step": 0.1},
    "label_smoothing": {"min": 0.0, "max": 0.2, "step": 0.05},
    "batch_size": {"values": [32, 64, 128, 256]},
    "augment": {"values": [True, False]},
}

# Every name a search space may hold: its type and the values TrainConfig accepts.
TUNABLE: dict[str, dict[str, Any]] = {
    "optimizer": {"type": str, "choices": OPTIMIZERS},
    "schedule": {"type": str, "choices": SCHEDULES},
    "lr": {"type": float, "low": 0.0, "low_open": True},
    "momentum": {"type": float, "low": 0.0, "high": 1.0},
    "weight_decay": {"type": float, "low": 0.0},
    "dropout": {"type": float, "low": 0.0, "high": 1.0, "high_open": True},
    "label_smoothing": {"type": float, "low": 0.0, "high": 1.0, "high_open": True},
    "warmup_epochs": {"type": float, "low": 0.0},
    "batch_size": {"type": int, "low": 1},
    "augment": {"type": bool},
    "translate": {"type": float, "low": 0.0, "high": 1.0, "high_open": True},
    "nesterov": {"type": bool},
    "ema_momentum": {"type": float, "low": 0.0, "high": 1.0, "high_open": True},
}
# Fields a search cannot vary per trial: the data (loaded once for the whole
# search), the search's own budget and outputs, and run-time settings.
NOT_SEARCHABLE = frozenset({
    "arch", "recipe", "dataset", "data_dir", "val_split", "limit", "image_size", "resize", "epochs", "seed",
    "precision", "jit_compile", "steps_per_execution", "deterministic", "distribute", "run_dir", "output",
    "save_dir", "save_best", "weights", "base_weights", "unfreeze_from", "min_steps", "short_run_dropout",
    "translate_min_epochs", "long_run_steps", "long_run_batch_size", "long_run_lr", "data_cache",
})


def _derived_row(option) -> dict[str, Any] | None:
    """A :data:`TUNABLE` row from a ``train`` option's Click type, for a new
    option the table above does not list (None for a type it can't search)."""
    import click

    kind = option.kwargs.get("type")
    if option.flags[1] is not None:
        return {"type": bool}
    if isinstance(kind, click.Choice):
        return {"type": str, "choices": tuple(kind.choices)}
    if isinstance(kind, (click.FloatRange, click.IntRange)):
        row: dict[str, Any] = {"type": float if isinstance(kind, click.FloatRange) else int}
        if kind.min is not None:
            row.update(low=kind.min, low_open=bool(kind.min_open))
        if kind.max is not None:
            row.update(high=kind.max, high_open=bool(kind.max_open))
        return row
    if kind in (float, int):
        return {"type": kind}
    return None


def _add_derived_rows() -> None:
    from kerasalex.options import TRAIN_OPTIONS

    for name, option in TRAIN_OPTIONS.items():
        if name not in TUNABLE and name not in NOT_SEARCHABLE:
            row = _derived_row(option)
            if row is not None:
                TUNABLE[name] = row


# Every other train option becomes searchable with no edit here.
_add_derived_rows()
SAMPLINGS = ("linear", "log", "reverse_log")

# Hyperparameters that only SGD reads: the trial table and best_hparams.json
# leave them out for adam/adamw trials.
SGD_ONLY = ("momentum", "nesterov")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(name: str, value, source: str, what: str) -> None:
    info = TUNABLE[name]
    kind = info["type"]

    def bad(expected):
        raise ValueError(f"search space {source}: {name}: {what} must be {expected}. Received: {name}={value!r}")

    if kind is bool:
        if not isinstance(value, bool):
            bad("true or false")
        return
    if kind is str:
        if value not in info["choices"]:
            bad(f"one of {list(info['choices'])}")
        return
    if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
        bad("an integer")
    if not _is_number(value):
        bad("a number")
    low, high = info.get("low"), info.get("high")
    if low is not None and (value < low or (info.get("low_open") and value == low)):
        bad(f"{'>' if info.get('low_open') else '>='} {low}")
    if high is not None and (value > high or (info.get("high_open") and value == high)):
        bad(f"{'<' if info.get('high_open') else '<='} {high}")


def validate_search_space(space: Any, source: str = "<dict>") -> dict[str, dict[str, Any]]:
    """Checks a search space and returns it with the defaults filled in.

    Each entry is one of ``{"values": [...]}`` (a choice; ``[true, false]`` is a
    boolean), ``{"min": a, "max": b}`` with optional ``"sampling"`` (linear,
    log, reverse_log) and ``"step"`` (numbers), or ``{"fixed": v}``; any may add
    ``"default"``. Names missing from ``space`` keep :data:`DEFAULT_SEARCH_SPACE`.

    Args:
        space: the parsed JSON object.
        source: the file name, for error messages.

    Raises:
        ValueError: one line naming ``source`` and the offending key.

    Example:
        >>> validate_search_space({"lr": {"min": 1e-3, "max": 1e-2, "sampling": "log"}})["lr"]
        {'min': 0.001, 'max': 0.01, 'sampling': 'log'}
    """
    if not isinstance(space, dict):
        raise ValueError(f"search space {source} must be a JSON object of name -> range. Received: {type(space).__name__}")
    merged = {k: dict(v) for k, v in DEFAULT_SEARCH_SPACE.items()}
    for name, spec in space.items():
        form = _entry_form(name, spec, source)
        if form == "fixed":
            _check_value(name, spec["fixed"], source, "fixed")
        elif form == "values":
            _check_choice(name, spec, source)
        else:
            _check_range(name, spec, source)
        merged[name] = dict(spec)
    return merged


def _entry_form(name: str, spec: Any, source: str) -> str:
    """``"values"``, ``"fixed"`` or ``"min"`` (a range): which form ``spec`` takes."""
    if name not in TUNABLE:
        raise ValueError(
            f"search space {source}: unknown hyperparameter {name!r}; expected names among {sorted(TUNABLE)}"
        )
    if not isinstance(spec, dict):
        raise ValueError(
            f"search space {source}: {name} must be an object like {{\"values\": [...]}}, "
            f"{{\"min\": a, \"max\": b}} or {{\"fixed\": v}}. Received: {name}={spec!r}"
        )
    forms = [k for k in ("values", "fixed", "min") if k in spec]
    if "max" in spec and "min" not in spec:
        forms.append("max")
    if len(forms) != 1:
        raise ValueError(
            f"search space {source}: {name} needs exactly one of \"values\", \"fixed\" or \"min\"/\"max\". Received: {name}={spec!r}"
        )
    form = forms[0]
    allowed = {"values": {"values", "default"}, "fixed": {"fixed"}, "min": {"min", "max", "sampling", "step", "default"}, "max": set()}[form]
    unknown = sorted(set(spec) - allowed)
    if unknown or form == "max":
        raise ValueError(
            f"search space {source}: {name}: unexpected key(s) {unknown or ['max without min']}; "
            f"allowed with {form!r}: {sorted(allowed)}"
        )
    return form


def _check_choice(name: str, spec: dict, source: str) -> None:
    values = spec["values"]
    if not isinstance(values, list) or not values:
        raise ValueError(f"search space {source}: {name}: values must be a non-empty list. Received: {name}={values!r}")
    for v in values:
        _check_value(name, v, source, "each value")
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"search space {source}: {name}: values repeat. Received: {name}={values!r}")
    if "default" in spec and spec["default"] not in values:
        raise ValueError(f"search space {source}: {name}: default must be one of the values. Received: default={spec['default']!r}")


def _check_range(name: str, spec: dict, source: str) -> None:
    if TUNABLE[name]["type"] not in (int, float):
        raise ValueError(
            f"search space {source}: {name} takes \"values\" or \"fixed\", not a min/max range. Received: {name}={spec!r}"
        )
    if "max" not in spec:
        raise ValueError(f"search space {source}: {name}: a range needs both min and max. Received: {name}={spec!r}")
    lo, hi = spec["min"], spec["max"]
    _check_value(name, lo, source, "min")
    _check_value(name, hi, source, "max")
    if lo > hi:
        raise ValueError(f"search space {source}: {name}: min must be <= max. Received: min={lo}, max={hi}")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        raise ValueError(f"search space {source}: {name}: sampling must be one of {list(SAMPLINGS)}. Received: sampling={sampling!r}")
    if sampling != "linear" and lo <= 0:
        raise ValueError(f"search space {source}: {name}: {sampling} sampling needs min > 0. Received: min={lo}")
    if "step" in spec:
        step = spec["step"]
        if not _is_number(step) or step <= 0 or (TUNABLE[name]["type"] is int and not isinstance(step, int)):
            raise ValueError(f"search space {source}: {name}: step must be a positive {TUNABLE[name]['type'].__name__}. Received: step={step!r}")
    if "default" in spec:
        _check_value(name, spec["default"], source, "default")
        if not lo <= spec["default"] <= hi:
            raise ValueError(f"search space {source}: {name}: default must lie in [min, max]. Received: default={spec['default']}")



def load_search_space(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """Reads a ``--search-space`` JSON file (None -> the default space).

    Raises:
        ValueError: the file is missing, not JSON, or not a valid space.
    """
    if path is None:
        return validate_search_space({})
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"search space file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"search space {path} is not valid JSON ({exc})") from None
    return validate_search_space(data, str(path))


def define_hyperparameter(hp, name: str, spec: dict[str, Any]):
    """Registers ``name`` in ``hp`` as ``spec`` says and returns its value."""
    kind = TUNABLE[name]["type"]
    if "fixed" in spec:
        return hp.Fixed(name, spec["fixed"])
    if "values" in spec:
        values = spec["values"]
        if len(values) == 1:
            return hp.Fixed(name, values[0])
        if kind is bool:
            return hp.Boolean(name, default=spec.get("default", values[0]))
        return hp.Choice(name, values, default=spec.get("default"))
    lo, hi = spec["min"], spec["max"]
    if lo == hi:
        return hp.Fixed(name, kind(lo))
    sampling = spec.get("sampling", "linear")
    if kind is int:
        return int(hp.Int(name, lo, hi, step=spec.get("step"), sampling=sampling, default=spec.get("default")))
    value = float(hp.Float(name, float(lo), float(hi), step=spec.get("step"), sampling=sampling, default=spec.get("default")))
    # A stepped float is lo + k * step: drop the float noise (0.30000000000000004).
    return round(value, 10) if spec.get("step") is not None else value



def space_size(hyperparameters) -> int | None:
    """How many distinct combinations a keras-tuner search space holds (None:
    infinitely many, a continuous range)."""
    n = 1
    for hp in hyperparameters.space:
        kind = type(hp).__name__
        if kind == "Boolean":
            k = 2
        elif kind == "Choice":
            k = len(hp.values)
        elif kind in ("Int", "Float"):
            step = getattr(hp, "step", None)
            if isinstance(hp.min_value, int) and isinstance(hp.max_value, int) and step in (None, 0):
                step = 1
            if not step or getattr(hp, "sampling", "linear") not in (None, "linear"):
                return None
            k = int(math.floor((hp.max_value - hp.min_value) / step + 1e-9)) + 1
        else:  # Fixed
            k = 1
        n *= max(1, k)
    return n

