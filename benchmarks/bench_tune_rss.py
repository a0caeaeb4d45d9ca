"""Memory over a tuning search, and the best trial against the study recipe.

Runs an N-trial search (``kerasalex.tuning.search``, in this process) on a
slice of the shared CIFAR-10 JPEGs (or digits when they are absent) and
prints, per trial, the resident memory after the trial (its model freed) and
the trial's own peak, read from /proc/self/status (VmRSS, VmHWM reset at each
trial start). Then trains the study's recipe (``--recipe study``) on the same
slice for the same epochs and prints its best validation accuracy beside the
best trial's.

    python benchmarks/bench_tune_rss.py                       # 10 trials
    python benchmarks/bench_tune_rss.py --dataset /tmp/cifar10-jpeg/train --limit 1000 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    default_data = "/tmp/cifar10-jpeg/train"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=default_data if Path(default_data, "airplane").is_dir() else "digits")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--tuner", default="bayesian", choices=["bayesian", "random", "hyperband"])
    ap.add_argument("--limit", type=int, default=1000, help="training images of the slice")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per trial and for the study recipe")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the search and the study run go [a temporary folder]")
    ap.add_argument("--skip-study", action="store_true")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kerasalex import tuning
    from kerasalex.config import resolve_config
    from kerasalex.training import train

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-tune-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    config = tuning.TuneConfig(
        arch="alexnet", dataset=args.dataset, tuner=args.tuner, max_trials=args.trials, max_epochs=args.epochs,
        limit=args.limit, image_size=args.image_size, precision=args.precision, seed=args.seed,
        directory=str(work / "tuning"), name="bench", retrain=False,
    )
    start = tuning.memory_mb()
    t0 = time.perf_counter()
    result = tuning.search(config, overwrite=True, verbose=0)
    search_seconds = time.perf_counter() - t0

    rows = result.trials
    print()
    print(f"# {args.trials}-trial {args.tuner} search, alexnet, {args.dataset} slice of {args.limit} images "
          f"at {args.image_size} px, {args.epochs} epoch(s) per trial, {args.precision}: {search_seconds:.0f} s")
    print(f"RSS before the search (data not loaded yet): {start['rss']:.0f} MiB")
    print("| trial | status | optimizer | lr | batch | val_accuracy | epochs | seconds | RSS after (MiB) | trial peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(k, fmt="{:.4g}"):
            v = r.get(k)
            return "" if v is None else (fmt.format(v) if isinstance(v, float) else str(v))
        print(f"| {r['trial']} | {r['status']} | {f('optimizer')} | {f('lr')} | {f('batch_size')} | {f('val_accuracy')} "
              f"| {f('epochs', '{:.0f}')} | {f('seconds', '{:.1f}')} | {f('rss_mb', '{:.0f}')} | {f('peak_rss_mb', '{:.0f}')} |")
    rss = [r["rss_mb"] for r in rows if r.get("rss_mb") is not None]
    peaks = [r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb") is not None]
    if len(rss) >= 3:
        later = rss[1:]
        slope = (later[-1] - later[0]) / max(1, len(later) - 1)
        print(f"RSS after trials 2..{len(rss)}: min {min(later):.0f}, max {max(later):.0f} MiB "
              f"(spread {max(later) - min(later):.0f} MiB, {slope:+.1f} MiB/trial from first to last)")
        print(f"trial peaks: min {min(peaks):.0f}, max {max(peaks):.0f} MiB; process peak {tuning.memory_mb()['hwm']:.0f} MiB since the last reset")

    best = result.best
    print(f"best trial {best['trial']}: val_accuracy {best['val_accuracy']:.4f} "
          f"(optimizer {best['optimizer']}, lr {best['lr']:.3g}, batch {best['batch_size']}, "
          f"dropout {best['dropout']}, augment {best['augment']})")
    if args.skip_study:
        return 0
    study = resolve_config(
        arch="alexnet", recipe="study", dataset=args.dataset, limit=args.limit, image_size=args.image_size,
        epochs=args.epochs, precision=args.precision, seed=args.seed, run_dir=str(work / "study-run"),
        output=str(work / "study.keras"),
    )
    t0 = time.perf_counter()
    s = train(study, verbose=0).summary
    print(f"study recipe (sgd lr 0.001 momentum 0.9, batch 30, no augmentation/dropout), same slice and "
          f"{args.epochs} epoch(s): best val_accuracy {s['best_val_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)")
    print(f"best trial - study recipe: {best['val_accuracy'] - s['best_val_accuracy']:+.4f}")
    print(f"(outputs in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
