"""Wall time of the study's frozen-VGG16 schedule: recomputing the base every
epoch (the study's way: ``model.fit`` end to end over a frozen base) versus
kerasalex's cached features (the base runs once per split, then the head
trains on the cache), side by side, on this machine.

The schedule is the study's (SGD 0.001 momentum 0.9, batch 30, 10 epochs,
float32, no augmentation) at a REDUCED size so it runs on a CPU: the images
are resized to ``--input-size`` (default 64, not 224) inside the model, and
``--images`` training images (default 600, plus 10% for validation, which
both runs evaluate every epoch) are used. The base has random weights (its
values do not change the time). Both runs start from the same weights, so
their final validation accuracy and head weights are also printed: the two
are the same training.

Images: CIFAR-10 JPEGs from ``--data`` (default /tmp/cifar10-jpeg/train, the
extracted shared archive) when present, else scikit-learn's digits.

Usage:
    python benchmarks/bench_vgg16_cache.py [--input-size 64] [--images 600] [--epochs 10] [--batch 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

DEFAULT_JPEGS = "/tmp/cifar10-jpeg/train"


def load_images(folder: str, n: int, seed: int = 0):
    """``n`` training + ``n // 10`` validation images (uint8 32x32 RGB): an even
    sample per class of the CIFAR-10 JPEG folder, or digits when it is absent."""
    from kerasalex.data import ImageData, Split, carve_validation, decode_image, load_digits_rgb

    total = n + n // 10
    root = Path(folder)
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for label, name in enumerate(classes):
            paths = sorted((root / name).glob("*.jpg"))
            take = -(-total // len(classes))
            for p in rng.choice(paths, size=min(take, len(paths)), replace=False):
                xs.append(decode_image(Path(p), 32))
                ys.append(label)
        data = ImageData("cifar10-jpeg", classes, train=Split(np.stack(xs), np.asarray(ys, np.int32)))
        source = f"CIFAR-10 JPEGs from {root}"
    else:
        data = load_digits_rgb(32)
        source = "scikit-learn digits (no CIFAR-10 JPEG folder found)"
    data = carve_validation(data, 0.1, limit=n)
    return data, source


def run(mode: str, data, config, input_size: int, initial_weights=None):
    import keras

    from kerasalex import transfer
    from kerasalex.models.vgg16 import build_vgg16_transfer
    from kerasalex.training import compile_model, fit_standard

    keras.utils.set_random_seed(0)
    model = build_vgg16_transfer(
        data.num_classes, input_shape=data.image_shape, base_weights=None, input_size=input_size, freeze_base=True
    )
    if initial_weights is not None:
        model.set_weights(initial_weights)
    steps = -(-len(data.train) // config.batch_size)
    compile_model(model, config, steps, total_epochs=config.epochs)
    weights = model.get_weights()

    class Epochs(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.rows.append((time.perf_counter() - self.t, dict(logs or {})))

    epochs = Epochs()
    t0 = time.perf_counter()
    if mode == "recompute":
        fit_standard(model, config, data, [epochs], 0, 0)
    else:
        transfer.fit_transfer(model, config, data, [epochs], 0, 0)
    wall = time.perf_counter() - t0
    return model, weights, wall, epochs.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=64, help="side the base sees (224 in the study)")
    parser.add_argument("--images", type=int, default=600, help="training images (+10%% validation)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--data", default=DEFAULT_JPEGS, help="CIFAR-10 JPEG folder (one subfolder per class)")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from kerasalex.config import resolve_config

    keras.mixed_precision.set_global_policy("float32")
    data, source = load_images(args.data, args.images)
    config = resolve_config(arch="vgg16", recipe="study", epochs=args.epochs, batch_size=args.batch, dataset="digits")

    print("# VGG16 frozen base: recompute every epoch vs cached features")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}, float32")
    print(f"images: {source}; {len(data.train)} train + {len(data.val)} validation at {data.image_shape[0]} px")
    print(f"REDUCED sizes: base input {args.input_size} px (study: 224), {len(data.train)} training images (study: 50,000)")
    print(f"schedule: the study's, SGD {config.lr} momentum {config.momentum}, batch {config.batch_size}, "
          f"{config.epochs} epochs, validation every epoch\n")

    slow, init, slow_wall, slow_rows = run("recompute", data, config, args.input_size)
    fast, _, fast_wall, fast_rows = run("cached", data, config, args.input_size, initial_weights=init)

    head_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(slow.trainable_weights, fast.trainable_weights))
    first_slow, first_fast = slow_rows[0][0], fast_rows[0][0]
    later_slow = float(np.mean([r[0] for r in slow_rows[1:]])) if len(slow_rows) > 1 else first_slow
    later_fast = float(np.mean([r[0] for r in fast_rows[1:]])) if len(fast_rows) > 1 else first_fast
    cache_s = fast_wall - sum(r[0] for r in fast_rows)
    print(f"| {'':34} | {'recompute base':>15} | {'cached features':>15} |")
    print(f"|{'-' * 36}|{'-' * 17}|{'-' * 17}|")
    print(f"| {'wall time, whole schedule (s)':34} | {slow_wall:15.1f} | {fast_wall:15.1f} |")
    print(f"| {'  of which computing the cache (s)':34} | {'-':>15} | {cache_s:15.1f} |")
    print(f"| {'first epoch (s, incl. tracing)':34} | {first_slow:15.2f} | {first_fast:15.2f} |")
    print(f"| {'later epochs, mean (s)':34} | {later_slow:15.2f} | {later_fast:15.3f} |")
    print(f"| {'final val_accuracy':34} | {slow_rows[-1][1].get('val_accuracy', float('nan')):15.4f} | "
          f"{fast_rows[-1][1].get('val_accuracy', float('nan')):15.4f} |")
    print(f"\nspeed-up (wall time, cache computation included): {slow_wall / fast_wall:.1f}x")
    print(f"max |head weight difference| between the two runs: {head_diff:.2e} (float16 cache vs float32 features)")


if __name__ == "__main__":
    main()
