"""What Keras lacks: per-epoch history with timings written atomically, a
kill-safe checkpoint, resume state including the RNG state Keras does not
save, a divergence stop that raises, and a graceful SIGTERM/SIGINT stop.

Constructors only store arguments; files are opened/written in the hooks
(the shape of keras's CSVLogger).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import signal
import threading
import time
from pathlib import Path

import keras
import numpy as np

from kerasalex import files

HISTORY_KEYS = (
    "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds", "train_seconds",
    "images_per_second",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGINT arrived; training stopped at a batch boundary."""

    @property
    def exit_code(self) -> int:
        """The shell's convention, 128 + the signal's number: 130 for Ctrl-C,
        143 for SIGTERM (the message names the signal)."""
        m = re.search(r"signal (SIG[A-Z0-9]+)", str(self))
        try:
            return 128 + int(signal.Signals[m.group(1)]) if m else 130
        except KeyError:
            return 130


class StopNow(BaseException):
    """A stop signal outside ``fit``, raised at once by
    ``GracefulStop(raise_outside_fit=True)``. A BaseException (like
    KeyboardInterrupt), so no ``except Exception`` on the way can mistake it
    for a broken file; :func:`kerasalex.training.train` reports it as
    :class:`TrainingInterrupted`."""


def current_learning_rate(model) -> float | None:
    opt = getattr(model, "optimizer", None)
    if opt is None:
        return None
    try:
        lr = opt.learning_rate
        if callable(lr) and not hasattr(lr, "numpy"):
            lr = lr(opt.iterations)
        return float(keras.ops.convert_to_numpy(lr))
    except Exception:
        return None


class EpochHistory(keras.callbacks.Callback):
    """Appends one row per epoch (metrics, learning rate, epoch seconds,
    images/second) and rewrites ``history.json``, ``history.csv`` and
    ``learning_curves.png`` atomically after every epoch.

    Args:
        run_dir: the run folder.
        images_per_epoch: training images per epoch (for images/second).
        history: rows already recorded (a resumed run continues them).
        plot: also redraw the learning curves each epoch.
    """

    def __init__(self, run_dir, images_per_epoch: int, history: list[dict] | None = None, plot: bool = True, title: str = ""):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.images_per_epoch = images_per_epoch
        self.rows = list(history or [])
        self.plot = plot
        self.title = title
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._lr = current_learning_rate(self.model)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - (self._t0 or time.perf_counter())
        logs = dict(logs or {})
        row = {"epoch": epoch + 1}
        for k, v in logs.items():
            if k == "learning_rate":
                continue
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                pass
        row["learning_rate"] = self._lr
        row["epoch_seconds"] = round(seconds, 3)
        # Cumulative training time (s) at the end of this epoch: the x axis of
        # time-to-accuracy (benchmarks/bench_time_to_accuracy.py).
        before = [r for r in self.rows if r["epoch"] < row["epoch"]]
        row["train_seconds"] = round(sum(float(r.get("epoch_seconds") or 0.0) for r in before) + seconds, 3)
        row["images_per_second"] = round(self.images_per_epoch / seconds, 1) if seconds > 0 else None
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        write_history(self.run_dir, self.rows)
        if self.plot:
            try:
                from kerasalex.reports import plot_learning_curves

                plot_learning_curves(self.rows, self.run_dir / "learning_curves.png", self.title)
            except files.DiskFullError:
                raise
            except Exception as exc:  # a plot must never kill a training run
                print(f"warning: could not draw learning curves: {exc}")


def chance_loss(num_classes: int) -> float:
    """The cross-entropy of a uniform prediction over ``num_classes``:
    ln(num_classes) nats, with or without label smoothing."""
    return math.log(num_classes)


