"""Training-step speed of the scratch AlexNet's recipes, paired in one process.

The default recipe trains at batch 128 in runs of at least 1,400 steps at
batch 128 (CIFAR-10's 45,000 images from 4 epochs) and at batch 64 (halved
on small datasets) below; until 2026-12-07 it trained at batch 64 below
10,000 steps at 128, and before 2026-12-03 at batch 128 with dropout 0.5. A step has a cost that
does not shrink with the batch (the weight casts, the dense kernels'
gradients and the SGD update over 29.6M parameters: memory traffic), so
images/second falls with the batch. This script measures by how much, on
this machine, for the models ``kerasalex train`` builds and compiles
(:func:`kerasalex.training.build_training_model`,
:func:`kerasalex.training.compile_model`), timing Keras's own compiled train
step (``model.make_train_function()``) on synthetic uint8 batches.

Shared machines drift by tens of percent within minutes, so every
configuration is built once, in this one process, and the configurations
are timed in turn, round after round (A B C A B C ...); the figures are the
medians over rounds, and the ratios are taken round by round.

    python benchmarks/bench_batch_speed.py                       # the four recipes below, ~7 min on 2 CPU cores
    python benchmarks/bench_batch_speed.py --rounds 3 --steps 5  # a quicker look
    python benchmarks/bench_batch_speed.py --configs "b32:32:0.125:0,b64:64:0.125:0"

A configuration is ``name:batch:translate:dropout``. The defaults:
``long`` (batch 128, flip + translation 0.125, no dropout: the default
recipe's runs of 11 epochs or more from ``long_run_steps`` on, see its
registry row), ``default`` (batch 64, flip + translation, no dropout: its
runs of 11 epochs or more below that, small datasets), ``short`` (batch 64,
flip only: those of 10 epochs or fewer, see ``translate_min_epochs``) and
``old-default``
(batch 128, translation 0.125, dropout 0.5: the default until 2026-12-03).
The first configuration named ``old-default`` (else the last one) is the
reference of the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CONFIGS = "long:128:0.125:0,default:64:0.125:0,short:64:0:0,old-default:128:0.125:0.5"
NUM_CLASSES = 10


def parse_configs(text: str) -> list[dict]:
    """``name:batch:translate:dropout,...`` -> a list of dicts.

    Raises:
        SystemExit: a malformed entry (argparse's error, naming it).
    """
    out = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        parts = entry.split(":")
        try:
            name, batch, translate, dropout = parts
            row = dict(name=name, batch=int(batch), translate=float(translate), dropout=float(dropout))
        except ValueError:
            raise argparse.ArgumentTypeError(f"config {entry!r} is not name:batch:translate:dropout (e.g. default:64:0.125:0)") from None
        if row["batch"] < 1 or not 0 <= row["translate"] < 1 or not 0 <= row["dropout"] < 1:
            raise argparse.ArgumentTypeError(f"config {entry!r}: batch >= 1, translate and dropout in [0, 1) expected")
        out.append(row)
    if not out:
        raise argparse.ArgumentTypeError("no configuration given")
    return out


def build(row: dict, image_size: int):
    """The training model and compiled train function of one configuration,
    and an iterator over one synthetic batch repeated."""
    import numpy as np
    import tensorflow as tf
    from types import SimpleNamespace

    from kerasalex.config import TrainConfig
    from kerasalex.training import build_training_model, compile_model

    config = TrainConfig(arch="alexnet", batch_size=row["batch"], translate=row["translate"], dropout=row["dropout"],
                         image_size=image_size)
    data = SimpleNamespace(num_classes=NUM_CLASSES, image_shape=(image_size, image_size, 3),
                           class_names=[str(i) for i in range(NUM_CLASSES)])
    model = build_training_model(config, data)
    compile_model(model, config, steps_per_epoch=704, total_epochs=30)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (row["batch"], image_size, image_size, 3), dtype=np.uint8)
    y = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, row["batch"])]
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    model.make_train_function()
    return model, model.train_function, iterator


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=parse_configs, default=parse_configs(DEFAULT_CONFIGS),
                   help=f"name:batch:translate:dropout,... (default {DEFAULT_CONFIGS})")
    p.add_argument("--rounds", type=int, default=7, help="rounds of timing, each configuration once per round (default 7)")
    p.add_argument("--steps", type=int, default=10, help="train steps timed per configuration per round (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration first (default 3; the first traces)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--precision", default="auto", help="auto (kerasalex's rule), float32, mixed_bfloat16, ...")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--rounds, --steps and --warmup must be at least 1")

    from kerasalex.device import cpu_flags, describe_device, set_precision
    from kerasalex.training import resolve_precision

    policy = resolve_precision(args.precision)
    set_precision(policy)
    built = []
    for row in args.configs:
        model, step, it = build(row, args.image_size)
        for _ in range(args.warmup):
            step(it)
        built.append((row, step, it))
    times: dict[str, list[float]] = {row["name"]: [] for row in args.configs}
    for r in range(args.rounds):
        for row, step, it in built:
            t = time.perf_counter()
            for _ in range(args.steps):
                logs = step(it)
            float(logs["loss"])  # the last step has finished
            times[row["name"]].append((time.perf_counter() - t) / args.steps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {1000 * v[-1]:.0f} ms/step" for n, v in times.items()), flush=True)

    names = [row["name"] for row in args.configs]
    ref = "old-default" if "old-default" in names else names[-1]
    ref_batch = next(row["batch"] for row in args.configs if row["name"] == ref)
    rows = []
    for row in args.configs:
        t = times[row["name"]]
        per_image = [a / row["batch"] for a in t]
        ratio = [(row["batch"] / a) / (ref_batch / b) for a, b in zip(t, times[ref])]  # images/s vs the reference's, per round
        rows.append(dict(
            row, ms_per_step=1000 * statistics.median(t), ms_per_image=1000 * statistics.median(per_image),
            images_per_second=row["batch"] / statistics.median(t),
            images_per_second_vs_reference=statistics.median(ratio), ratio_range=[min(ratio), max(ratio)],
        ))
    machine = (f"{describe_device()['cpu']}, {os.cpu_count()} CPUs, "
               f"{'avx512_bf16' if 'avx512_bf16' in cpu_flags() else 'no avx512_bf16'}, {policy}")
    print(f"\n{machine}; {args.rounds} rounds x {args.steps} steps; medians; reference {ref}\n")
    print("| config | batch | translate | dropout | ms/step | ms/image | images/s | images/s vs " + ref
          + " (median of the per-round ratios; min-max) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['batch']} | {r['translate']:g} | {r['dropout']:g} | {r['ms_per_step']:.0f} | "
              f"{r['ms_per_image']:.2f} | {r['images_per_second']:.1f} | {r['images_per_second_vs_reference']:.3f} "
              f"({r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f}) |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rounds": args.rounds, "steps": args.steps,
                                         "reference": ref, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
