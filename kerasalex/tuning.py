"""The keras-tuner search: a HyperModel over the model table, resumable and
distributable, that hands its best hyperparameters back to ``train``.

``build(hp)`` calls the same builder ``train`` uses and ``fit`` trains through
the same loop (:func:`kerasalex.training.fit_standard` or the architecture's
own), with hyperparameter names equal to the :class:`~kerasalex.config.TrainConfig`
fields they set (``lr``, ``optimizer``, ``batch_size``, ``augment``, ...).
A search lives in ``<directory>/<name>/`` (keras-tuner's project folder):

    kerasalex_search.json   the settings that define the search (a rerun with
                            other settings is refused)
    oracle.json             the oracle's state, with a copy of every trial
    trial_<id>/trial.json   each trial (hyperparameters, metrics, status)
    trial_<id>/history.*    the trial's per-epoch history
    trials.csv, trials.md   the table of trials
    best_hparams.json       the best trial's train options (``train --hparams``)
    retrain/                the run that retrained the best trial on train+val

Every state file is written atomically (:mod:`kerasalex.files`). Rerunning the
same command continues the search: finished trials are kept, an interrupted
trial is run again. A damaged ``trial.json`` is restored from the copy in
``oracle.json``; a damaged ``oracle.json`` is rebuilt from the trial files
(Hyperband then restarts its bracket schedule; finished trials stay).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import io
import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine import trial as trial_module

from kerasalex import files
from kerasalex.config import OPTIMIZERS, SCHEDULES, TrainConfig, resolve_config, split_epochs

TUNERS = ("bayesian", "random", "hyperband")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")
SETTINGS_FILE = "kerasalex_search.json"

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
    "nesterov": {"type": bool},
    "ema_momentum": {"type": float, "low": 0.0, "high": 1.0, "high_open": True},
}
SAMPLINGS = ("linear", "log", "reverse_log")

# Hyperparameters that only SGD reads: the trial table and best_hparams.json
# leave them out for adam/adamw trials.
SGD_ONLY = ("momentum", "nesterov")


# --------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------


def quiet_trial_retracing():
    """TensorFlow's retracing warning dropped while trials build model after
    model (see :func:`kerasalex.training.quiet_model_retracing`)."""
    from kerasalex.training import quiet_model_retracing

    return quiet_model_retracing()


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
        if form == "fixed":
            _check_value(name, spec["fixed"], source, "fixed")
        elif form == "values":
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise ValueError(f"search space {source}: {name}: values must be a non-empty list. Received: {name}={values!r}")
            for v in values:
                _check_value(name, v, source, "each value")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"search space {source}: {name}: values repeat. Received: {name}={values!r}")
            if "default" in spec and spec["default"] not in values:
                raise ValueError(f"search space {source}: {name}: default must be one of the values. Received: default={spec['default']!r}")
        else:
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
        merged[name] = dict(spec)
    return merged


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


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------


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
            precision=self.precision, epochs=self.max_epochs,
        )

    def space(self) -> dict[str, dict[str, Any]]:
        return validate_search_space(self.search_space or {}, self.search_space_file or "<search_space>")

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
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def command_line(config: TuneConfig) -> str:
    """The ``kerasalex tune`` command that reruns (resumes) ``config``'s search."""
    args = ["kerasalex", "tune", "--arch", config.arch, "--dataset", config.dataset, "--tuner", config.tuner]
    opts = [
        ("--data-dir", config.data_dir), ("--recipe", None if config.recipe == "default" else config.recipe),
        ("--objective", None if config.objective == "val_accuracy" else config.objective),
        ("--max-trials", config.max_trials), ("--max-epochs", config.max_epochs),
        ("--factor", config.factor if config.tuner == "hyperband" and config.factor != 3 else None),
        ("--executions-per-trial", config.executions_per_trial if config.executions_per_trial != 1 else None),
        ("--patience", config.patience if config.patience != 3 else None),
        ("--search-space", config.search_space_file), ("--limit", config.limit),
        ("--image-size", config.image_size), ("--val-split", config.val_split), ("--seed", config.seed),
        ("--precision", config.precision),
        ("--directory", None if config.directory == "tuning" else config.directory), ("--name", config.name),
        ("--output", config.output),
    ]
    for flag, value in opts:
        if value is not None:
            args += [flag, str(value)]
    if not config.retrain:
        args.append("--no-retrain")
    return shlex.join(args)


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


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------


