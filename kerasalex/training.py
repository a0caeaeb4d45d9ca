"""compile + fit, callbacks, resume: ``train(config)``.

``train(config)`` is the one entry point: it resolves the device and
precision, prepares the data (:func:`prepare_data`), builds (or, resuming,
reloads) the model, trains it with the loop its registry entry names
(:func:`training_loop`) and the callbacks that keep history and resume
state, and writes the final ``.keras`` atomically.

Beside it: :mod:`kerasalex.device` (the machine), :mod:`kerasalex.compiling`
(optimizer, schedule, loss), :mod:`kerasalex.runs` (the run folder), whose
names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from kerasalex import files, runs
from kerasalex.compiling import WARMUP_MAX_FRACTION, compile_model, make_optimizer, warmup_steps  # noqa: F401
from kerasalex.config import TrainConfig
from kerasalex.data import MAX_HELD_OUT_NAMES, training_data_record  # noqa: F401  (the data's own record)
from kerasalex.device import (  # noqa: F401
    bf16_flags,
    cpu_flags,
    describe_device,
    gpu_devices,
    limit_cpu_inter_op_threads,
    quiet_model_retracing,
    resolve_jit,
    set_precision,
)
from kerasalex.runs import (  # noqa: F401
    RUNS_ROOT,
    default_run_dir,
    latest_unfinished_run,
    library_versions,
    model_metadata,
    read_run_config,
    resize_rule,
    write_run_config,
)
from kerasalex.runs import interrupted_message as _interrupted_message  # noqa: F401


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    history: list[dict]
    config: TrainConfig
    summary: dict


def _say(msg: str) -> None:
    print(f"[kerasalex] {msg}", flush=True)


# --------------------------------------------------------------------------
# Precision (cpu_flags / gpu_devices are looked up here, so tests can fake a device)
# --------------------------------------------------------------------------


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
    if bf16_flags(cpu_flags()):
        return "mixed_bfloat16"
    return "float32"


# The CPUs the registry's cpu_images_per_second figures were measured on:
# keys without a suffix on the first; keys ending in ":avx2" on the second
# (float32 on a CPU without AVX-512, where oneDNN has half the vector width);
# keys ending in ":amx" on the third (bfloat16 on a CPU with AMX tile units,
# which oneDNN uses for bfloat16 matmuls and convolutions).
MEASURED_ON = "2 vCPUs of an AMD EPYC (AVX512-BF16)"
MEASURED_ON_AVX2 = "2 vCPUs of an AMD EPYC (AVX2, no AVX-512)"
MEASURED_ON_AMX = "2 vCPUs of an Intel Xeon (AMX-BF16)"
_MEASURED_ON_BY_SUFFIX = {"": MEASURED_ON, "avx2": MEASURED_ON_AVX2, "amx": MEASURED_ON_AMX}


def cpu_figure_key(policy: str) -> str:
    """The ``cpu_images_per_second`` key for ``policy`` on this CPU:
    ``"float32:avx2"`` for float32 on a CPU without ``avx512f``,
    ``"mixed_bfloat16:amx"`` for bfloat16 on a CPU with ``amx_bf16``, else
    the policy itself."""
    flags = cpu_flags()
    if policy == "float32" and "avx512f" not in flags:
        return "float32:avx2"
    if policy == "mixed_bfloat16" and "amx_bf16" in flags:
        return "mixed_bfloat16:amx"
    return policy


def measured_on(key: str) -> str:
    """The CPU a ``cpu_images_per_second`` key's figure was measured on
    (:data:`MEASURED_ON`, :data:`MEASURED_ON_AVX2` or :data:`MEASURED_ON_AMX`)."""
    return _MEASURED_ON_BY_SUFFIX[key.partition(":")[2]]


def explain_precision(requested: str, policy: str, arch: str | None = None, batch_size: int | None = None) -> str:
    """One line for the start of a run: the dtype policy, why it was chosen,
    and, where we measured it, the images/second to expect.

    Args:
        requested: the ``--precision`` value (``auto`` or a policy).
        policy: what :func:`resolve_precision` resolved it to.
        arch: the architecture (figures exist for ``alexnet`` on CPUs).
        batch_size: the run's batch size before the run-length rules (which
            may change it); below the figure's 128 the line says to
            expect fewer images/s (batch 64: 6-13% fewer on the AMD CPUs,
            the median per-round ratios of ``benchmarks/bench_batch_speed.py``;
            ~20% fewer on the Intel AMX one, paired whole runs).

    Example:
        ``precision float32 (auto: this CPU has no bfloat16 units, no avx512_bf16/amx_bf16 flag);
        expect ~137 images/s at batch 128 and 32 px (measured on 2 vCPUs of an AMD EPYC
        (AVX512-BF16): benchmarks/bench_gpu.py)``; on a CPU without AVX-512, or
        with AMX, the figure measured on one (:func:`cpu_figure_key`). A
        figure is one machine's: another CPU of the same kind can be faster
        or slower.
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
            flags = " + ".join(bf16_flags(cpu_flags())) or "amx_bf16"
            why = f"auto: this CPU has bfloat16 units, {flags}"
        else:
            why = "auto: this CPU has no bfloat16 units, no avx512_bf16/amx_bf16 flag"
    line = f"precision {policy} ({why})"
    from kerasalex.models import ARCHITECTURES

    row = ARCHITECTURES.get(arch) if arch else None
    key = cpu_figure_key(policy)
    figure = row.cpu_images_per_second.get(key) if row is not None else None
    if figure is not None and not gpu_devices():
        speed, source = figure
        line += (f"; expect ~{speed:.0f} images/s at batch 128 and {row.image_size} px "
                 f"(measured on {measured_on(key)}: {source})")
        if batch_size is not None and int(batch_size) < 128:
            fewer, where = (("~20%", "paired runs, README \"Benchmarks\"") if key.endswith(":amx")
                            else ("6-13%", "benchmarks/bench_batch_speed.py"))
            line += f", fewer at a smaller batch (64: {fewer} fewer, {where})"
    return line