def at_chance_accuracy(accuracy: float, labels: np.ndarray, num_classes: int) -> bool:
    """Whether ``accuracy`` on ``labels`` is indistinguishable from guessing:
    at most the majority-class rate (always predicting the most frequent
    class) plus two binomial standard errors of it."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return False
    p = float(np.bincount(labels, minlength=num_classes).max()) / labels.size
    return float(accuracy) <= p + 2.0 * math.sqrt(p * (1.0 - p) / labels.size)


PLATEAU_ADVICE = (
    "try a smaller --batch-size (more steps per epoch), a lower --lr, more --epochs, "
    "or check that the labels match the images"
)


class ChancePlateau(keras.callbacks.Callback):
    """Says, after the first epoch, when the run has not left the chance
    plateau: the training loss within 2% of ln(num_classes) (the loss of a
    uniform prediction) *and* the accuracy indistinguishable from guessing
    (:func:`at_chance_accuracy`; validation accuracy when there is a
    validation split, else training accuracy). Both, because the first
    epoch's loss is a running mean: a run that starts on the plateau and
    leaves it late in epoch 1 still averages ~ln(classes). The message is
    printed once and kept in :attr:`warnings` for the run's summary.

    Args:
        num_classes: the number of classes (the plateau is ln of it).
        labels: int labels (N,) of the split whose accuracy is judged.
        monitor: ``"val_accuracy"`` or ``"accuracy"``: which logged accuracy.
        tolerance: the fraction of ln(num_classes) that still counts as the plateau.
    """

    def __init__(self, num_classes: int, labels=None, monitor: str = "val_accuracy", tolerance: float = 0.02):
        super().__init__()
        self.num_classes = int(num_classes)
        self.labels = None if labels is None else np.asarray(labels)
        self.monitor = monitor
        self.tolerance = float(tolerance)
        self.warnings: list[str] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if epoch != 0 or loss is None:
            return
        plateau = chance_loss(self.num_classes)
        if float(loss) < (1.0 - self.tolerance) * plateau:
            return
        acc = logs.get(self.monitor)
        if acc is not None and self.labels is not None and not at_chance_accuracy(float(acc), self.labels, self.num_classes):
            return
        msg = (
            f"training loss {float(loss):.3f} after epoch 1 is still at the chance plateau "
            f"ln({self.num_classes}) = {plateau:.3f}"
            + (f" ({self.monitor.replace('_', ' ')} {float(acc):.1%})" if acc is not None else "")
            + f": {PLATEAU_ADVICE}"
        )
        self.warnings.append(msg)
        print(f"[kerasalex] warning: {msg}", flush=True)


def write_history(run_dir: Path, rows: list[dict]) -> None:
    run_dir = Path(run_dir)
    files.atomic_write_json(run_dir / "history.json", rows)
    keys = list(HISTORY_KEYS) + sorted({k for r in rows for k in r} - set(HISTORY_KEYS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    files.atomic_write_text(run_dir / "history.csv", buf.getvalue())


def read_history(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "history.json"
    if not p.exists():
        return []
    return json.loads(p.read_text())


def _seed_generators(model) -> dict[str, object]:
    """The model's SeedGenerators keyed by ``<layer name>/<index in layer>``.

    Keras names SeedGenerators by a process-wide counter
    (``seed_generator_7/...``), so their variable paths differ between the
    process that saved and the one that resumes; layer names do not.
    """
    out: dict[str, object] = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for i, gen in enumerate(getattr(layer, "_seed_generators", ())):
            key = f"{layer.name}/{i}"
            n = 1
            while key in out:  # the same layer name in two nested models
                n += 1
                key = f"{layer.name}/{i}#{n}"
            out[key] = gen
    return out


def seed_states(model) -> dict[str, list[int]]:
    """The SeedGenerator states (dropout, augmentation), which Keras does not save."""
    return {key: np.asarray(gen.state.numpy()).tolist() for key, gen in _seed_generators(model).items()}


def restore_seed_states(model, states: dict[str, list[int]]) -> None:
    """Puts back the states :func:`seed_states` returned.

    Raises:
        ValueError: the saved states do not belong to this model (other
            random layers), so an exact resume is impossible.
    """
    gens = _seed_generators(model)
    if set(gens) != set(states):
        raise ValueError(
            f"resume state's random-layer states {sorted(states)} do not match the model's {sorted(gens)}; "
            "the resume state belongs to another model"
        )
    for key, value in states.items():
        gen = gens[key]
        gen.state.assign(np.asarray(value, dtype=gen.state.dtype))


class ResumeState(keras.callbacks.Callback):
    """After every epoch, saves what an exact resume needs into ``resume/``:
    the full model with its optimizer state (``last.keras``) and
    ``state.json`` (finished epochs, SeedGenerator states). Both atomically;
    ``state.json`` is written last and names the model file it belongs to.
    """

    def __init__(self, run_dir):
        super().__init__()
        self.dir = Path(run_dir) / "resume"

    def on_epoch_end(self, epoch, logs=None):
        save_resume_state(self.model, self.dir, epoch + 1)


def save_resume_state(model, folder: Path, epochs_done: int) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"epoch{epochs_done:04d}.keras"
    files.save_model(model, folder / name)
    files.atomic_write_json(
        folder / "state.json",
        {"epochs_done": epochs_done, "model": name, "seed_states": seed_states(model), "time": time.time()},
    )
    for old in folder.glob("epoch*.keras"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_resume_state(run_dir: Path) -> dict | None:
    p = Path(run_dir) / "resume" / "state.json"
    if not p.exists():
        return None
    try:
        state = json.loads(p.read_text())
    except ValueError:
        raise ValueError(f"resume state {p} is corrupt; delete the run folder's resume/ to start over") from None
    state["model_path"] = str(p.parent / state["model"])
    return state


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the best model so far (by ``monitor``) as ``best.keras``, atomically:
    the inference model (:func:`kerasalex.models.inference_model`, without the
    training front or optimizer, float32 policies), with ``metadata`` in its
    metadata.json."""

    def __init__(self, path, monitor: str = "val_accuracy", mode: str = "max", best: float | None = None,
                 metadata: dict | None = None):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.best = best
        self.metadata = metadata

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better and math.isfinite(value):
            from kerasalex.models import inference_model

            self.best = value
            files.save_model(inference_model(self.model), self.path, metadata=self.metadata, float32=True)