def memory_mb() -> dict[str, float | None]:
    """This process's resident memory now (``rss``) and its peak (``hwm``), in
    MiB, from /proc/self/status (None elsewhere)."""
    out: dict[str, float | None] = {"rss": None, "hwm": None}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                out["hwm"] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def reset_peak_memory() -> None:
    """Restarts the peak (VmHWM) count, so the next :func:`memory_mb` gives
    the peak since now (Linux; a no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


@contextlib.contextmanager
def forget_traced_gradients():
    """Drops the gradient functions TensorFlow registered while the block ran.

    ``tf.custom_gradient`` traced inside a ``tf.function`` (Keras's optimizer
    step does so through tf.distribute's ``all_reduce``) registers its
    gradient in TensorFlow's global gradient registry for good; that entry's
    closure holds the traced train step and, through it, every variable of
    the model and its optimizer: about one model's worth of memory leaked per
    trial. Once the model is gone, nothing can ask for those gradients again.
    """
    try:
        from tensorflow.python.framework import ops

        registry = ops._gradient_registry._registry
    except (ImportError, AttributeError):  # another TensorFlow layout: nothing to do
        registry = None
    before = set(registry) if registry is not None else set()
    try:
        yield
    finally:
        if registry is not None:
            for key in [k for k in list(registry) if k not in before and str(k).startswith("CustomGradient-")]:
                registry.pop(key, None)


def free_memory() -> None:
    """Drops the previous trial's graph, functions and tensors."""
    keras.backend.clear_session()
    gc.collect()
    # Hand the freed heap back to the system, so resident memory shows what
    # is really in use (glibc keeps freed blocks otherwise).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------
# The HyperModel
# --------------------------------------------------------------------------


def _objective_direction(objective: str) -> str:
    return "min" if objective.endswith("loss") else "max"


class KerasalexHyperModel(keras_tuner.HyperModel):
    """Builds and trains one architecture of the model table per trial.

    ``build(hp)`` calls the architecture's builder (``dropout`` is its
    argument), puts the augmentation front before it when ``augment``
    (:func:`kerasalex.models.training_model`) and compiles with
    :func:`kerasalex.training.compile_model`; ``fit`` trains through the same
    loop as ``train``, with early stopping on the objective.

    Args:
        base: the training options every trial starts from.
        space: the validated search space.
        data: the loaded data (train and validation splits).
        objective: the metric to optimize (e.g. ``val_accuracy``).
        max_epochs: epochs per trial (Hyperband sets its own per trial).
        patience: early-stopping patience, in epochs.
        verbose: Keras ``fit`` verbosity.
    """

    def __init__(self, base: TrainConfig, space: dict, data, objective: str = "val_accuracy",
                 max_epochs: int = 10, patience: int = 3, verbose: int | str = 2):
        super().__init__(name=base.arch, tunable=True)
        self.base = base
        self.space = space
        self.data = data
        self.objective = objective
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.verbose = verbose
        # Executions of one trial differ in their seed.
        self.seed_offset = 0

    def declare_hyperparameters(self, hp):
        for name, spec in self.space.items():
            define_hyperparameter(hp, name, spec)

    def trial_config(self, hp) -> TrainConfig:
        """The TrainConfig of a trial: the base options with ``hp``'s values."""
        values = {name: define_hyperparameter(hp, name, spec) for name, spec in self.space.items()}
        return self.base.replace(**values)

    @staticmethod
    def trial_epochs(hp, max_epochs: int) -> tuple[int, int]:
        """(epochs, initial_epoch) of a trial: Hyperband's, else (max_epochs, 0)."""
        values = hp.values
        return int(values.get("tuner/epochs", max_epochs)), int(values.get("tuner/initial_epoch", 0))

    def build(self, hp):
        from kerasalex.data import steps_per_epoch
        from kerasalex.models import build_model, training_model
        from kerasalex.training import compile_model

        config = self.trial_config(hp)
        seed = config.seed + self.seed_offset
        keras.utils.set_random_seed(seed)
        model = build_model(
            config.arch,
            num_classes=self.data.num_classes,
            input_shape=self.data.image_shape,
            class_names=self.data.class_names,
            dropout=config.dropout,
            seed=seed,
            weights=config.weights,
            base_weights=config.base_weights,
            freeze_base=config.freeze_base,
        )
        # The augmentation front (training only), as in `train`.
        model = training_model(model, augment=config.augment, seed=seed)
        epochs, initial = self.trial_epochs(hp, self.max_epochs)
        steps = steps_per_epoch(len(self.data.train), config.batch_size)
        # The schedule spans the epochs this trial runs (a Hyperband round
        # that continues a model starts a fresh optimizer).
        compile_model(model, config, steps, total_epochs=max(1, epochs - initial))
        return model

    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=(), trial_dir=None, **kwargs):
        """Trains ``model``; returns the metrics of its best epoch plus
        ``best_epoch`` (1-based, counting from the first epoch of the model)
        and ``epochs`` (epochs run)."""
        from kerasalex import callbacks as C
        from kerasalex.models import get_architecture
        from kerasalex.training import training_loop

        epochs = int(epochs or self.max_epochs)
        config = self.trial_config(hp).replace(seed=self.base.seed + self.seed_offset)
        if config.fine_tune_epochs:
            # A two-stage model (vgg16): the trial's epochs are its total, split as `train --epochs` splits them.
            head, fine = split_epochs(epochs, config.epochs, config.fine_tune_epochs)
            config = config.replace(epochs=head, fine_tune_epochs=fine)
        else:
            config = config.replace(epochs=epochs)
        history = C.EpochHistory(trial_dir, len(self.data.train), plot=False) if trial_dir else _Rows()
        early = keras.callbacks.EarlyStopping(
            monitor=self.objective, mode=_objective_direction(self.objective), patience=self.patience,
        )
        cbs = [C.StopOnDivergence(), history, early, *callbacks]
        fit = training_loop(get_architecture(config.arch).loop)
        fit(model, config, self.data, cbs, self.verbose, int(initial_epoch))
        rows = [r for r in history.rows if r.get(self.objective) is not None and math.isfinite(r[self.objective])]
        if not rows:
            raise keras_tuner.errors.FailedTrialError(f"no epoch reported a finite {self.objective}")
        pick = min if _objective_direction(self.objective) == "min" else max
        best = pick(rows, key=lambda r: r[self.objective])
        metrics = {k: float(best[k]) for k in OBJECTIVES if best.get(k) is not None}
        metrics["best_epoch"] = float(best["epoch"])
        metrics["epochs"] = float(len(history.rows))
        return metrics


