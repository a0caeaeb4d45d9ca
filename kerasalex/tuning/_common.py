"""Small helpers the tuning modules share: progress lines and orderings."""

from __future__ import annotations

import sys


def say(msg: str) -> None:
    print(f"[kerasalex] {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"[kerasalex] warning: {msg}", file=sys.stderr, flush=True)


def trial_sort_key(trial_id: str):
    """Numeric trial ids in numeric order, then any others by name."""
    return (0, int(trial_id), "") if str(trial_id).isdigit() else (1, 0, str(trial_id))


def objective_direction(objective: str) -> str:
    """``"min"`` for a loss, else ``"max"``."""
    return "min" if objective.endswith("loss") else "max"
