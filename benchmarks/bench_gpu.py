"""Training speed per architecture, precision and XLA setting (GPU-ready; runs on CPU too).

For every combination of ``--archs`` x ``--precisions`` x ``--jit`` x
``--augment`` x ``--steps-per-execution`` it prints:

* train img/s: images per second of ``model.fit`` on kerasalex's own input
  pipeline (uint8 batches from the in-memory array, ``train_stream``), the
  model built and compiled exactly as ``kerasalex train`` does (default
  recipe: augmentation, dropout, label smoothing, SGD + cosine);
* epoch s: the seconds one CIFAR-10 training epoch (45,000 images after the
  10% validation split) takes at that speed (measured over a whole epoch when
  ``--steps epoch``, which is the default on a GPU);
* pipeline img/s: the input pipeline alone (batches pulled and copied to the
  device, no model), which must be well above train img/s for the GPU, not the
  input, to be the bottleneck;
* peak mem: peak GPU memory of the run (``tf.config.experimental.get_memory_info``),
  or, on a CPU, the process's peak resident memory;

beside the study-style baseline measured in the same run: the study's
subclassed Keras AlexNet (two ``Sequential`` blocks), images normalized to
float32 on the host (``x / 127.5 - 1``), ``from_tensor_slices(...).shuffle(1000).batch(30)``,
SGD 0.001 momentum 0.9, float32, no XLA.

Each configuration runs in its own process (a clean dtype policy, XLA cache
and memory peak; a failing one is reported, not fatal).

Usage:
    python benchmarks/bench_gpu.py                          # defaults per device
    python benchmarks/bench_gpu.py --steps 5 --warmup 2     # a quick CPU look
    python benchmarks/bench_gpu.py --archs alexnet --precisions float32,mixed_bfloat16,mixed_float16 \\
        --jit off,on --augment on,off --batch-size 512 --json bench.json

Defaults: on a GPU, alexnet in float32 / mixed_float16 / mixed_bfloat16, XLA
off and on, one full epoch timed after 20 warm-up steps; on a CPU, alexnet in
float32 / mixed_bfloat16, XLA off and on, 5 timed steps after 2 warm-up steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
CIFAR_TRAIN_IMAGES = 45_000  # 50,000 minus the 10% validation split
NUM_CLASSES = 10


# --------------------------------------------------------------------------
# One configuration (runs in a child process)
# --------------------------------------------------------------------------


def _gpus():
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def _synthetic(n: int, size: int, seed: int = 0):
    """uint8 images and int labels of CIFAR's shape; speed does not depend on content."""
    import numpy as np

    from kerasalex.data import Split

    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def _load_split(spec: dict):
    if spec["data"] == "synthetic":
        return _synthetic(spec["images"], spec["image_size"])
    from kerasalex import data as D

    ds = D.carve_validation(D.load_data(spec["data"], spec.get("data_dir"), image_size=spec["image_size"]), 0.1)
    return ds.train


def _peak_memory_mb() -> tuple[float | None, str]:
    gpus = _gpus()
    if gpus:
        import tensorflow as tf

        try:
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, "GPU"
        except (ValueError, RuntimeError):
            return None, "GPU"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "host RSS"