class _Rows(keras.callbacks.Callback):
    """EpochHistory's rows without files (a trial with no folder)."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))})
        self.rows.append(row)


class _BestWeights(keras.callbacks.Callback):
    """Saves the weights of the best epoch so far, atomically (Hyperband
    continues a trial's model in a later round from them)."""

    def __init__(self, path, objective: str):
        super().__init__()
        self.path = Path(path)
        self.objective = objective
        self.best: float | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.objective)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        better = self.best is None or (value < self.best if _objective_direction(self.objective) == "min" else value > self.best)
        if better:
            self.best = value
            files.save_model(self.model, self.path)


# --------------------------------------------------------------------------
# Oracles: atomic state files, a copy of every trial, repair on reload
# --------------------------------------------------------------------------


def _warn(msg: str) -> None:
    print(f"[kerasalex] warning: {msg}", file=sys.stderr, flush=True)


def _say(msg: str) -> None:
    print(f"[kerasalex] {msg}", flush=True)


def _trial_sort_key(trial_id: str):
    return (0, int(trial_id), "") if str(trial_id).isdigit() else (1, 0, str(trial_id))


class _SafeOracle:
    """Mixin for keras-tuner oracles: state written atomically, a copy of
    every trial kept in ``oracle.json``, and a reload that repairs damaged
    files instead of crashing."""

    def save(self):
        files.atomic_write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        files.atomic_write_json(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", trial.get_state())

    def get_state(self):
        state = super().get_state()
        state["kerasalex_trials"] = {tid: t.get_state() for tid, t in self.trials.items()}
        return state

    def reload(self):
        project = Path(self._project_dir)
        oracle_file = project / "oracle.json"
        state = None
        try:
            state = json.loads(oracle_file.read_text())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            _warn(f"{oracle_file} is unreadable ({exc}); rebuilding the search state from the trial files")
            state = None
        copies = (state or {}).get("kerasalex_trials") or {}

        for tdir in sorted(project.glob("trial_*")):
            tid = tdir.name[len("trial_"):]
            f = tdir / "trial.json"
            trial = None
            if f.exists():
                try:
                    trial = trial_module.Trial.load(str(f))
                except Exception as exc:  # truncated JSON, missing keys, bad values
                    if tid in copies:
                        _warn(f"{f} is unreadable ({type(exc).__name__}); restored it from {oracle_file}")
                    else:
                        _warn(f"{f} is unreadable ({type(exc).__name__}) and has no copy; trial {tid} is counted as failed")
                        trial = trial_module.Trial(
                            keras_tuner.HyperParameters(), trial_id=tid, status=trial_module.TrialStatus.FAILED,
                            message=f"{f} was unreadable; its result is lost",
                        )
            if trial is None and tid in copies:
                trial = trial_module.Trial.from_state(copies[tid])
                self._save_trial(trial)
            if trial is not None:
                self.trials[trial.trial_id] = trial
        for tid, copy in copies.items():
            if tid not in self.trials:
                trial = trial_module.Trial.from_state(copy)
                self.trials[tid] = trial
                self._save_trial(trial)

        if state is not None:
            known = set(self.trials)
            state["ongoing_trials"] = {k: v for k, v in state.get("ongoing_trials", {}).items() if v in known}
            for key in ("start_order", "end_order", "retry_queue"):
                state[key] = [t for t in state.get(key, []) if t in known]
            try:
                self.set_state(state)
            except (KeyError, TypeError, ValueError) as exc:
                _warn(f"{oracle_file} does not hold a search state this version reads ({type(exc).__name__}: {exc}); rebuilding it from the trial files")
                state = None
        if state is None:
            self._rebuild_state()
            self.save()

        # Trials that were running when the search stopped run again.
        for _, trial in self.ongoing_trials.items():
            if trial.trial_id not in self._retry_queue:
                self._retry_queue.append(trial.trial_id)
        self.ongoing_trials = {}
        ended = set(self.end_order)
        for tid, trial in sorted(self.trials.items(), key=lambda kv: _trial_sort_key(kv[0]), reverse=True):
            if tid not in ended and tid not in self._retry_queue and trial.status != trial_module.TrialStatus.COMPLETED:
                self._retry_queue.append(tid)

    def _rebuild_state(self):
        ids = sorted(self.trials, key=_trial_sort_key)
        done = (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED)
        ended = [t for t in ids if self.trials[t].status in done]
        hashes = {t: self._compute_values_hash(self.trials[t].hyperparameters.values) for t in ids}
        # A fresh state (this oracle's own fields at their start values, e.g.
        # Hyperband's brackets), with what the trial files tell.
        state = self.get_state()
        state.update(
            ongoing_trials={}, start_order=ids, end_order=ended, run_times={t: 1 for t in ended},
            retry_queue=[t for t in reversed(ids) if t not in ended], tried_so_far=sorted(set(hashes.values())),
            id_to_hash=hashes, seed_state=int(self.seed) + 1000 * len(ids),
            display={"search_start": None, "trial_start": {}, "trial_number": {}},
        )
        self.set_state(state)


class RandomOracle(_SafeOracle, keras_tuner.oracles.RandomSearchOracle):
    """keras-tuner's random search with kerasalex's state handling."""


class BayesianOracle(_SafeOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    """keras-tuner's Gaussian-process Bayesian optimization with kerasalex's state handling."""

    def populate_space(self, trial_id):
        import warnings

        # A few noisy points often put a length scale at its bound; scikit-learn
        # warns each time, which says nothing to the user.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
            return super().populate_space(trial_id)


class HyperbandOracle(_SafeOracle, keras_tuner.oracles.HyperbandOracle):
    """keras-tuner's Hyperband with kerasalex's state handling."""


# --------------------------------------------------------------------------
# Tuners
# --------------------------------------------------------------------------


class _StopCheck:
    """Raises TrainingInterrupted between trials once a stop signal arrived."""

    def __init__(self, stop):
        self.stop = stop

    def __call__(self):
        from kerasalex.callbacks import TrainingInterrupted
        import signal

        if self.stop is not None and self.stop.received is not None:
            raise TrainingInterrupted(f"stopped by signal {signal.Signals(self.stop.received).name}")


class _KerasalexTuner:
    """Mixin for keras-tuner tuners: our own trial loop (memory freed after
    every execution, trial metrics with epochs, seconds and memory), atomic
    state files, interruption that keeps the trial for a rerun, and a chief
    that exits as soon as the last worker is done."""

    def __init__(self, oracle, hypermodel, stop=None, keep_checkpoints=False, **kwargs):
        self.stop = stop
        self.keep_checkpoints = keep_checkpoints
        self.trials_run: list[str] = []
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    # --- state -------------------------------------------------------------

    def _populate_initial_space(self):
        # Our space has no conditional entries: declaring it is enough, no
        # model needs building to discover it.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def reload(self):
        if not self._is_worker():
            self.oracle.reload()
            self._populate_initial_space()
        # The tuner's own state is empty ({}), so a damaged file loses nothing.

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        files.atomic_write_json(self._get_tuner_fname(), self.get_state())

    # --- the loop ----------------------------------------------------------

    def search(self, *fit_args, **fit_kwargs):
        if dist_utils.is_chief_oracle():
            self.oracle.verbose = fit_kwargs.get("verbose", 1)
            self.save()
            serve_oracle(self.oracle, _StopCheck(self.stop))
            return
        return super().search(*fit_args, **fit_kwargs)

    def pre_create_trial(self):
        _StopCheck(self.stop)()

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        epochs, initial = self.hypermodel.trial_epochs(hp, self.hypermodel.max_epochs)
        t0 = time.perf_counter()
        reset_peak_memory()
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        best_weights = _BestWeights(self._get_checkpoint_fname(trial.trial_id), self.hypermodel.objective) if self.keep_checkpoints else None
        results = []
        for execution in range(self.executions_per_trial):
            _StopCheck(self.stop)()
            self.hypermodel.seed_offset = execution
            run_dir = trial_dir if self.executions_per_trial == 1 else trial_dir / f"execution{execution}"
            with forget_traced_gradients():
                model = self._try_build(hp)
                if execution == 0 and self.keep_checkpoints:
                    files.atomic_write_json(self._get_build_config_fname(trial.trial_id), model.get_build_config())
                try:
                    results.append(
                        self.hypermodel.fit(
                            hp, model, epochs=epochs, initial_epoch=initial,
                            callbacks=[c for c in (best_weights, self.stop) if c is not None], trial_dir=run_dir,
                        )
                    )
                finally:
                    # The shared callbacks must not keep the model alive.
                    for c in (best_weights, self.stop):
                        if c is not None:
                            c.set_model(None)
                    del model
            free_memory()
        seconds = time.perf_counter() - t0
        mem = memory_mb()
        for r in results:
            r["seconds"] = round(seconds, 2)
            if mem["rss"] is not None:
                r["rss_mb"] = round(mem["rss"], 1)
                r["peak_rss_mb"] = round(mem["hwm"], 1)
        return results

    def _try_run_and_update_trial(self, trial, *fit_args, **fit_kwargs):
        from kerasalex.callbacks import TrainingDiverged, TrainingInterrupted

        import traceback

        try:
            self._run_and_update_trial(trial, *fit_args, **fit_kwargs)
            trial.status = trial_module.TrialStatus.COMPLETED
            return
        except (TrainingInterrupted, KeyboardInterrupt, keras_tuner.errors.FatalError):
            # Leave the trial "running" in the oracle: a rerun runs it again.
            raise
        except TrainingDiverged as exc:
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = f"diverged: {exc}"
        except keras_tuner.errors.FailedTrialError as exc:
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = str(exc)
        except Exception as exc:
            trial.status = trial_module.TrialStatus.INVALID
            trial.message = traceback.format_exc()
            _warn(f"trial {trial.trial_id} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.trials_run.append(trial.trial_id)
        _say(f"trial {trial.trial_id} {trial.status.lower()} on {self.tuner_id}"
             + (f": {trial.message.strip().splitlines()[-1]}" if trial.message else ""))


class SearchTuner(_KerasalexTuner, keras_tuner.Tuner):
    """Random search or Bayesian optimization over a :class:`KerasalexHyperModel`."""


class HyperbandTuner(_KerasalexTuner, keras_tuner.Hyperband):
    """Hyperband over a :class:`KerasalexHyperModel` (later rounds continue a
    trial's model from its best-epoch weights)."""

    def _build_hypermodel(self, hp):
        import warnings

        # The checkpoint holds the previous round's optimizer variables too;
        # a continued round starts a fresh optimizer, as keras-tuner intends.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return super()._build_hypermodel(hp)


def make_oracle(config: TuneConfig, num_hyperparameters: int):
    """The oracle for ``config.tuner``."""
    common = dict(objective=config.objective, seed=(config.seed or 0) + 1, max_consecutive_failed_trials=5)
    if config.tuner == "random":
        return RandomOracle(max_trials=config.trials_limit, **common)
    if config.tuner == "bayesian":
        trials = config.trials_limit
        # keras-tuner's default (3 random points per dimension) leaves no
        # trial to the Gaussian process in a short search: use a third of it.
        initial = max(2, min(3 * num_hyperparameters, math.ceil(trials / 3)))
        return BayesianOracle(max_trials=trials, num_initial_points=initial, **common)
    oracle = HyperbandOracle(max_epochs=config.max_epochs, factor=config.factor, **common)
    oracle.max_trials = config.trials_limit
    return oracle


# --------------------------------------------------------------------------
# The chief (distributed search)
# --------------------------------------------------------------------------


def serve_oracle(oracle, check_stop=None, poll_seconds: float = 0.5) -> None:
    """Serves ``oracle`` to the workers over gRPC until the search is over.

    keras-tuner's own server, with a shorter poll (it sleeps 20 s between
    checks), a stop check, and a clean shutdown.

    Raises:
        ValueError: the address in KERASTUNER_ORACLE_IP/PORT cannot be bound.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ValueError(f"--chief {address}: cannot listen there ({exc})") from None
    if not port:
        raise ValueError(f"--chief {address}: cannot listen there (address in use or not on this machine)")
    server.start()
    _say(f"chief: serving the search at {address}; start workers with --worker {address} --worker-id ID")
    try:
        while True:
            if check_stop is not None:
                check_stop()
            if servicer.stop_triggered and oracle_chief.exit_chief(oracle):
                break
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=2)


# --------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------


@dataclasses.dataclass
class SearchResult:
    """What a search produced (on the chief / a single process)."""

    project_dir: Path
    trials: list[dict]
    best: dict | None
    hparams_path: Path | None
    model_path: Path | None
    role: str


def _prepare_data(base: TrainConfig):
    from kerasalex import data as D
    from kerasalex.models import get_architecture

    from kerasalex.training import resize_rule

    arch = get_architecture(base.arch)
    rule = resize_rule(base)  # the same decoding and resizing as train
    if rule.size < arch.min_image_size:
        raise ValueError(f"--image-size {rule.size} is too small for {base.arch} (at least {arch.min_image_size})")
    ds = D.load_data(base.dataset, base.data_dir, image_size=rule.size, resize=rule.resize,
                     interpolation=rule.interpolation, test=False)
    return D.carve_validation(ds, base.val_split, base.limit)


def role() -> str:
    """``chief``, ``worker`` or ``single``, from the KERASTUNER_* environment."""
    if not dist_utils.has_chief_oracle():
        return "single"
    return "chief" if dist_utils.is_chief_oracle() else "worker"


def search(config: TuneConfig, overwrite: bool = False, stop=None, verbose: int | str = "auto") -> SearchResult:
    """Runs (or continues) a search, then writes the table, ``best_hparams.json``
    and the best model retrained on train+validation.

    In distributed mode (KERASTUNER_ORACLE_IP/PORT/TUNER_ID set, see
    ``kerasalex tune --help``) the chief serves the oracle and writes the
    outputs; a worker runs trials until the chief has none left.

    Args:
        config: the search options.
        overwrite: delete an existing search of the same name first.
        stop: a :class:`kerasalex.callbacks.GracefulStop`, installed by the
            caller, that ends the search at the next batch on SIGTERM/SIGINT.
        verbose: Keras ``fit`` verbosity ("auto": a bar on a terminal).

    Returns:
        A :class:`SearchResult`.

    Raises:
        ValueError: bad options, data, search space, or a search folder made
            with other settings.
        TrainingInterrupted: a stop signal arrived; the search state is saved
            and rerunning the same command continues it.
    """
    from kerasalex.models import get_architecture
    from kerasalex.training import explain_precision, resolve_precision, set_precision

    who = role()
    get_architecture(config.arch)
    base = config.base_config()
    space = config.space()
    settings = config.settings()
    project = config.project_dir
    if who == "worker":
        overwrite = False  # never delete the chief's search from a worker
    if overwrite and project.exists():
        shutil.rmtree(project)
    if who != "worker":
        project.mkdir(parents=True, exist_ok=True)
        files.remove_stale_temps(project)
    check_settings(project, settings, write=who != "worker")

    if config.objective.startswith("val_") and not base.val_split:
        raise ValueError(f"objective {config.objective} needs a validation split; pass --val-split > 0 or --objective {config.objective[4:]}")
    precision = resolve_precision(base.precision)
    set_precision(precision)
    _say(explain_precision(base.precision, precision, base.arch))
    data = _prepare_data(base)
    _say(
        f"{data.name}: {len(data.train)} training / {len(data.val) if data.val is not None else 0} validation images "
        f"{data.image_shape}, {data.num_classes} classes; searching {config.tuner} in {project}"
    )
    _StopCheck(stop)()

    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    hypermodel = KerasalexHyperModel(base, space, data, config.objective, config.max_epochs, config.patience, verbose)
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    oracle_file = project / "oracle.json"
    tuner_file = project / f"{tuner_id}.json"
    if who != "worker" and oracle_file.exists() and not tuner_file.exists():
        # keras-tuner reloads only when this tuner's own file exists; a search
        # started by another role (or killed early) still has to be reloaded.
        files.atomic_write_json(tuner_file, {})
    cls = HyperbandTuner if config.tuner == "hyperband" else SearchTuner
    tuner = cls(
        oracle=make_oracle(config, len(space)), hypermodel=hypermodel, stop=stop,
        keep_checkpoints=config.tuner == "hyperband", directory=str(config.directory),
        project_name=config.project_name, overwrite=False, executions_per_trial=int(config.executions_per_trial),
    )
    if who != "worker":
        done = sum(1 for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED"))
        if done:
            _say(f"continuing the search in {project}: {done} trial(s) finished, {len(tuner.oracle._retry_queue)} to rerun")
    with quiet_trial_retracing():
        tuner.search(verbose=1 if verbose else 0)
    free_memory()

    if who == "worker":
        _say(f"worker {tuner_id} finished: ran trial(s) {', '.join(tuner.trials_run) or 'none'}")
        return SearchResult(project, [], None, None, None, who)

    ended = exhausted_note(tuner.oracle, config.trials_limit)
    if ended:
        _say(ended)
    trials = trial_rows(tuner.oracle, space, base.optimizer)
    write_trial_table(project, trials, config.objective)
    best = best_trial(tuner.oracle)
    if best is None:
        raise ValueError(f"no trial of the search in {project} completed; see {project / 'trials.md'}")
    hparams = best_hparams(config, hypermodel, best, data)
    budget = retrain_options(config, best, data)
    hparams_path = project / "best_hparams.json"
    files.atomic_write_json(hparams_path, hparams)
    files.atomic_write_json(project / "best_trial.json", {
        "trial_id": best.trial_id, "objective": config.objective, "score": best.score,
        "metrics": _trial_metrics(best), "hparams": str(hparams_path), "retrain_options": budget,
        "train_command": train_command(config, hparams_path), "tune_command": command_line(config),
    })
    model_path = None
    if config.retrain:
        _StopCheck(stop)()
        model_path = retrain(config, hparams, project, budget)
    best_row = next(r for r in trials if r["trial"] == best.trial_id)
    return SearchResult(project, trials, best_row, hparams_path, model_path, who)


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


def _trial_metrics(trial) -> dict[str, float]:
    out = {}
    for name in trial.metrics.metrics:
        value = trial.metrics.get_last_value(name)
        if value is not None:
            out[name] = float(value)
    return out


def best_trial(oracle):
    """The best completed trial, or None."""
    best = [t for t in oracle.get_best_trials(1) if t.status == trial_module.TrialStatus.COMPLETED]
    return best[0] if best else None


def trial_rows(oracle, space: dict, optimizer: str = "sgd") -> list[dict]:
    """One row per trial: id, status, hyperparameter values, objective and
    the other metrics, epochs, seconds, memory. ``momentum``/``nesterov`` are
    left empty for trials whose optimizer (searched, else ``optimizer``, the
    recipe's) is not SGD, which ignores them."""
    rows = []
    for tid in sorted(oracle.trials, key=_trial_sort_key):
        t = oracle.trials[tid]
        m = _trial_metrics(t)
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
    """
    train_config = hypermodel.trial_config(trial.hyperparameters)
    out: dict[str, Any] = {"arch": train_config.arch, "recipe": train_config.recipe}
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
    best_epoch = _trial_metrics(trial).get("best_epoch") or config.max_epochs
    n_seen = len(data.train) + (len(data.val) if data.val is not None else 0)
    return {
        "dataset": config.dataset, "data_dir": config.data_dir, "image_size": config.image_size,
        "precision": config.precision, "seed": config.seed,
        "epochs": max(1, int(round(best_epoch))), "val_split": 0.0,
        "limit": n_seen if base.limit is not None else 0,
    }


def train_command(config: TuneConfig, hparams_path: Path) -> str:
    """``kerasalex train`` with the searched hyperparameters on the search's
    dataset, at the recipe's epochs and without the search's ``--limit``."""
    args = ["kerasalex", "train", "--hparams", str(hparams_path), "--dataset", config.dataset]
    if config.data_dir:
        args += ["--data-dir", config.data_dir]
    for flag, value in (("--image-size", config.image_size), ("--precision", config.precision)):
        if value is not None:
            args += [flag, str(value)]
    return shlex.join(args)


def retrain(config: TuneConfig, hparams: dict[str, Any], project_dir: Path, options: dict[str, Any] | None = None) -> Path:
    """Trains the best hyperparameters on train+validation, as
    ``kerasalex train --hparams best_hparams.json`` with ``options`` (see
    :func:`retrain_options`) on the command line does, into
    ``<project>/retrain/``; an unfinished retrain is resumed, a finished one
    with the same options reused."""
    from kerasalex.callbacks import TrainingInterrupted
    from kerasalex.training import read_run_config, train

    hp = dict(hparams)
    arch = hp.pop("arch")
    output = Path(config.output) if config.output else Path("saved_models") / f"tune-{config.project_name}.keras"
    run_dir = Path(project_dir) / "retrain"
    train_config = resolve_config(arch=arch, recipe=hp.pop("recipe", "default"), hparams=hp, run_dir=str(run_dir),
                                  output=str(output), **(options or {}))
    resume = False
    if (run_dir / "config.json").exists():
        try:
            saved = read_run_config(run_dir)["config"]
        except (ValueError, KeyError):
            saved = None
        same = saved is not None and TrainConfig.from_dict({**saved, "run_dir": None, "output": None}) == train_config.replace(run_dir=None, output=None)
        if same and (run_dir / "summary.json").exists() and output.exists():
            _say(f"best model already retrained: {output}")
            return output
        if same and (run_dir / "resume" / "state.json").exists():
            resume = True
        else:
            shutil.rmtree(run_dir)
    _say(f"retraining the best trial on train+validation for {train_config.epochs} epoch(s) into {run_dir}")
    try:
        result = train(train_config, resume=resume)
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(f"{str(exc).split(';')[0]} while retraining the best model") from None
    return Path(result.model_path)