# --------------------------------------------------------------------------
# Data and loops
# --------------------------------------------------------------------------


def prepare_data(config: TrainConfig):
    """A run's training data, as train, transfer and tune all load it: the
    architecture's decoding rule (:func:`resize_rule`) checked against its
    smallest input, then :func:`kerasalex.data.prepare`.

    Returns:
        A :class:`kerasalex.data.ImageData` (train, val or None, no test,
        ``training_data`` set).

    Raises:
        ValueError: ``--image-size`` below the architecture's minimum, or bad data.
    """
    from kerasalex import data as D
    from kerasalex.models import get_architecture

    arch = get_architecture(config.arch)
    rule = resize_rule(config)
    if rule.size < arch.min_image_size:
        raise ValueError(f"--image-size {rule.size} is too small for {config.arch} (at least {arch.min_image_size})")
    # Under multi-worker, a folder stays on disk unless --data-cache memory:
    # each worker then reads only its share of every batch (data.sharded_streams).
    storage = "disk" if config.distribute == "multi-worker" and config.data_cache == "auto" else config.data_cache
    return D.prepare(config.dataset, rule, data_dir=config.data_dir, val_split=config.val_split, limit=config.limit,
                     storage=storage)


def build_training_model(config: TrainConfig, data, seed: int | None = None):
    """The model ``fit`` trains, as ``train`` and every ``tune`` trial build
    it: the architecture's inference model with the run's options (one call,
    so an option reaches both), behind the training-only augmentation front
    (:func:`kerasalex.models.training_model`).

    Args:
        config: the run's options (architecture, dropout, initializers,
            pretrained weights, augmentation, random erasing).
        data: the :class:`kerasalex.data.ImageData` it trains on (classes,
            image shape).
        seed: layer seeds (``config.seed`` if None; a tuner trial offsets it).

    Returns:
        An uncompiled ``keras.Model`` taking uint8 images (N, H, W, 3) and
        returning float32 logits (N, classes).

    Raises:
        ValueError: an option the architecture does not take.
    """
    from kerasalex.models import get_architecture, training_model

    seed = config.seed if seed is None else int(seed)
    model = get_architecture(config.arch).build(
        num_classes=data.num_classes,
        input_shape=data.image_shape,
        class_names=data.class_names,
        dropout=config.dropout,
        kernel_initializer=config.kernel_initializer,
        head_initializer=config.head_initializer,
        seed=seed,
        weights=config.weights,
        base_weights=config.base_weights,
        freeze_base=config.freeze_base,
    )
    return training_model(model, augment=config.augment, seed=seed, random_erasing=config.random_erasing,
                          translate=config.translate)


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


