"""The machine a run trains on: CPU flags, GPUs, TensorFlow's threads, XLA,
the dtype policy, and what config.json records about them.

:func:`kerasalex.training.resolve_precision` picks the policy from these.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

from kerasalex.config import low_memory_requested


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# The CPU flags of bfloat16 units (x86 /proc/cpuinfo names): precision
# "auto" picks mixed_bfloat16 on a CPU with either.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_flags(flags: set[str]) -> list[str]:
    """The bfloat16 flags among ``flags`` (a :func:`cpu_flags` set), in
    :data:`BF16_CPU_FLAGS` order; empty on a CPU without bfloat16 units."""
    return [f for f in BF16_CPU_FLAGS if f in flags]


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, e.g. ``AMD EPYC
    9R14``); where there is none, :func:`platform.processor` or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_devices() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def limit_cpu_inter_op_threads(distribute: str) -> int | None:
    """With ``KERASALEX_LOW_MEMORY=1`` on a CPU-only machine, runs one
    TensorFlow op at a time (each op still uses every core): on the scratch
    AlexNet with 2 cores the peak RSS of training drops by ~55-170 MB (fewer
    temporaries alive at once in the optimizer step), but it trains ~15%
    slower (171 vs 204 images/s), so it is not the default. Left alone with a
    GPU, under a tf.distribute strategy (replicas' collectives must run
    concurrently), when ``TF_NUM_INTEROP_THREADS`` is set, or when the
    TensorFlow runtime already started in this process.

    Returns:
        The inter-op thread count now in effect (0 = TensorFlow's default).
    """
    import tensorflow as tf

    if (low_memory_requested() and distribute == "none" and not os.environ.get("TF_NUM_INTEROP_THREADS")
            and not gpu_devices()):
        try:
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # the runtime is initialized: too late to change
    return int(tf.config.threading.get_inter_op_parallelism_threads())


def describe_device() -> dict[str, Any]:
    import tensorflow as tf

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    for g in gpu_devices():
        try:
            d = tf.config.experimental.get_device_details(g)
        except Exception:
            d = {}
        info["gpus"].append({"name": d.get("device_name", g.name), "compute_capability": d.get("compute_capability")})
    return info



class _DropRetracingWarnings:
    """A logging filter that drops TensorFlow's "triggered tf.function
    retracing" warning. TensorFlow counts traces per Python function, and
    every Keras model traces its own train/test/predict functions from the
    same Keras code, so a process that builds model after model (tune's
    trials, the study's models) is told it "retraces" by design; the
    warning's advice does not apply."""

    def filter(self, record) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def quiet_model_retracing():
    """Drops TensorFlow's retracing warning (see :class:`_DropRetracingWarnings`)
    from the ``tensorflow`` logger while the block runs; every other message passes."""
    import logging

    logger = logging.getLogger("tensorflow")
    drop = _DropRetracingWarnings()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def resolve_jit(jit: str) -> bool | str:
    """``on``/``off`` -> True/False; ``auto`` is Keras 3.15's rule, which our
    measurements agree with: XLA off on CPUs (with XLA the scratch AlexNet
    trained 2.6-3.5x slower in bf16 and 1.3-1.7x slower in float32 on an
    AVX512-BF16 EPYC, benchmarks/bench_gpu.py) and under a tf.distribute
    strategy; on a GPU, on when every layer supports XLA. RandomTranslation (the default recipe's augmentation) does
    not, so Keras runs those models without XLA, with ``on`` too (it warns).
    The value used is recorded in the run's config.json (``resolved.jit_compile``)."""
    return {"on": True, "off": False}.get(jit, "auto")


def set_precision(policy: str) -> None:
    import keras

    keras.mixed_precision.set_global_policy(policy)