class StopOnDivergence(keras.callbacks.Callback):
    """Raises :class:`TrainingDiverged` at the first batch whose loss is NaN/inf,
    and at the end of an epoch whose validation loss or weights are not finite
    (the loss of the last batch is computed before its update), before any
    epoch-end callback can save the broken weights. Put it first."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(f"loss became {float(loss)} at batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise TrainingDiverged(f"{key} became {float(value)} in epoch {epoch + 1}")
        for w in self.model.trainable_weights:
            if not _all_finite(w):
                raise TrainingDiverged(f"weights of {w.path} became non-finite in epoch {epoch + 1}")


def _all_finite(variable) -> bool:
    """Whether every element of ``variable`` is finite, without a host copy
    of it (a NumPy copy of the AlexNet's 4096x4096 kernel and its mask added
    ~100 MB to the peak RSS): a NaN or an infinity makes the sum non-finite,
    and only a non-finite sum (which an overflow of large finite values can
    also give) is checked element by element."""
    if math.isfinite(float(keras.ops.sum(variable))):
        return True
    return bool(keras.ops.all(keras.ops.isfinite(variable)))


class GracefulStop(keras.callbacks.Callback):
    """Stops cleanly on SIGTERM (``docker stop``) or SIGINT (Ctrl-C).

    While ``model.fit`` runs, the first signal raises
    :class:`TrainingInterrupted` at the next batch boundary, after any
    epoch-end save in progress, so the resume state of the last finished epoch
    is intact and ``--resume`` continues from it; a second signal raises at
    once. Outside ``fit`` the first signal is only recorded (``received``),
    unless ``raise_outside_fit``: then it raises :class:`StopNow` at once
    (every write is atomic, so that loses nothing).

    Use :meth:`install` / :meth:`uninstall` around the run (main thread only).

    Args:
        signals: the signals to handle.
        raise_outside_fit: stop at once on a signal outside ``fit`` (loading
            data, building, the final save) instead of waiting for ``fit``.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), raise_outside_fit: bool = False):
        super().__init__()
        self.signals = signals
        self.raise_outside_fit = raise_outside_fit
        self.received: int | None = None
        self.fitting = False
        self.run_dir = None
        self._old = {}

    def _handler(self, signum, frame):
        again = self.received is not None
        self.received = signum
        outer = getattr(self._old.get(signum), "__self__", None)
        if isinstance(outer, GracefulStop) and outer.received is None:
            outer.received = signum  # an enclosing stop (tune around train) learns of it too
        if again:
            raise TrainingInterrupted(f"stopped by signal {signal.Signals(signum).name}")
        if self.raise_outside_fit and not self.fitting:
            raise StopNow(f"stopped by signal {signal.Signals(signum).name}")

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def uninstall(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def _check(self, *args, **kwargs):
        if self.received is not None:
            raise TrainingInterrupted(f"stopped by signal {signal.Signals(self.received).name}")

    def on_train_begin(self, logs=None):
        self.fitting = True
        self._check()

    def on_train_end(self, logs=None):
        self.fitting = False

    on_train_batch_end = _check
    on_test_batch_end = _check
    on_epoch_begin = _check
    on_epoch_end = _check