def fit_standard(model, config: TrainConfig, data, callbacks, verbose, initial_epoch: int):
    """The plain loop: ``model.fit`` over the (seed, epoch)-ordered stream."""
    from kerasalex.data import eval_dataset, train_stream

    if initial_epoch >= config.epochs:
        return model
    if config.distribute == "multi-worker":
        return fit_multi_worker(model, config, data, callbacks, verbose, initial_epoch)
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


def fit_multi_worker(model, config: TrainConfig, data, callbacks, verbose, initial_epoch: int,
                     epochs: int | None = None):
    """``fit`` (epochs ``initial_epoch..epochs-1``, default ``config.epochs``)
    under MultiWorkerMirroredStrategy, each worker gathering only its
    replicas' part of every global batch (:func:`kerasalex.data.sharded_streams`);
    says how many images this worker read."""
    import tensorflow as tf

    from kerasalex.data import sharded_streams
    from kerasalex.distribute import prepare_model

    epochs_to = int(config.epochs if epochs is None else epochs)
    ds, val, steps, counts = sharded_streams(model.distribute_strategy, data.train, config.batch_size,
                                             data.num_classes, config.seed, initial_epoch, epochs_to, val=data.val)
    spec = (tf.TensorSpec((None, *data.image_shape), tf.uint8), tf.TensorSpec((None, data.num_classes), tf.float32))
    prepare_model(model, spec)
    read_before = getattr(data.train.x, "images_read", None)
    model.fit(ds, epochs=epochs_to, initial_epoch=initial_epoch, steps_per_epoch=steps,
              validation_data=val, callbacks=callbacks, verbose=verbose, shuffle=False)
    epochs = epochs_to - initial_epoch
    n_val = len(data.val) if data.val is not None else 0
    read = (f"; {data.train.x.images_read - read_before} images (training and validation) read from the "
            "decode cache" if read_before is not None else "")
    _say(f"this worker gathered {counts['train']} training images over {epochs} epoch(s) of {len(data.train)} "
         f"and {counts['val']} validation images over as many validation passes of {n_val}{read}")
    return model


# --------------------------------------------------------------------------
# train()
# --------------------------------------------------------------------------


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
    if arch.weights_required and not getattr(config, arch.weights_option):
        flag = "--" + arch.weights_option.replace("_", "-")
        _say(f"{config.arch} without {flag}: training from random initialization (no ImageNet weights)")
    model = build_training_model(config, data)
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
        runs.remove_failed_start(stop)
        raise C.TrainingInterrupted(runs.interrupted_message(exc, getattr(stop, "run_dir", None))) from None
    except BaseException:
        runs.remove_failed_start(stop)
        raise
    finally:
        stop.uninstall()
        keras.mixed_precision.set_global_policy(policy)


