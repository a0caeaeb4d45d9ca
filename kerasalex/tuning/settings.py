"""The options of a search (:class:`TuneConfig`), the settings that define
it (``kerasalex_search.json``, checked on every rerun) and the commands that
rerun it or train its winner."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from kerasalex import files, options
from kerasalex.config import TrainConfig, resolve_config
from kerasalex.options import OBJECTIVES, TUNERS
from kerasalex.tuning.space import validate_search_space

SETTINGS_FILE = "kerasalex_search.json"


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """Every option of a search. The fields in :meth:`settings` define the
    search: a rerun must repeat them; the others may change between runs."""

    arch: str = "alexnet"
    dataset: str = "cifar10"
    data_dir: str | None = None
    recipe: str = "default"
    tuner: str = "bayesian"
    objective: str = "val_accuracy"
    max_trials: int | None = None
    max_epochs: int = 10
    factor: int = 3
    executions_per_trial: int = 1
    patience: int = 3
    search_space: dict | None = None
    search_space_file: str | None = None
    limit: int | None = None
    image_size: int | None = None
    val_split: float | None = None
    seed: int | None = None
    precision: str | None = None
    directory: str = "tuning"
    name: str | None = None
    output: str | None = None
    retrain: bool = True
    # Any other `train` option (TrainConfig field -> value), fixed in every
    # trial; a name the search space holds is then no longer searched.
    train_options: dict | None = None

    def __post_init__(self):
        def bad(field, expected):
            raise ValueError(f"{field} must be {expected}. Received: {field}={getattr(self, field)!r}")

        if self.tuner not in TUNERS:
            bad("tuner", f"one of {TUNERS}")
        if self.objective not in OBJECTIVES:
            bad("objective", f"one of {OBJECTIVES}")
        if self.max_trials is not None and int(self.max_trials) < 1:
            bad("max_trials", "at least 1")
        if int(self.max_epochs) < 1:
            bad("max_epochs", "at least 1")
        if int(self.factor) < 2:
            bad("factor", "at least 2")
        if int(self.executions_per_trial) < 1:
            bad("executions_per_trial", "at least 1")
        if int(self.patience) < 1:
            bad("patience", "at least 1")
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            bad("name", "a plain folder name")
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.train_options or {}) - fields)
        if unknown:
            bad("train_options", f"TrainConfig fields (unknown: {unknown})")
        own = sorted(set(self.train_options or {}) & {f.name for f in dataclasses.fields(self)})
        if own:
            bad("train_options", f"without the search's own options {own} (set them on the TuneConfig)")

    @property
    def project_name(self) -> str:
        from kerasalex.data import dataset_name

        return self.name or f"{self.arch}-{dataset_name(self.dataset)}-{self.tuner}"

    @property
    def project_dir(self) -> Path:
        return Path(self.directory) / self.project_name

    @property
    def trials_limit(self) -> int | None:
        """The trial count: --max-trials, else 20 (Hyperband: its own schedule)."""
        if self.max_trials is not None:
            return int(self.max_trials)
        return None if self.tuner == "hyperband" else 20

    def base_config(self) -> TrainConfig:
        """The training options every trial starts from (the recipe's values)."""
        return resolve_config(
            arch=self.arch, recipe=self.recipe, dataset=self.dataset, data_dir=self.data_dir,
            limit=self.limit, image_size=self.image_size, val_split=self.val_split, seed=self.seed,
            precision=self.precision, epochs=self.max_epochs, **(self.train_options or {}),
        )

    def space(self) -> dict[str, dict[str, Any]]:
        """The validated search space; a name fixed by :attr:`train_options` is fixed there."""
        space = validate_search_space(self.search_space or {}, self.search_space_file or "<search_space>")
        for name, value in (self.train_options or {}).items():
            if name in space and value is not None:
                space[name] = {"fixed": value}
        return space

    def settings(self) -> dict[str, Any]:
        """What defines the search (written to ``kerasalex_search.json``)."""
        base = self.base_config()
        return {
            "arch": self.arch, "dataset": self.dataset, "data_dir": self.data_dir, "recipe": self.recipe,
            "tuner": self.tuner, "objective": self.objective, "max_epochs": int(self.max_epochs),
            "factor": int(self.factor) if self.tuner == "hyperband" else None,
            "executions_per_trial": int(self.executions_per_trial), "limit": base.limit,
            "image_size": base.image_size, "val_split": base.val_split, "seed": base.seed,
            "precision": base.precision, "search_space": self.space(),
            # Only when given, so a search started before this key existed continues.
            **({"train_options": dict(sorted(self.train_options.items()))} if self.train_options else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def command_line(config: TuneConfig) -> str:
    """The ``kerasalex tune`` command that reruns (resumes) ``config``'s search."""
    names = ("arch", "dataset", "tuner", "data_dir", "recipe", "objective", "max_trials", "max_epochs", "factor",
             "executions_per_trial", "patience", "search_space_file", "limit", "image_size", "val_split", "seed",
             "precision", "directory", "name", "output", "retrain")
    values = {name.replace("_file", ""): getattr(config, name) for name in names}
    if config.tuner != "hyperband":
        values["factor"] = None
    values.update(config.train_options or {})
    return options.command_line("tune", values, keep=("arch", "dataset", "tuner", "max_epochs"))


def train_command(config: TuneConfig, hparams_path: Path) -> str:
    """``kerasalex train`` with the searched hyperparameters on the search's
    dataset, at the recipe's epochs and without the search's ``--limit``."""
    values = {"hparams": str(hparams_path), "dataset": config.dataset, "data_dir": config.data_dir,
              "image_size": config.image_size, "precision": config.precision}
    return options.command_line("train", values, keep=("dataset",))


def check_settings(project_dir: Path, settings: dict[str, Any], write: bool) -> None:
    """Refuses a search folder made with other settings; writes them when new.

    Raises:
        ValueError: the folder holds a search with different settings, or its
            settings file is unreadable.
    """
    path = Path(project_dir) / SETTINGS_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())["settings"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"search settings {path} are unreadable; use --overwrite to start afresh or another --name") from None
        for key, value in settings.items():
            if saved.get(key) != value:
                key, old, new = _first_difference(key, saved.get(key), value)
                raise ValueError(
                    f"search folder {project_dir} was created with {key}={_short(old)}, this run asks for "
                    f"{key}={_short(new)}; use --overwrite to start afresh or another --name"
                )
        return
    if write:
        if any(Path(project_dir).glob("trial_*")) or (Path(project_dir) / "oracle.json").exists():
            raise ValueError(
                f"search folder {project_dir} holds a search without {SETTINGS_FILE}; use --overwrite to start afresh or another --name"
            )
        files.atomic_write_json(path, {"settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S")})


def _first_difference(key: str, old, new) -> tuple[str, Any, Any]:
    """Narrows two differing values to the first differing entry of nested dicts."""
    while isinstance(old, dict) and isinstance(new, dict):
        inner = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), None)
        if inner is None:
            break
        key, old, new = f"{key}.{inner}", old.get(inner), new.get(inner)
    return key, old, new


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
