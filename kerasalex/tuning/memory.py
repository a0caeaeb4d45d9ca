"""Memory between trials: resident-memory readings, and what a search frees
after each trial so the process does not grow with every model."""

from __future__ import annotations

import gc
from pathlib import Path

import keras

from kerasalex.tuning._keras_tuner_internals import forget_traced_gradients  # noqa: F401  (re-exported)


def quiet_trial_retracing():
    """TensorFlow's retracing warning dropped while trials build model after
    model (see :func:`kerasalex.training.quiet_model_retracing`)."""
    from kerasalex.training import quiet_model_retracing

    return quiet_model_retracing()


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