def _start_workers(config: TrainConfig, run_dir: Path, stop):
    """The tf.distribute strategy (it must exist before TensorFlow does
    anything else) and where this process writes: the run folder on the
    chief, a scratch folder on the other workers.

    Returns:
        ``(config, run_dir, strategy, chief, inter_op_threads)``.
    """
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
    return config, run_dir, strategy, chief, inter_op


def _set_numerics(config: TrainConfig) -> str:
    """Sets the dtype policy, the seeds and (``--deterministic``) op determinism; returns the policy."""
    import keras

    precision = resolve_precision(config.precision)
    set_precision(precision)
    _say(explain_precision(config.precision, precision, config.arch, config.batch_size))
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return precision


def _fit_to_data(config: TrainConfig, n_train: int, saved_resolved: dict):
    """The run-length rules (batch size and learning rate of a run long enough for the larger batch, the
    dropout of a short one, the minimum number of steps, no translation
    below the recipe's number of epochs) applied to ``n_train`` images;
    resuming, what the first start resolved.

    Returns:
        ``(config, short_run, batch_size_before_min_steps, steps_per_epoch)``.
    """
    from kerasalex.config import run_length_rules
    from kerasalex.data import steps_per_epoch

    config, short, notes, recipe_batch = run_length_rules(config, n_train)
    for note in notes:
        _say(note)
    # Resuming, config.json already holds the adapted values: keep what the
    # first start resolved them from.
    short = bool(saved_resolved.get("short_run", short))
    recipe_batch = int(saved_resolved.get("batch_size_before_min_steps", recipe_batch))
    return config, short, recipe_batch, steps_per_epoch(n_train, config.batch_size)


def _describe_data(config: TrainConfig, data, seconds: float) -> None:
    from kerasalex.data import describe_left_out, display_name

    _say(
        f"{data.name}: {len(data.train)} training / {len(data.val) if data.val is not None else 0} validation images "
        f"{data.image_shape}, {data.num_classes} classes (loaded in {seconds:.1f}s)"
    )
    if data.left_out:
        _say(describe_left_out(data.left_out, display_name(config.dataset)) + "; all listed in config.json (left_out_files)")
    rule = data.training_data["preprocessing"]
    _say(f"images decoded by one rule: EXIF orientation applied, {rule['color']}, transparency on white; "
         f"resized to {rule['image_size']}x{rule['image_size']} by {rule['resize']} ({rule['interpolation']})")


def _check_plan(config: TrainConfig, arch) -> None:
    if config.fine_tune_epochs and arch.loop != "transfer":
        from kerasalex.models import ARCHITECTURES

        transfer = ", ".join(a.name for a in ARCHITECTURES.values() if a.loop == "transfer")
        raise ValueError(f"--fine-tune-epochs applies to transfer architectures ({transfer}), not {config.arch}")
    if arch.loop == "transfer":
        _say(f"plan: {config.epochs + config.fine_tune_epochs} epoch(s) = {config.epochs} head + "
             f"{config.fine_tune_epochs} fine-tuning (--epochs sets the total, --fine-tune-epochs the fine-tuning share)")


