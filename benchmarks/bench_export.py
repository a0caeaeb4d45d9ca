"""Export figures: per architecture and format, the artifact's size, its CPU
latency for one image and for a batch of 64, and how closely it agrees with
the ``.keras`` model (max |probability difference|, top-1 agreement).

Each architecture is built with random weights (vgg16's base too: no
download), saved as a ``.keras`` file and exported with ``kerasalex.export``
(the same code as ``kerasalex export``, check included, on seeded random
images); the latencies are medians over ``--repeats`` timed runs after one
warm-up, in each format's own runtime (TensorFlow for the ``.keras`` model
and the SavedModel, the LiteRT interpreter, onnxruntime), each with
``--threads`` threads.

Usage:
    python benchmarks/bench_export.py                                   # every architecture and format
    python benchmarks/bench_export.py --archs alexnet --repeats 5       # a quick look
    python benchmarks/bench_export.py --json export.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ARCH_ARGS = {
    # The study's models at their default sizes: 32 px images in, resized inside.
    "alexnet": dict(input_shape=(32, 32, 3)),
    "alexnet-torch": dict(input_shape=(32, 32, 3)),
    "vgg16": dict(input_shape=(32, 32, 3), base_weights="none"),
}
# (label, kerasalex.export format, quantize)
FORMATS = {
    "saved_model": ("saved_model", False),
    "litert": ("litert", False),
    "litert-int8": ("litert", True),
    "onnx": ("onnx", False),
}


def _median_ms(fn, x, repeats: int) -> float:
    fn(x)  # warm-up (tracing, allocation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def bench_arch(arch: str, formats, repeats: int, threads: int | None, folder: Path) -> list[dict]:
    import keras
    import tensorflow as tf

    from kerasalex import export as E
    from kerasalex import files
    from kerasalex.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(arch, num_classes=10, **ARCH_ARGS[arch])
    path = files.save_model(model, folder / f"{arch}.keras")
    h, w, _ = ARCH_ARGS[arch]["input_shape"]
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (64, h, w, 3), dtype=np.uint8)

    loaded = files.load_model(path)
    serve = tf.function(lambda x: loaded(x, training=False), reduce_retracing=True)
    rows = [{
        "arch": arch, "format": "keras", "bytes": _size(path), "params": int(model.count_params()),
        "single_ms": _median_ms(lambda x: serve(x).numpy(), one, repeats),
        "batch64_ms": _median_ms(lambda x: serve(x).numpy(), batch, repeats),
        "max_prob_diff": 0.0, "top1_agreement": 1.0,
    }]
    print(f"# {arch}: keras done: {json.dumps(rows[0])}", flush=True)
    for label in formats:
        fmt, quantize = FORMATS[label]
        out = folder / (f"{arch}_saved_model" if fmt == "saved_model" else f"{arch}{'_int8' if quantize else ''}."
                        + ("tflite" if fmt == "litert" else "onnx"))
        row = {"arch": arch, "format": label}
        try:
            t0 = time.perf_counter()
            figures = E.export_model(path, fmt, out, quantize=quantize, limit=64)
            row["export_seconds"] = round(time.perf_counter() - t0, 1)
            art = E.Artifact(out, threads=threads)
            row.update(
                bytes=_size(out), max_prob_diff=figures["max_prob_diff"], top1_agreement=figures["top1_agreement"],
                single_ms=_median_ms(art.predict, one, repeats), batch64_ms=_median_ms(art.predict, batch, repeats),
            )
            del art
        except Exception as exc:  # a format that fails is a figure too
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        rows.append(row)
        print(f"# {arch}: {label} done: {json.dumps(row)}", flush=True)  # kept if a later export dies (OOM)
    keras.backend.clear_session()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| arch | format | size (MiB) | 1 image (ms) | batch of 64 (ms) | max abs prob diff | top-1 agreement |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['format']} | | | | error: {r['error']} | |")
            continue
        lines.append(
            f"| {r['arch']} | {r['format']} | {r['bytes'] / 2**20:.1f} | {r['single_ms']:.1f} | {r['batch64_ms']:.0f} | "
            f"{r['max_prob_diff']:.2g} | {r['top1_agreement']:.1%} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(ARCH_ARGS), help=f"comma list of {', '.join(ARCH_ARGS)}")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {', '.join(FORMATS)}")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per latency (median) [20]")
    p.add_argument("--threads", type=int, default=None, help="LiteRT/onnxruntime threads [all cores]")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    formats = [f for f in args.formats.split(",") if f]
    for a in archs:
        if a not in ARCH_ARGS:
            p.error(f"unknown architecture {a!r}")
    for f in formats:
        if f not in FORMATS:
            p.error(f"unknown format {f!r}")
    import platform

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, repeats {args.repeats}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_export-") as tmp:
        for arch in archs:
            rows += bench_arch(arch, formats, args.repeats, args.threads or os.cpu_count(), Path(tmp))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
