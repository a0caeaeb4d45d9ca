"""tf.distribute strategies for ``--distribute none|mirrored|multi-worker``.

* ``mirrored``: :class:`tf.distribute.MirroredStrategy` over the GPUs of this
  machine (or, without GPUs, over the logical CPU devices that
  ``KERASALEX_CPU_DEVICES=N`` splits the host CPU into; one CPU otherwise).
* ``multi-worker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` over
  the machines named in ``TF_CONFIG`` (each one using all of its GPUs, or its
  CPU). Every worker runs the same command; see ``docs/distributed.md``.

The batch size is *global*: with N replicas in sync, each replica sees
``batch_size / N`` images per step, so ``--batch-size 512`` on 4 GPUs is 128
per GPU and the learning rate that suits batch 512. Only the chief (the
``chief`` task, or worker 0 when the cluster has no chief) writes the run
folder and the saved model; the other workers still save (saving reads
synchronized variables, a collective every worker must join) but into a
scratch folder that is deleted at the end.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

MODES = ("none", "mirrored", "multi-worker")
CPU_DEVICES_ENV = "KERASALEX_CPU_DEVICES"
# Test/debug hook: a folder where non-chief workers also leave their final
# model as worker-<index>.keras (normally it is deleted with their scratch).
WORKER_DUMP_ENV = "KERASALEX_WORKER_DUMP"


def tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG`` environment variable ({} when unset).

    Raises:
        ValueError: it is not a JSON object.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        cfg = json.loads(raw)
    except ValueError:
        raise ValueError(f"TF_CONFIG is not valid JSON. Received: TF_CONFIG={raw[:80]!r}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task'. Received: TF_CONFIG={raw[:80]!r}")
    return cfg


def check_tf_config(cfg: dict[str, Any]) -> tuple[str, int]:
    """Validates a multi-worker ``TF_CONFIG``; returns this process's (task type, index).

    Raises:
        ValueError: the cluster or the task is missing or inconsistent.
    """
    example = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
    if not cfg:
        raise ValueError(f"--distribute multi-worker needs the TF_CONFIG environment variable, e.g. TF_CONFIG='{example}'")
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG needs a 'cluster' object of task type -> list of host:port. Received: cluster={cluster!r}")
    if not isinstance(task, dict) or "type" not in task:
        raise ValueError(f"TF_CONFIG needs a 'task' object with 'type' and 'index'. Received: task={task!r}")
    ttype = task["type"]
    try:
        index = int(task.get("index", 0))
    except (TypeError, ValueError):
        raise ValueError(f"TF_CONFIG task index must be an integer. Received: index={task.get('index')!r}") from None
    hosts = cluster.get(ttype)
    if not isinstance(hosts, list) or not 0 <= index < len(hosts):
        raise ValueError(
            f"TF_CONFIG task {ttype}:{index} is not in the cluster {sorted(cluster)} "
            f"(expected 0 <= index < {len(hosts) if isinstance(hosts, list) else 0}). Received: task={task!r}"
        )
    if ttype not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG task type must be 'chief' or 'worker' for training. Received: type={ttype!r}")
    return ttype, index


def is_chief(mode: str | None = None) -> bool:
    """True on the process that owns the outputs.

    Always true for ``mode`` ``none``/``mirrored`` (one process), and without
    ``TF_CONFIG``; under ``multi-worker`` (or ``mode=None``, which reads
    ``TF_CONFIG`` alone), the ``chief`` task, or worker 0 when the cluster has
    no chief.

    Args:
        mode: the ``--distribute`` mode; None decides from ``TF_CONFIG`` only.
    """
    if mode is not None and mode != "multi-worker":
        return True
    cfg = tf_config()
    task = cfg.get("task") or {}
    ttype, index = task.get("type"), int(task.get("index", 0) or 0)
    if not ttype:
        return True
    if ttype == "chief":
        return True
    has_chief = "chief" in (cfg.get("cluster") or {})
    return ttype == "worker" and index == 0 and not has_chief


def worker_scratch_dir() -> Path:
    """A fresh scratch folder for a non-chief worker's run files, removed when
    the process exits (finished, failed or interrupted)."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="kerasalex-worker-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def worker_output_path(scratch: Path) -> Path:
    """Where a non-chief worker writes its final model: its scratch folder, or
    ``$KERASALEX_WORKER_DUMP/worker-<index>.keras`` when that is set."""
    dump = os.environ.get(WORKER_DUMP_ENV)
    if dump:
        task = tf_config().get("task") or {}
        return Path(dump) / f"{task.get('type', 'worker')}-{int(task.get('index', 0) or 0)}.keras"
    return Path(scratch) / "final.keras"