def _callbacks(config: TrainConfig, data, run_dir: Path, model, history: list[dict], stop):
    """The run's callbacks (the plateau watcher second, for its warnings)."""
    import keras

    from kerasalex import callbacks as C
    from kerasalex.data import display_name

    best = max((r.get("val_accuracy", -1) for r in history), default=None) if history else None
    judged = data.val if data.val is not None else data.train
    plateau = C.ChancePlateau(data.num_classes, judged.y, "val_accuracy" if data.val is not None else "accuracy")
    cbs = [
        C.StopOnDivergence(),
        plateau,
        C.EpochHistory(run_dir, len(data.train), history, title=f"{config.arch} on {display_name(config.dataset)}"),
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
    return [c for c in cbs if c is not None], plateau


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

    from kerasalex import callbacks as C
    from kerasalex.models import get_architecture

    arch = get_architecture(config.arch)
    # An option the architecture does not take is refused before any folder or data.
    arch.check_options(weights=config.weights, base_weights=config.base_weights, freeze_base=config.freeze_base)
    if arch.loop == "transfer" and config.distribute == "multi-worker":
        raise ValueError(f"--arch {config.arch} does not train under --distribute multi-worker yet (its cached-feature "
                         "head stage fails under the strategy); use --distribute mirrored on one machine")
    config, run_dir, state, saved_resolved = runs.open_run(config, resume, _say)
    config, run_dir, strategy, chief, inter_op = _start_workers(config, run_dir, stop)
    precision = _set_numerics(config)

    t0 = time.perf_counter()
    data = prepare_data(config)
    config, short, recipe_batch, steps = _fit_to_data(config, len(data.train), saved_resolved)
    _describe_data(config, data, time.perf_counter() - t0)
    _check_plan(config, arch)

    with strategy.scope():
        model, initial_epoch = _build_or_resume(config, arch, data, state, steps)
    write_run_config(run_dir, config, {"resolved": runs.resolved_record(
        config, data, model, steps, precision=precision, recipe_batch=recipe_batch, short=short,
        replicas=strategy.num_replicas_in_sync, inter_op=inter_op)})
    if not resume:
        _say(f"run folder: {run_dir}  ({config.arch}, {model.count_params():,} parameters, precision {precision})")

    history = C.read_history(run_dir) if state is not None else []
    history = [r for r in history if r["epoch"] <= initial_epoch]
    if stop is None:
        stop = C.GracefulStop()
    cbs, plateau = _callbacks(config, data, run_dir, model, history, stop)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    fit_t0 = time.perf_counter()
    try:
        model = training_loop(arch.loop)(model, config, data, cbs, verbose, initial_epoch) or model
    except C.TrainingDiverged as exc:
        raise C.TrainingDiverged(
            f"training diverged ({exc}); lower --lr. The last good model and resume state in {run_dir} are unchanged"
        ) from None
    finally:
        stop.fitting = False
    return _finish(config, data, run_dir, model, plateau.warnings,
                   precision=precision, fit_seconds=time.perf_counter() - fit_t0, chief=chief)


def _finish(config: TrainConfig, data, run_dir: Path, model, warnings_: list[str], precision: str,
            fit_seconds: float, chief: bool) -> TrainResult:
    """Writes the outputs: the inference model (run folder and ``--output`` /
    ``saved_models/``) and summary.json; removes the resume state."""
    from kerasalex import callbacks as C
    from kerasalex.models import inference_model

    history = C.read_history(run_dir)
    # The inference model: stock layers, no augmentation, no optimizer, float32.
    files.save_model(inference_model(model), run_dir / "model.keras", metadata=model_metadata(config, data), float32=True)
    out = Path(config.output) if config.output else Path(config.save_dir) / f"{run_dir.name}.keras"
    files.copy_file(run_dir / "model.keras", out)
    warnings_ = list(warnings_)
    final_val = (history[-1] if history else {}).get("val_accuracy")
    if data.val is not None and final_val is not None and C.at_chance_accuracy(final_val, data.val.y, data.num_classes):
        msg = (f"validation accuracy {final_val:.1%} at the end is at chance for {data.num_classes} classes "
               f"({len(data.val)} validation images): the model did not learn; {C.PLATEAU_ADVICE}")
        warnings_.append(msg)
        _say(f"warning: {msg}")
    summary = runs.summary_record(config, data, run_dir, out, history, model, precision=precision,
                                  warnings=warnings_, fit_seconds=fit_seconds)
    files.atomic_write_json(run_dir / "summary.json", summary)
    shutil.rmtree(run_dir / "resume", ignore_errors=True)
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
    _say(f"saved {out} (and {run_dir / 'model.keras'}); history in {run_dir / 'history.csv'}")
    return TrainResult(run_dir, out, history, config, summary)