class _Timer:
    """Marks the time after the warm-up executions and after the last one;
    reading the loss forces the device to finish the steps before it."""

    def __init__(self, keras, warmup_calls: int, total_calls: int):
        outer = self

        class Cb(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                outer.calls += 1
                if outer.calls in (warmup_calls, total_calls):
                    float((logs or {}).get("loss", 0.0))
                    outer.marks.append(time.perf_counter())

        self.calls = 0
        self.marks: list[float] = []
        self.callback = Cb()


def _pipeline_rate(ds, batches: int, warmup: int) -> float:
    """Images/second the dataset delivers to the device, with no model."""
    import tensorflow as tf

    device = "/GPU:0" if _gpus() else "/CPU:0"
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    n = 0
    t0 = time.perf_counter()
    last = None
    for _ in range(batches):
        x, _y = next(it)
        with tf.device(device):
            last = tf.identity(x)
        n += int(x.shape[0])
    if last is not None:
        last.numpy()
    return n / (time.perf_counter() - t0)


def _study_alexnet(keras, num_classes: int = NUM_CLASSES):
    """The study's Keras model, as written there (subclassed, two Sequentials)."""
    from keras import layers

    class StudyAlexNet(keras.Model):
        def __init__(self, num_classes=10):
            super().__init__()
            self.caracteristicas = keras.Sequential([
                layers.Conv2D(96, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(3, strides=2, padding="valid"),
                layers.Conv2D(256, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(3, strides=2, padding="valid"),
                layers.Conv2D(384, 3, padding="same", activation="relu"),
                layers.Conv2D(384, 3, padding="same", activation="relu"),
                layers.Conv2D(256, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(3, strides=2, padding="valid"),
            ])
            self.clasificador = keras.Sequential([
                layers.Flatten(),
                layers.Dense(4096, activation="relu"),
                layers.Dense(4096, activation="relu"),
                layers.Dense(num_classes),
            ])

        def call(self, x):
            return self.clasificador(self.caracteristicas(x))

    return StudyAlexNet(num_classes)


def run_baseline(spec: dict) -> dict:
    """The study's recipe: host float32 normalization, batch 30, float32, no XLA."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("float32")
    batch = 30
    split = _load_split({**spec, "image_size": 32})
    x = split.x.astype("float32") / 127.5 - 1.0
    y = split.y
    steps = spec["steps"] if spec["steps"] != "epoch" else -(-len(x) // batch)
    total = spec["warmup"] + steps
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1000).batch(batch).repeat()
    model = _study_alexnet(keras)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.001, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    timer = _Timer(keras, spec["warmup"], total)
    model.fit(ds, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[timer.callback])
    seconds = timer.marks[-1] - timer.marks[0]
    rate = steps * batch / seconds
    pipe = _pipeline_rate(ds, min(200, max(20, steps)), 5)
    mem, mem_kind = _peak_memory_mb()
    return {
        "arch": "study AlexNet (subclassed)", "precision": "float32", "jit": "off", "jit_effective": False,
        "augment": False, "batch": batch, "steps_per_execution": 1, "timed_steps": steps,
        "train_img_s": rate, "ms_per_step": 1000 * seconds / steps, "epoch_s": seconds / steps * -(-CIFAR_TRAIN_IMAGES // batch),
        "pipeline_img_s": pipe, "peak_mem_mb": mem, "mem_kind": mem_kind, "input": "host float32",
    }


def run_config(spec: dict) -> dict:
    """kerasalex's model and pipeline for one (arch, precision, jit, augment, spe)."""
    import keras

    from kerasalex.config import resolve_config
    from kerasalex.data import train_stream
    from kerasalex.models import get_architecture
    from kerasalex.training import compile_model, resolve_precision, set_precision

    arch = get_architecture(spec["arch"])
    options = dict(
        precision=spec["precision"], jit_compile=spec["jit"], steps_per_execution=spec["spe"],
        augment=spec["augment"], batch_size=spec.get("batch_size"),
    )
    config = resolve_config(arch=spec["arch"], recipe="default", **options)
    precision = resolve_precision(config.precision)
    set_precision(precision)
    keras.utils.set_random_seed(0)
    size = spec.get("image_size") or arch.image_size
    split = _load_split({**spec, "image_size": size})
    batch = config.batch_size
    per_epoch = -(-len(split) // batch)
    spe = int(config.steps_per_execution)
    steps = per_epoch if spec["steps"] == "epoch" else int(spec["steps"])
    warmup = -(-int(spec["warmup"]) // spe) * spe
    steps = max(spe, -(-steps // spe) * spe)
    total = warmup + steps
    epochs_needed = -(-total // per_epoch) + 1

    from types import SimpleNamespace

    from kerasalex.training import build_training_model

    # What `train` fits: the architecture with the run's options behind the
    # training-only augmentation front (one builder for train, tune and this).
    shape = SimpleNamespace(num_classes=NUM_CLASSES, image_shape=(size, size, 3), class_names=None)
    model = build_training_model(config.replace(base_weights="none" if arch.weights_option == "base_weights" else None), shape, seed=0)
    compile_model(model, config, per_epoch, total_epochs=config.epochs)
    ds, _ = train_stream(split, batch, NUM_CLASSES, 0, 0, epochs_needed)
    timer = _Timer(keras, warmup // spe, total // spe)
    model.fit(ds, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[timer.callback])
    seconds = timer.marks[-1] - timer.marks[0]
    rate = steps * batch / seconds
    # The pipeline alone reads 5 + pipe_batches batches: enough epochs for
    # them even when --images is small (a short stream raised StopIteration).
    pipe_batches = min(200, max(20, steps))
    pipe_ds, _ = train_stream(split, batch, NUM_CLASSES, 0, 0, -(-(pipe_batches + 5) // per_epoch) + 1)
    pipe = _pipeline_rate(pipe_ds, pipe_batches, 5)
    mem, mem_kind = _peak_memory_mb()
    return {
        "arch": spec["arch"], "precision": precision, "jit": spec["jit"], "jit_effective": bool(model.jit_compile),
        "augment": bool(config.augment), "batch": batch, "steps_per_execution": spe, "timed_steps": steps,
        "train_img_s": rate, "ms_per_step": 1000 * seconds / steps,
        "epoch_s": seconds / steps * -(-CIFAR_TRAIN_IMAGES // batch),
        "pipeline_img_s": pipe, "peak_mem_mb": mem, "mem_kind": mem_kind, "input": "uint8 train_stream",
        "loss_scale": type(model.optimizer).__name__ == "LossScaleOptimizer",
    }


# --------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------


def _child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            row = json.loads(line[7:])
            row["wall_s"] = time.perf_counter() - t0
            return row
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": f"exit {proc.returncode}: {tail[:160]}"}


def _device_line() -> tuple[str, bool]:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for g in gpus:
            try:
                d = tf.config.experimental.get_device_details(g)
                names.append(f"{d.get('device_name', g.name)} (compute capability {d.get('compute_capability')})")
            except Exception:
                names.append(g.name)
        return "GPU: " + ", ".join(names), True
    from kerasalex.device import cpu_model_name

    return f"CPU only: {cpu_model_name()}, {os.cpu_count()} cores (os.sched_getaffinity: {len(os.sched_getaffinity(0))})", False


def _fmt(v, spec=",.0f"):
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = ("| arch | precision | XLA (asked -> used) | augment | batch | spe | train img/s | ms/step | epoch s (45k) "
            "| pipeline img/s | pipeline / train | peak mem MB |")
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    for r in rows:
        if "error" in r:
            print(f"| {r.get('arch')} | {r.get('precision')} | {r.get('jit')} | {r.get('augment')} | | | error: {r['error']} | | | | | |")
            continue
        jit = f"{r['jit']} -> {'on' if r['jit_effective'] else 'off'}"
        ratio = r["pipeline_img_s"] / r["train_img_s"] if r["train_img_s"] else None
        mem = f"{_fmt(r['peak_mem_mb'])} ({r['mem_kind']})"
        prec = r["precision"] + (" +loss scale" if r.get("loss_scale") else "")
        print(
            f"| {r['arch']} | {prec} | {jit} | {'on' if r['augment'] else 'off'} | {r['batch']} | "
            f"{r['steps_per_execution']} | {_fmt(r['train_img_s'])} | {_fmt(r['ms_per_step'], '.1f')} | "
            f"{_fmt(r['epoch_s'], '.1f')} | {_fmt(r['pipeline_img_s'])} | {_fmt(ratio, '.1f')}x | {mem} |"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default=None, help="comma list [alexnet]")
    p.add_argument("--precisions", default=None, help="comma list of float32, mixed_float16, mixed_bfloat16, auto")
    p.add_argument("--jit", default="off,on", help="comma list of off, on, auto [off,on]")
    p.add_argument("--augment", default="on", help="comma list of on, off [on: the default recipe]")
    p.add_argument("--steps-per-execution", default="1", help="comma list [1]")
    p.add_argument("--batch-size", type=int, default=None, help="global batch [the recipe's: 128 for alexnet]")
    p.add_argument("--steps", default=None, help="timed steps, or 'epoch' [epoch on a GPU, 5 on a CPU]")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation) [20 GPU, 2 CPU]")
    p.add_argument("--data", default="synthetic", help="synthetic (CIFAR-shaped uint8), cifar10, or a folder")
    p.add_argument("--data-dir", default=None, help="for cifar10: a local cifar-10-python.tar.gz")
    p.add_argument("--images", type=int, default=CIFAR_TRAIN_IMAGES, help="synthetic images [45000]")
    p.add_argument("--no-baseline", action="store_true", help="skip the study-style baseline")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration [900]")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        row = run_baseline(spec) if spec.get("baseline") else run_config(spec)
        print("RESULT " + json.dumps(row), flush=True)
        return 0

    device, on_gpu = _device_line()
    archs = (args.archs or "alexnet").split(",")
    precisions = (args.precisions or ("float32,mixed_float16,mixed_bfloat16" if on_gpu else "float32,mixed_bfloat16")).split(",")
    steps = args.steps or ("epoch" if on_gpu else "5")
    if steps != "epoch":
        steps = int(steps)
    warmup = args.warmup if args.warmup is not None else (20 if on_gpu else 2)
    common = {"steps": steps, "warmup": warmup, "data": args.data, "data_dir": args.data_dir, "images": args.images,
              "image_size": None}
    print(f"# kerasalex training speed, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# {device}; TensorFlow {__import__('tensorflow').__version__}, Keras {__import__('keras').__version__}")
    print(f"# data: {args.data} ({args.images if args.data == 'synthetic' else 'its'} training images); "
          f"timed steps: {steps} after {warmup} warm-up steps; each row in a fresh process")
    if not on_gpu:
        print("# GPU part: pending (no GPU visible); these are CPU figures")
    rows = []
    if not args.no_baseline:
        rows.append(_child({**common, "baseline": True}, args.timeout))
    for arch, prec, jit, aug, spe in itertools.product(
        archs, precisions, args.jit.split(","), args.augment.split(","), args.steps_per_execution.split(",")
    ):
        spec = {**common, "arch": arch, "precision": prec, "jit": jit, "augment": aug == "on", "spe": int(spe),
                "batch_size": args.batch_size}
        rows.append(_child(spec, args.timeout))
        print(f"#   done {arch} {prec} jit={jit} augment={aug} spe={spe}", file=sys.stderr, flush=True)
    print()
    print_table(rows)
    base = rows[0] if rows and not args.no_baseline and "error" not in rows[0] else None
    ok = [r for r in rows[1:] if "error" not in r] if base else []
    if base and ok:
        best = max(ok, key=lambda r: r["train_img_s"])
        print(f"\nfastest: {best['arch']} {best['precision']} XLA {'on' if best['jit_effective'] else 'off'} "
              f"batch {best['batch']}: {best['train_img_s'] / base['train_img_s']:.1f}x the study-style baseline's images/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