def _wants_cpu_devices() -> bool:
    return os.environ.get(CPU_DEVICES_ENV, "").strip() not in ("", "0", "1")


def _disable_onednn() -> None:
    """TF 2.21's oneDNN convolutions mix up shapes between replicas running on
    several logical CPU devices ("input depth must be evenly divisible by
    filter depth: 3 vs 96"); the plain Eigen kernels are correct. TensorFlow
    reads ``TF_ENABLE_ONEDNN_OPTS`` when it is imported.

    Raises:
        ValueError: TensorFlow was imported before oneDNN could be turned off.
    """
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return
    if "tensorflow" in sys.modules:
        raise ValueError(
            f"{CPU_DEVICES_ENV} needs TF_ENABLE_ONEDNN_OPTS=0 set before TensorFlow is imported "
            "(oneDNN convolutions are wrong on several logical CPU devices); set both in the environment"
        )
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"


def startup(argv: list[str] | None = None) -> None:
    """Process start-up for the command line, before TensorFlow is imported.

    With ``KERASALEX_CPU_DEVICES`` > 1 it turns oneDNN off (see
    :func:`configure_cpu_devices`). With ``KERASALEX_SHOW_DEVICE=1`` (set in
    the Docker image) it prints one line on stderr saying whether a GPU is
    visible, except for ``--help``/``--version`` and a bare ``kerasalex``.

    Args:
        argv: the command-line arguments (default ``sys.argv[1:]``).
    """
    if _wants_cpu_devices():
        try:
            _disable_onednn()
        except ValueError:
            pass  # configure_cpu_devices reports it
    argv = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get("KERASALEX_SHOW_DEVICE", "") not in ("", "0"):
        if argv and not {"-h", "--help", "--version"} & set(argv):
            print(f"[kerasalex] {device_line()}", file=sys.stderr, flush=True)


def device_line() -> str:
    """"GPU visible: <names>" or "no GPU visible: ...", as TensorFlow sees it."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        hint = "in Docker: docker run --gpus all ...; check nvidia-smi" if tf.test.is_built_with_cuda() else "this TensorFlow has no CUDA"
        return f"no GPU visible, training runs on the CPU ({hint})"
    names = []
    for g in gpus:
        try:
            details = tf.config.experimental.get_device_details(g)
            cc = details.get("compute_capability")
            names.append(f"{details.get('device_name', g.name)}" + (f" (compute capability {cc[0]}.{cc[1]})" if cc else ""))
        except Exception:
            names.append(g.name)
    return f"GPU visible: {len(gpus)} x " + ", ".join(sorted(set(names)))


def configure_cpu_devices(count: int | str | None = None) -> int:
    """Splits the host CPU into ``count`` logical devices (default:
    ``$KERASALEX_CPU_DEVICES``), so ``mirrored`` can run several replicas on a
    machine without GPUs (for tests and debugging; it is no faster than one).

    Must run before TensorFlow initializes its devices. Returns the number of
    logical CPU devices requested (1 = left alone).

    Raises:
        ValueError: ``count`` is not a positive integer, or TensorFlow has
            already initialized with a different device layout.
    """
    raw = os.environ.get(CPU_DEVICES_ENV) if count is None else count
    if raw in (None, ""):
        return 1
    try:
        n = int(raw)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"{CPU_DEVICES_ENV} must be a positive integer. Received: {CPU_DEVICES_ENV}={raw!r}")
    if n == 1:
        return 1
    _disable_onednn()
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return n
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        raise ValueError(
            f"{CPU_DEVICES_ENV}={n}: TensorFlow was already initialized; set it before the process starts"
        ) from None
    return n


def _mirrored_devices() -> list[str] | None:
    """The devices ``mirrored`` runs on: None (MirroredStrategy's default: all
    GPUs) when there are GPUs, else every logical CPU device."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    cpus = tf.config.list_logical_devices("CPU")
    return [d.name for d in cpus] if len(cpus) > 1 else None


