"""What a search reports: the trial table (``trials.csv``, ``trials.md``), the
best trial, its hyperparameters for ``train --hparams`` and the budget of
its retrain."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasalex import files
from kerasalex.tuning._common import trial_sort_key
from kerasalex.tuning._keras_tuner_internals import TrialStatus
from kerasalex.tuning.space import SGD_ONLY, space_size

if TYPE_CHECKING:
    from kerasalex.tuning.hypermodel import KerasalexHyperModel
    from kerasalex.tuning.settings import TuneConfig


def exhausted_note(oracle, trials_limit: int | None) -> str | None:
    """Why a search ended before ``trials_limit`` trials: every combination of
    the space was tried (keras-tuner's oracle stops when it cannot draw an
    untried one). None when it ran its trials (or has no trial limit)."""
    done = len(oracle.trials)
    if not trials_limit or done >= trials_limit or oracle.ongoing_trials:
        return None
    size = space_size(oracle.get_space())
    what = (f"all {size} combination(s) of the search space were tried" if size is not None
            else "the oracle could not draw an untried combination (its space is nearly exhausted)")
    return (f"the search ended after {done} of {trials_limit} trials: {what}; widen the space "
            f"(--search-space) to run more, or lower --max-trials")


def trial_metrics(trial) -> dict[str, float]:
    out = {}
    for name in trial.metrics.metrics:
        value = trial.metrics.get_last_value(name)
        if value is not None:
            out[name] = float(value)
    return out


def best_trial(oracle):
    """The best completed trial, or None."""
    best = [t for t in oracle.get_best_trials(1) if t.status == TrialStatus.COMPLETED]
    return best[0] if best else None


def trial_rows(oracle, space: dict, optimizer: str = "sgd") -> list[dict]:
    """One row per trial: id, status, hyperparameter values, objective and
    the other metrics, epochs, seconds, memory. ``momentum``/``nesterov`` are
    left empty for trials whose optimizer (searched, else ``optimizer``, the
    recipe's) is not SGD, which ignores them."""
    rows = []
    for tid in sorted(oracle.trials, key=trial_sort_key):
        t = oracle.trials[tid]
        m = trial_metrics(t)
        values = t.hyperparameters.values
        row = {"trial": tid, "status": t.status}
        sgd = values.get("optimizer", optimizer) == "sgd"
        for name in space:
            row[name] = values.get(name) if sgd or name not in SGD_ONLY else None
        if "tuner/epochs" in values:
            row["tuner/epochs"] = values.get("tuner/epochs")
            row["tuner/trial_id"] = values.get("tuner/trial_id")
        row["score"] = t.score
        for key in ("val_accuracy", "val_loss", "accuracy", "loss", "best_epoch", "epochs", "seconds", "rss_mb", "peak_rss_mb"):
            row[key] = m.get(key)
        if t.message and t.status != "COMPLETED":
            row["message"] = files.error_line(t.message.strip().splitlines()[-1], 120)
        rows.append(row)
    return rows


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_trial_table(project_dir: Path, rows: list[dict], objective: str) -> None:
    """Writes ``trials.csv`` and ``trials.md`` atomically."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys or ["trial"])
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    files.atomic_write_text(Path(project_dir) / "trials.csv", buf.getvalue())
    files.atomic_write_text(Path(project_dir) / "trials.md", trial_table_markdown(rows, objective))


def trial_table_markdown(rows: list[dict], objective: str) -> str:
    """The trial table as Markdown (objective, epochs and seconds after the hyperparameters)."""
    shown = [k for k in (rows[0] if rows else {}) if k not in ("score", "val_loss", "accuracy", "loss", "peak_rss_mb", "message")]
    shown = [k for k in shown if any(r.get(k) is not None for r in rows)]
    header = [objective if k == objective else k for k in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in shown) + " |")
    return "\n".join(lines) + "\n"


def best_hparams(config: TuneConfig, hypermodel: KerasalexHyperModel, trial, data=None) -> dict[str, Any]:
    """The searched hyperparameters of ``trial``, for ``train --hparams``:
    ``arch``, ``recipe`` and the value of every name in the search space
    (``momentum`` and ``nesterov`` only for an SGD trial: the other
    optimizers ignore them). Not the search's own budget (``epochs``,
    ``limit``, ``val_split``, ``image_size``, ``precision``, ``seed``): a
    ``train --hparams`` run keeps the recipe's epochs, its own data and
    validation split. :func:`retrain_options` holds the budget of the retrain.
    The other train options the search fixed (``config.train_options``) are
    part of the winner, so they are in it too.
    """
    train_config = hypermodel.trial_config(trial.hyperparameters)
    out: dict[str, Any] = {"arch": train_config.arch, "recipe": train_config.recipe}
    out.update({k: v for k, v in (config.train_options or {}).items() if v is not None})
    for name in hypermodel.space:
        if name in SGD_ONLY and train_config.optimizer != "sgd":
            continue
        out[name] = getattr(train_config, name)
    return out


def retrain_options(config: TuneConfig, trial, data) -> dict[str, Any]:
    """The options (beside :func:`best_hparams`) of the retrain of ``trial``
    on train+validation: ``epochs`` = the trial's best epoch, ``val_split``
    0, ``limit`` covering the training and validation images the trial saw
    (0 = none), and the search's ``dataset``, ``data_dir``, ``image_size``,
    ``precision`` and ``seed``."""
    base = config.base_config()
    best_epoch = trial_metrics(trial).get("best_epoch") or config.max_epochs
    n_seen = len(data.train) + (len(data.val) if data.val is not None else 0)
    return {
        "dataset": config.dataset, "data_dir": config.data_dir, "image_size": config.image_size,
        "precision": config.precision, "seed": config.seed,
        "epochs": max(1, int(round(best_epoch))), "val_split": 0.0,
        "limit": n_seen if base.limit is not None else 0,
    }
