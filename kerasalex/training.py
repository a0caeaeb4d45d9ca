"""compile + fit, callbacks, the run folder, resume.

``train(config)`` is the one entry point: it resolves the device and
precision, loads the data, builds (or, resuming, reloads) the model, trains
with the callbacks that keep history and resume state, and writes the final
``.keras`` atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from kerasalex import files
from kerasalex.config import TrainConfig, low_memory_requested

RUNS_ROOT = "runs"


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    history: list[dict]
    config: TrainConfig
    summary: dict


# --------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    for g in gpu_devices():
        try:
            d = tf.config.experimental.get_device_details(g)
        except Exception:
            d = {}
        info["gpus"].append({"name": d.get("device_name", g.name), "compute_capability": d.get("compute_capability")})
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def resolve_precision(precision: str) -> str:
    """``auto`` -> the policy the device trains fastest in:

    * GPUs with compute capability >= 8 (Ampere, Ada, Hopper):
      ``mixed_bfloat16`` (bf16 tensor cores, float32's range: no loss scaling);
    * compute capability 7.x (Volta, Turing): ``mixed_float16`` (fp16 tensor
      cores; Keras adds dynamic loss scaling);
    * older GPUs (no tensor cores; fp16 math is slow on most): ``float32``;
    * CPUs with AVX512_BF16/AMX: ``mixed_bfloat16`` (1.4-2.6x float32 for the
      scratch AlexNet on an AVX512-BF16 EPYC, benchmarks/bench_gpu.py); other
      CPUs: ``float32``.

    Logits, softmax and loss stay float32 in every policy (the models' last
    layers are float32). The GPU rows follow the hardware's tensor-core
    support; benchmarks/bench_gpu.py measures them per card."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    gpus = gpu_devices()
    if gpus:
        try:
            cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
        except Exception:
            cc = (0, 0)
        if cc[0] >= 8:
            return "mixed_bfloat16"
        return "mixed_float16" if cc[0] >= 7 else "float32"
    flags = cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return "mixed_bfloat16"
    return "float32"


# Measured training speed of the scratch alexnet (batch 128, default recipe)
# on 2 vCPUs of an AMD EPYC with AVX512-BF16, no GPU: what a start-up line
# quotes. bfloat16: the 30-epoch CIFAR-10 run of the README's Results;
# float32: benchmarks/bench_gpu.py on 5,000 CIFAR-10 images.
MEASURED_IMAGES_PER_SECOND = {
    ("alexnet", "mixed_bfloat16"): (225.6, "the README's 30-epoch CIFAR-10 run"),
    ("alexnet", "float32"): (137.0, "benchmarks/bench_gpu.py"),
}
MEASURED_ON = "2 vCPUs of an AMD EPYC (AVX512-BF16)"


def explain_precision(requested: str, policy: str, arch: str | None = None) -> str:
    """One line for the start of a run: the dtype policy, why it was chosen,
    and, where we measured it, the images/second to expect.

    Args:
        requested: the ``--precision`` value (``auto`` or a policy).
        policy: what :func:`resolve_precision` resolved it to.
        arch: the architecture (figures exist for ``alexnet`` on CPUs).

    Example:
        ``precision float32 (auto: this CPU has no bfloat16 units, no avx512_bf16/amx_bf16 flag);
        expect ~137 images/s or less (measured on 2 vCPUs of an AMD EPYC (AVX512-BF16): benchmarks/bench_gpu.py)``
    """
    if requested != "auto":
        why = "as --precision asked"
    else:
        gpus = gpu_devices()
        if gpus:
            import tensorflow as tf

            try:
                d = tf.config.experimental.get_device_details(gpus[0])
            except Exception:
                d = {}
            cc = d.get("compute_capability") or (0, 0)
            name = d.get("device_name", gpus[0].name)
            kind = {"mixed_bfloat16": "bfloat16 tensor cores", "mixed_float16": "float16 tensor cores"}.get(
                policy, "no tensor cores kerasalex uses")
            why = f"auto: GPU {name}, compute capability {cc[0]}.{cc[1]}, {kind}"
        elif policy == "mixed_bfloat16":
            flag = "avx512_bf16" if "avx512_bf16" in cpu_flags() else "amx_bf16"
            why = f"auto: this CPU has bfloat16 units, {flag}"
        else:
            why = "auto: this CPU has no bfloat16 units, no avx512_bf16/amx_bf16 flag"
    line = f"precision {policy} ({why})"
    figure = MEASURED_IMAGES_PER_SECOND.get((arch, policy))
    if figure is not None and not gpu_devices():
        speed, source = figure
        line += f"; expect ~{speed:.0f} images/s or less (measured on {MEASURED_ON}: {source})"
    return line


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


# --------------------------------------------------------------------------
# Optimizer, loss
# --------------------------------------------------------------------------


# The warm-up never takes more than this fraction of a run's steps.
WARMUP_MAX_FRACTION = 0.1


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Linear warm-up length in steps: ``warmup_epochs`` epochs, but at most
    :data:`WARMUP_MAX_FRACTION` of the run's ``total_steps`` (Goyal et al.
    2017 warm up over ~5 of 90 epochs; a 2-epoch warm-up in a 5-epoch run of
    11 steps per epoch spent 40% of it below the peak learning rate)."""
    wanted = int(round(float(warmup_epochs) * steps_per_epoch))
    return max(0, min(wanted, int(round(WARMUP_MAX_FRACTION * total_steps)), total_steps - 1))


def training_loop(name: str):
    """The training loop called ``name`` in the model table
    (:attr:`kerasalex.models.Architecture.loop`), as ``fit(model, config,
    data, callbacks, verbose, initial_epoch) -> model``.

    Raises:
        ValueError: for a name with no loop.
    """
    if name == "standard":
        return fit_standard
    if name == "transfer":
        from kerasalex.transfer import fit_transfer

        return fit_transfer
    raise ValueError(f"unknown training loop {name!r}; expected 'standard' or 'transfer'")


def make_optimizer(config: TrainConfig, steps_per_epoch: int, total_epochs: int | None = None, lr: float | None = None):
    import keras

    lr = float(lr if lr is not None else config.lr)
    total = max(1, steps_per_epoch * int(total_epochs or config.epochs))
    schedule: Any = lr
    if config.schedule == "cosine":
        warmup = warmup_steps(config.warmup_epochs, steps_per_epoch, total)
        if warmup > 0:
            schedule = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=lr / 100.0, decay_steps=max(1, total - warmup), alpha=0.0,
                warmup_target=lr, warmup_steps=warmup,
            )
        else:
            schedule = keras.optimizers.schedules.CosineDecay(initial_learning_rate=lr, decay_steps=total, alpha=0.0)
    wd = float(config.weight_decay) or None
    # EMA of the weights: Keras keeps the averages as optimizer variables (so
    # they are saved with the optimizer and resumed exactly) and copies them
    # into the model at the end of fit (finalize_variable_values).
    ema = dict(use_ema=True, ema_momentum=float(config.ema_momentum)) if config.ema_momentum else {}
    if config.optimizer == "sgd":
        # keras.optimizers.SGD's arithmetic, updated in place (kerasalex.optimizers).
        from kerasalex.optimizers import FusedSGD

        return FusedSGD(schedule, momentum=config.momentum, nesterov=config.nesterov, weight_decay=wd, **ema)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=wd, **ema)
    return keras.optimizers.AdamW(schedule, weight_decay=wd if wd is not None else 0.004, **ema)


def compile_model(model, config: TrainConfig, steps_per_epoch: int, total_epochs: int | None = None, lr: float | None = None):
    import keras

    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch, total_epochs, lr),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=resolve_jit(config.jit_compile),
        steps_per_execution=int(config.steps_per_execution),
    )
    return model


# --------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------


def default_run_dir(config: TrainConfig) -> Path:
    from kerasalex.data import dataset_name

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_ROOT) / f"{config.arch}-{dataset_name(config.dataset)}-{stamp}"


def latest_unfinished_run(root: str | Path = RUNS_ROOT) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        return None
    cands = [
        p for p in root.iterdir()
        if (p / "config.json").exists() and (p / "resume" / "state.json").exists() and not (p / "summary.json").exists()
    ]
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("kerasalex", "tensorflow", "keras", "keras-tuner", "numpy", "scikit-learn", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_config(run_dir: Path, config: TrainConfig, extra: dict[str, Any]) -> None:
    files.atomic_write_json(
        run_dir / "config.json",
        {"config": config.to_dict(), **extra, "versions": library_versions(), "device": describe_device()},
    )


def read_run_config(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "config.json"
    if not p.exists():
        raise ValueError(f"not a kerasalex run folder (no config.json): {run_dir}")
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise ValueError(f"run config {p} is corrupt (not JSON)") from None


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def model_metadata(config: TrainConfig, data) -> dict[str, Any]:
    """What a trained ``.keras`` file carries about itself (in the archive's
    metadata.json, see :func:`kerasalex.files.read_model_metadata`)."""
    import importlib.metadata as md

    from kerasalex.data import NAMED_DATASETS

    try:
        version = md.version("kerasalex")
    except md.PackageNotFoundError:
        version = None
    record = getattr(data, "training_data", None) or {}
    out = {
        "kerasalex_version": version,
        "arch": config.arch,
        "class_names": list(data.class_names),
        "image_shape": list(data.image_shape),
        "dataset": config.dataset,
        "config": config.to_dict(),
        # How files are decoded and resized for this model (evaluate and predict reuse it).
        "preprocessing": record.get("preprocessing") or resize_rule(config).to_dict(),
        # What it was trained on, so any copy is evaluated on images it never saw.
        "training_data": record or None,
    }
    folder = Path(config.dataset).expanduser()
    if config.dataset not in NAMED_DATASETS and folder.is_dir():
        out["dataset"] = str(folder.resolve())  # found again from any working directory
    if config.run_dir:
        # A published copy (saved_models/<run>.keras) finds its run folder:
        # `evaluate` writes its report there, where `compare` looks.
        out["run_dir"] = str(Path(config.run_dir).resolve())
    return out


# A held-out file list longer than this is not stored in the model file
# (the data's fingerprint and the split rule still identify the slice).
MAX_HELD_OUT_NAMES = 100_000


def resize_rule(config: TrainConfig):
    """The :class:`kerasalex.data.ResizeRule` a run decodes its images by:
    ``--image-size`` (else the architecture's), ``--resize`` (else the
    architecture's), and the dataset's interpolation."""
    from kerasalex.data import ResizeRule, default_interpolation
    from kerasalex.models import get_architecture

    arch = get_architecture(config.arch)
    size = config.image_size or arch.image_size
    return ResizeRule(int(size), config.resize or arch.resize, default_interpolation(config.dataset))


def training_data_record(config: TrainConfig, source, carved, rule) -> dict:
    """What a model records about its training data (``training_data`` in its
    metadata and the run's config.json): the dataset, the split rule
    (``val_split``, the fixed split seed, ``limit``), a fingerprint of the
    images the split was carved from, and the held-out images (their
    fingerprint and, for a folder, their paths), so :func:`kerasalex.evaluation.held_out_split`
    finds exactly the images the model never saw."""
    from kerasalex.data import SPLIT_SEED, fingerprint

    val = carved.val
    held = val.ids if val is not None and val.ids is not None and len(val.ids) <= MAX_HELD_OUT_NAMES else None
    return {
        "dataset": config.dataset,
        "data_dir": config.data_dir,
        "images": len(source.train),
        "fingerprint": fingerprint(source.train),
        "val_split": float(config.val_split),
        "split_seed": SPLIT_SEED,
        "limit": config.limit,
        "train_images": len(carved.train),
        "val_images": len(val) if val is not None else 0,
        "held_out_fingerprint": fingerprint(val) if val is not None else None,
        "held_out": held,
        "preprocessing": rule.to_dict(),
    }


def fit_standard(model, config: TrainConfig, data, callbacks, verbose, initial_epoch: int):
    """The plain loop: ``model.fit`` over the (seed, epoch)-ordered stream."""
    from kerasalex.data import eval_dataset, train_stream

    if initial_epoch >= config.epochs:
        return model
    ds, steps = train_stream(data.train, config.batch_size, data.num_classes, config.seed, initial_epoch, config.epochs)
    val = eval_dataset(data.val, config.batch_size, data.num_classes) if data.val is not None else None
    if config.distribute != "none":
        from kerasalex.distribute import dataset_options, prepare_model

        ds = ds.with_options(dataset_options())
        val = val.with_options(dataset_options()) if val is not None else None
        prepare_model(model, ds.element_spec)
    model.fit(ds, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
              validation_data=val, callbacks=callbacks, verbose=verbose, shuffle=False)
    return model


def _say(msg: str) -> None:
    print(f"[kerasalex] {msg}", flush=True)


def _prepare_data(config: TrainConfig):
    from kerasalex import data as D
    from kerasalex.models import get_architecture

    arch = get_architecture(config.arch)
    rule = resize_rule(config)
    if rule.size < arch.min_image_size:
        raise ValueError(f"--image-size {rule.size} is too small for {config.arch} (at least {arch.min_image_size})")
    # Training never reads the test split (a test/ lacking a class is no concern of its).
    source = D.load_data(config.dataset, config.data_dir, image_size=rule.size, resize=rule.resize,
                         interpolation=rule.interpolation, test=False)
    ds = D.carve_validation(source, config.val_split, config.limit)
    ds = dataclasses.replace(ds, test=None)
    ds.training_data = training_data_record(config, source, ds, rule)
    return ds


def _build_or_resume(config: TrainConfig, arch, data, state: dict | None, steps: int):
    """The model to train and its first epoch: reloaded from the resume state
    (optimizer and RNG state included), or freshly built and compiled.

    The model trained is :func:`kerasalex.models.training_model`: the
    architecture's inference model behind the training-only augmentation
    front; :func:`kerasalex.models.inference_model` takes the inference
    model, which every user-facing file holds, back out.
    """
    from kerasalex import callbacks as C
    from kerasalex.models import get_class_names, is_training_model, training_model

    if state is not None:
        model = files.load_model(state["model_path"], compile=True)
        if get_class_names(model) != data.class_names:
            raise ValueError(f"resume state's classes {get_class_names(model)} differ from the data's {data.class_names}")
        if not is_training_model(model):
            raise ValueError(
                f"the resume state in {Path(state['model_path']).parent} was written by an older kerasalex "
                "(augmentation inside the model); start the run again in a new --run-dir"
            )
        C.restore_seed_states(model, state["seed_states"])
        return model, int(state["epochs_done"])
    if config.arch == "alexnet-torch" and not config.weights:
        _say("alexnet-torch without --weights: training from random initialization (no ImageNet weights)")
    model = arch.build(
        num_classes=data.num_classes,
        input_shape=data.image_shape,
        class_names=data.class_names,
        dropout=config.dropout,
        kernel_initializer=config.kernel_initializer,
        head_initializer=config.head_initializer,
        seed=config.seed,
        weights=config.weights,
        base_weights=config.base_weights,
        freeze_base=config.freeze_base,
    )
    model = training_model(model, augment=config.augment, seed=config.seed)
    compile_model(model, config, steps, total_epochs=config.epochs)
    return model, 0


def train(config: TrainConfig, resume: bool = False, verbose: int | str = "auto") -> TrainResult:
    """Trains ``config.arch`` on ``config.dataset`` into a run folder; see :func:`_train`.

    The global Keras dtype policy is restored afterwards, so a library caller
    (a notebook, the tuner, tests) is not left in mixed precision.
    """
    import keras

    from kerasalex import callbacks as C

    policy = keras.mixed_precision.global_policy()
    # From here on SIGTERM (docker stop) / SIGINT stop the run cleanly: at the
    # next batch boundary during fit, at once elsewhere (see GracefulStop).
    stop = C.GracefulStop(raise_outside_fit=True).install()
    try:
        return _train(config, resume=resume, verbose=verbose, stop=stop)
    except (C.TrainingInterrupted, C.StopNow, KeyboardInterrupt) as exc:
        _remove_failed_start(stop)
        raise C.TrainingInterrupted(_interrupted_message(exc, getattr(stop, "run_dir", None))) from None
    except BaseException:
        _remove_failed_start(stop)
        raise
    finally:
        stop.uninstall()
        keras.mixed_precision.set_global_policy(policy)


def _remove_failed_start(stop) -> None:
    """Removes the folders this run created when it failed before writing its
    ``config.json`` (a typo in ``--dataset``, CIFAR offline, missing weights):
    a failed start leaves no empty run folder behind. Parents are removed
    only while empty (another run may have started beside it)."""
    run_dir = getattr(stop, "run_dir", None)
    created = getattr(stop, "created_dirs", None)
    if not created or run_dir is None or (Path(run_dir) / "config.json").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for d in created[1:]:
        try:
            d.rmdir()
        except OSError:
            break


def _interrupted_message(exc: BaseException, run_dir: Path | None) -> str:
    """What was kept and how to resume, for a run stopped by a signal."""
    from kerasalex import callbacks as C

    why = str(exc) or "interrupted"
    if run_dir is None:
        return f"{why} before the run folder was chosen; nothing was written. Run the command again"
    if not (Path(run_dir) / "config.json").exists():
        return f"{why} before training started; nothing was trained. Run the same command again"
    if (Path(run_dir) / "summary.json").exists():
        return f"{why} after the run finished; its model and summary are in {run_dir}"
    try:
        done = (C.load_resume_state(run_dir) or {}).get("epochs_done", 0)
    except ValueError:
        done = 0
    return (
        f"{why}; {done} epoch(s) finished and saved in {run_dir}. "
        f"Resume with: kerasalex train --resume --run-dir {run_dir}"
    )


def _train(config: TrainConfig, resume: bool = False, verbose: int | str = "auto", stop=None) -> TrainResult:
    """Trains ``config.arch`` on ``config.dataset`` into a run folder.

    Args:
        config: the resolved configuration (see :func:`kerasalex.config.resolve_config`).
        resume: continue the run in ``config.run_dir`` (or the newest unfinished
            run under ``runs/``) from its last finished epoch.
        verbose: Keras ``fit`` verbosity; "auto" shows the progress bar on a
            terminal and one line per epoch otherwise.

    Returns:
        A :class:`TrainResult` with the run folder, the final model path and the history.

    Raises:
        ValueError: bad options or data (one line, for the CLI).
        TrainingDiverged / TrainingInterrupted: see :mod:`kerasalex.callbacks`.
    """
    import sys

    import keras
    import numpy as np

    from kerasalex import callbacks as C
    from kerasalex.models import get_architecture

    # --- where ----------------------------------------------------------
    state = None
    saved_resolved: dict[str, Any] = {}  # a resumed run's first resolution (short-run rules)
    if resume:
        run_dir = Path(config.run_dir) if config.run_dir else latest_unfinished_run()
        if run_dir is None:
            raise ValueError("--resume: no unfinished run found under runs/; pass --run-dir RUN_FOLDER")
        saved = read_run_config(run_dir)
        saved_resolved = saved.get("resolved") or {}
        # The run's own configuration wins; only where outputs go may change.
        config = TrainConfig.from_dict({**saved["config"], "run_dir": str(run_dir)})
        state = C.load_resume_state(run_dir)
        if (run_dir / "summary.json").exists():
            raise ValueError(f"run {run_dir} already finished; its model is {json.loads((run_dir / 'summary.json').read_text()).get('model')}")
        _say(f"resuming {run_dir} after epoch {state['epochs_done'] if state else 0}")
    else:
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
        if (run_dir / "config.json").exists():
            raise ValueError(f"run folder {run_dir} already holds a run; use --resume to continue it or pick another --run-dir")
        config = config.replace(run_dir=str(run_dir))
    # A multi-worker strategy must exist before TensorFlow does anything else.
    from kerasalex.distribute import describe_strategy, is_chief, make_strategy, worker_output_path, worker_scratch_dir

    inter_op = limit_cpu_inter_op_threads(config.distribute)
    strategy = make_strategy(config.distribute)
    chief = is_chief(config.distribute)
    if config.distribute != "none":
        _say(describe_strategy(strategy, config.batch_size))
    if not chief:
        # Every worker saves (collectives need all of them), but only the
        # chief writes the run folder; the others write into scratch.
        run_dir = worker_scratch_dir()
        config = config.replace(output=str(worker_output_path(run_dir)))
    if stop is not None:
        stop.run_dir = run_dir
        stop.created_dirs = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
    run_dir.mkdir(parents=True, exist_ok=True)
    files.remove_stale_temps(run_dir)
    files.remove_stale_temps(run_dir / "resume")

    # --- how ------------------------------------------------------------
    precision = resolve_precision(config.precision)
    set_precision(precision)
    _say(explain_precision(config.precision, precision, config.arch))
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    arch = get_architecture(config.arch)

    # --- data -----------------------------------------------------------
    t0 = time.perf_counter()
    data = _prepare_data(config)
    n_train = len(data.train)
    from kerasalex.config import auto_batch_size, is_short_run

    short = is_short_run(config.batch_size, n_train, config.epochs, config.min_steps)
    if short and config.short_run_dropout is not None and config.dropout != config.short_run_dropout:
        _say(f"dropout {config.short_run_dropout:g} (not {config.dropout:g}): a run of fewer than {config.min_steps} "
             f"steps underfits, and dropout only slows it; --dropout R keeps R")
        config = config.replace(dropout=config.short_run_dropout)
    batch = auto_batch_size(config.batch_size, n_train, config.epochs, config.min_steps)
    recipe_batch = config.batch_size
    # Resuming, config.json already holds the adapted values: keep what the
    # first start resolved them from.
    short = bool(saved_resolved.get("short_run", short))
    recipe_batch = int(saved_resolved.get("batch_size_before_min_steps", recipe_batch))
    if batch != config.batch_size:
        _say(f"batch size {batch} (not {config.batch_size}): {n_train} images x {config.epochs} epochs would be "
             f"{config.epochs * -(-n_train // config.batch_size)} steps, fewer than the recipe's {config.min_steps}; "
             f"--batch-size N keeps N")
        config = config.replace(batch_size=batch)
    steps = max(1, -(-n_train // config.batch_size))
    _say(
        f"{data.name}: {n_train} training / {len(data.val) if data.val is not None else 0} validation images "
        f"{data.image_shape}, {data.num_classes} classes (loaded in {time.perf_counter() - t0:.1f}s)"
    )
    if data.left_out:
        from kerasalex.data import describe_left_out, display_name

        _say(describe_left_out(data.left_out, display_name(config.dataset)) + "; all listed in config.json (left_out_files)")
    rule = data.training_data["preprocessing"]
    _say(f"images decoded by one rule: EXIF orientation applied, {rule['color']}, transparency on white; "
         f"resized to {rule['image_size']}x{rule['image_size']} by {rule['resize']} ({rule['interpolation']})")

    if config.fine_tune_epochs and arch.loop != "transfer":
        raise ValueError(f"--fine-tune-epochs applies to transfer architectures (vgg16), not {config.arch}")
    if arch.loop == "transfer":
        _say(f"plan: {config.epochs + config.fine_tune_epochs} epoch(s) = {config.epochs} head + "
             f"{config.fine_tune_epochs} fine-tuning (--epochs sets the total, --fine-tune-epochs the fine-tuning share)")

    # --- model ----------------------------------------------------------
    with strategy.scope():
        model, initial_epoch = _build_or_resume(config, arch, data, state, steps)

    write_run_config(
        run_dir, config,
        {
            "resolved": {"precision": precision, "steps_per_epoch": steps, "train_images": n_train,
                         "batch_size": config.batch_size, "batch_size_before_min_steps": recipe_batch,
                         "short_run": short, "dropout": config.dropout,
                         "warmup_steps": (warmup_steps(config.warmup_epochs, steps, steps * config.epochs)
                                          if config.schedule == "cosine" else 0),
                         "val_images": len(data.val) if data.val is not None else 0,
                         "class_names": data.class_names, "image_shape": list(data.image_shape),
                         "skipped_files": data.skipped, "left_out_files": data.left_out,
                         "preprocessing": data.training_data["preprocessing"],
                         "training_data": data.training_data, "parameters": int(model.count_params()),
                         "trainable_parameters": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
                         "jit_compile": bool(model.jit_compile), "replicas": int(strategy.num_replicas_in_sync),
                         "inter_op_threads": inter_op,
                         "onednn_allocator": ("system" if os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "").lower()
                                              in ("1", "true") else "pool")},
        },
    )
    if not resume:
        _say(f"run folder: {run_dir}  ({config.arch}, {model.count_params():,} parameters, precision {precision})")

    history = C.read_history(run_dir) if state is not None else []
    history = [r for r in history if r["epoch"] <= initial_epoch]
    best = max((r.get("val_accuracy", -1) for r in history), default=None) if history else None

    if stop is None:
        stop = C.GracefulStop()
    from kerasalex.data import display_name

    judged = data.val if data.val is not None else data.train
    plateau = C.ChancePlateau(data.num_classes, judged.y, "val_accuracy" if data.val is not None else "accuracy")
    cbs = [
        C.StopOnDivergence(),
        plateau,
        C.EpochHistory(run_dir, n_train, history, title=f"{config.arch} on {display_name(config.dataset)}"),
        C.ResumeState(run_dir),
        # With EMA, validation runs on the averaged weights (swapped in for
        # evaluation only); the model's own variables stay the raw weights, so
        # the resume state is exact. No best.keras then: it would hold the raw
        # weights of the epoch whose EMA weights scored best.
        keras.callbacks.SwapEMAWeights() if config.ema_momentum else None,
        C.BestCheckpoint(run_dir / "best.keras", best=best, metadata=model_metadata(config, data))
        if data.val is not None and config.save_best and not config.ema_momentum else None,
        stop,
    ]
    cbs = [c for c in cbs if c is not None]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    fit_t0 = time.perf_counter()
    try:
        fit = training_loop(arch.loop)
        model = fit(model, config, data, cbs, verbose, initial_epoch) or model
    except C.TrainingDiverged as exc:
        raise C.TrainingDiverged(
            f"training diverged ({exc}); lower --lr. The last good model and resume state in {run_dir} are unchanged"
        ) from None
    finally:
        stop.fitting = False
    fit_seconds = time.perf_counter() - fit_t0

    # --- outputs --------------------------------------------------------
    from kerasalex.models import inference_model

    history = C.read_history(run_dir)
    # The inference model: stock layers, no augmentation, no optimizer, float32.
    files.save_model(inference_model(model), run_dir / "model.keras", metadata=model_metadata(config, data), float32=True)
    if config.output:
        out = Path(config.output)
    else:
        out = Path(config.save_dir) / f"{run_dir.name}.keras"
    files.copy_file(run_dir / "model.keras", out)
    train_seconds = sum(r.get("epoch_seconds", 0) for r in history)
    warnings_ = list(plateau.warnings)
    final_val = (history[-1] if history else {}).get("val_accuracy")
    if data.val is not None and final_val is not None and C.at_chance_accuracy(final_val, data.val.y, data.num_classes):
        msg = (f"validation accuracy {final_val:.1%} at the end is at chance for {data.num_classes} classes "
               f"({len(data.val)} validation images): the model did not learn; {C.PLATEAU_ADVICE}")
        warnings_.append(msg)
        _say(f"warning: {msg}")
    summary = {
        "arch": config.arch,
        "dataset": data.name,
        "run_dir": str(run_dir),
        "model": str(out),
        "run_model": str(run_dir / "model.keras"),
        "best_model": str(run_dir / "best.keras") if (run_dir / "best.keras").exists() else None,
        "epochs": len(history),
        "train_seconds": round(train_seconds, 2),
        "fit_seconds_this_session": round(fit_seconds, 2),
        "final": history[-1] if history else {},
        "best_val_accuracy": max((r.get("val_accuracy") or 0 for r in history), default=None),
        "mean_images_per_second": round(float(np.mean([r["images_per_second"] for r in history if r.get("images_per_second")])), 1) if history else None,
        "parameters": int(model.count_params()),
        "precision": precision,
        "warnings": warnings_,
    }
    files.atomic_write_json(run_dir / "summary.json", summary)
    shutil.rmtree(run_dir / "resume", ignore_errors=True)
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
    _say(f"saved {out} (and {run_dir / 'model.keras'}); history in {run_dir / 'history.csv'}")
    return TrainResult(run_dir, out, history, config, summary)