def make_strategy(mode: str):
    """Returns the tf.distribute strategy for ``mode``. Call it before any
    other TensorFlow work: ``multi-worker`` configures the collective runtime
    at start-up.

    Args:
        mode: ``none`` (the default strategy), ``mirrored`` or ``multi-worker``.

    Raises:
        ValueError: unknown mode, or a missing/inconsistent ``TF_CONFIG``.
    """
    if mode not in MODES:
        raise ValueError(f"distribute must be one of {', '.join(MODES)}. Received: distribute={mode!r}")
    if mode == "multi-worker":
        check_tf_config(tf_config())
    configure_cpu_devices()
    import tensorflow as tf

    if mode == "none":
        return tf.distribute.get_strategy()
    if mode == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_mirrored_devices())
    return tf.distribute.MultiWorkerMirroredStrategy()


def describe_strategy(strategy, batch_size: int) -> str:
    """One line: the strategy, its replicas and the global/per-replica batch.

    Raises:
        ValueError: the global batch is smaller than the number of replicas.
    """
    n = int(strategy.num_replicas_in_sync)
    if batch_size < n:
        raise ValueError(
            f"--batch-size is the global batch and must be at least the {n} replicas in sync. Received: batch_size={batch_size}"
        )
    name = type(strategy).__name__
    workers = getattr(getattr(strategy, "extended", None), "_num_workers", 1)
    per = f"{batch_size // n}" if batch_size % n == 0 else f"{batch_size // n}-{batch_size // n + 1}"
    return f"{name}: {n} replica(s) in sync on {workers} worker(s); global batch {batch_size} = {per} per replica"


def prepare_model(model, element_spec) -> None:
    """Lets ``model.fit``/``evaluate`` run under a strategy in Keras 3.15
    (keras-team/keras#20585: Keras 3 ``fit`` fails under
    MultiWorkerMirroredStrategy). Two fixes, on this model instance alone:

    * Before its first step, Keras's TensorFlow trainer builds the model from
      the first batch *averaged across replicas* (``strategy.reduce("MEAN")``
      in ``_maybe_symbolic_build``), which fails under
      MultiWorkerMirroredStrategy ("Attempt to convert a value
      (PerReplica...)") and under MirroredStrategy whenever that batch does
      not split evenly over the replicas. Only the batch's shapes and dtypes
      are used, so the model is built from the dataset's ``element_spec``.
    * Under MultiWorkerMirroredStrategy, each step's scalar logs get a
      length-1 axis, which Keras's cross-worker averaging needs.

    Args:
        model: a compiled model created under the strategy's scope.
        element_spec: the training dataset's ``element_spec`` (x, y).
    """
    import tensorflow as tf

    strategy = model.distribute_strategy
    if hasattr(model, "_maybe_symbolic_build") and hasattr(model, "_symbolic_build"):

        def build_from_spec(iterator=None, data_batch=None):
            with strategy.scope():
                model._symbolic_build(data_batch=element_spec)

        build_from_spec()
        model._maybe_symbolic_build = build_from_spec

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras averages each step's logs over the replicas of several
        # workers with strategy.reduce("MEAN", value, axis=0), which rejects
        # the scalar metric results ("Invalid reduction dimension 0 for input
        # with 0 dimensions"); give them a length-1 axis to average over.
        def with_axis(step):
            def wrapped(data):
                logs = step(data)
                return {k: tf.reshape(v, [1]) if getattr(v, "shape", None) is not None and v.shape.rank == 0 else v
                        for k, v in logs.items()}

            return wrapped

        model.train_step = with_axis(model.train_step)
        model.test_step = with_axis(model.test_step)


def dataset_options():
    """tf.data options for a stream under a strategy: shard by *data* across
    workers (our streams are built from in-memory arrays, not files, so the
    FILE policy cannot apply). Every worker builds the same (seed, epoch)
    order; each global batch is split into per-replica slices and each worker
    trains on its own slices of every global batch."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
