"""Figures for the note on torchvision's AlexNet in Keras (`--arch alexnet-torch`).

1. Equivalence: random torchvision-AlexNet weights (fixed seed, He-scaled so
   the logits are O(1)) ported with kerasalex.porting; max |keras - torch|
   logit difference on a random batch at 224, 256 and 300 px (at 256 and 300
   the adaptive pool really pools: 7x7 and 8x8 -> 6x6).
2. Fine-tuning throughput: images/second of a training step of the CIFAR-10
   fine-tuning graph (32x32 uint8 in, resize 256 + crop 224 + normalize inside,
   10-class head, SGD momentum) on this machine, float32 and mixed_bfloat16.

Usage:
    python benchmarks/bench_torch_alexnet.py [--batch 32] [--warmup 2] [--steps 5] [--sizes 224,256,300]

Needs torch for part 1 (pip install "kerasalex[torch]"); part 2 runs without it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def equivalence(sizes, batch: int, seed: int = 0) -> list[dict]:
    import torch

    from kerasalex import porting
    from kerasalex.models.torch_alexnet import build_torch_alexnet_core

    torch.manual_seed(seed)
    net = porting.torch_alexnet(1000)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight"):
                p.normal_(0.0, (2.0 / int(np.prod(p.shape[1:]))) ** 0.5)
            else:
                p.normal_(0.0, 0.1)
    state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
    porting.validate_state_dict(state_dict)
    converted = porting.convert_state_dict(state_dict)
    rows = []
    for size in sizes:
        core = build_torch_alexnet_core(1000, input_shape=(size, size, 3))
        porting.set_keras_weights(core, converted)
        figures = porting.compare_with_torch(state_dict, core, image_size=size, batch=batch, seed=seed + size)
        with torch.no_grad():
            figures["pooled_from"] = int(net.features(torch.zeros(1, 3, size, size)).shape[-1])
        rows.append(figures)
        del core
    return rows


def throughput(precision: str, batch: int, warmup: int, steps: int) -> dict:
    import keras

    from kerasalex.models import training_model
    from kerasalex.models.torch_alexnet import build_torch_alexnet

    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        model = training_model(build_torch_alexnet(10, input_shape=(32, 32, 3), seed=0), augment=True, seed=0)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, (batch,))
        t0 = time.perf_counter()
        for _ in range(warmup):
            model.train_on_batch(x, y)
        warm_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            loss = model.train_on_batch(x, y)
            times.append(time.perf_counter() - t)
        median = float(np.median(times))
        return {
            "precision": precision,
            "batch": batch,
            "jit_compile": bool(getattr(model, "jit_compile", False)),
            "warmup_s": warm_s,
            "step_s_median": median,
            "step_s_min": float(min(times)),
            "images_per_s": batch / median,
            "loss": float(np.asarray(loss).reshape(-1)[0]),
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,256,300", help="equivalence input sizes (comma-separated)")
    parser.add_argument("--check-batch", type=int, default=2, help="batch of the equivalence check")
    parser.add_argument("--batch", type=int, default=32, help="training batch for the throughput")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--skip-equivalence", action="store_true")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")

    if not args.skip_equivalence:
        try:
            import torch
        except ImportError:
            print('equivalence: skipped (torch not installed; pip install "kerasalex[torch]")')
        else:
            print(f"\nEquivalence with torch {torch.__version__} (random He-scaled weights, batch {args.check_batch}):")
            print(f"{'size':>6} {'pool':>8} {'max|diff|':>11} {'mean|diff|':>11} {'max|logit|':>11} {'relative':>10} top1")
            for r in equivalence([int(s) for s in args.sizes.split(",")], args.check_batch):
                print(f"{r['image_size']:>6} {r['pooled_from']:>3}->6   {r['max_abs_diff']:>11.3g} {r['mean_abs_diff']:>11.3g} "
                      f"{r['max_abs_logit']:>11.3g} {r['rel_diff']:>10.3g} {'same' if r['top1_agree'] else 'DIFF'}")

    print(f"\nFine-tuning throughput (32x32 uint8 -> 224 px inside, 10 classes, SGD; batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps):")
    print(f"{'precision':>15} {'jit':>5} {'warm-up s':>10} {'step s (median)':>16} {'images/s':>9}")
    for precision in args.precisions.split(","):
        r = throughput(precision, args.batch, args.warmup, args.steps)
        print(f"{r['precision']:>15} {str(r['jit_compile']):>5} {r['warmup_s']:>10.1f} {r['step_s_median']:>16.2f} "
              f"{r['images_per_s']:>9.1f}")


if __name__ == "__main__":
    main()
