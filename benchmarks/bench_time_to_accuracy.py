"""Time to accuracy: wall time of training until the held-out accuracy first
reaches 70 / 80 / 85%, for our default recipe and the study's, in one run of
this script on the same machine (so the ratio holds across machines).

Each recipe trains in a fresh process (``kerasalex train``) on the shared
CIFAR-10 JPEGs with the same held-out slice (``--val-split``, default 0.1:
5,000 images, stratified, fixed seed); the times are the cumulative training
seconds (``train_seconds`` in the run's history.json: the sum of the epoch
wall times, validation included, start-up and data loading excluded).

    python benchmarks/bench_time_to_accuracy.py --data /tmp/cifar10-jpeg/train
    python benchmarks/bench_time_to_accuracy.py --data /tmp/cifar10-jpeg/train --limit 10000 --epochs 5   # a quick look
    python benchmarks/bench_time_to_accuracy.py --recipes default          # one recipe only

Without ``--data`` the folder named by ``KERASALEX_CIFAR10_JPEG`` is used, or
``../shared/data/cifar10-train-jpeg.tar.gz`` (beside the project) is
extracted to a temporary folder.

Output: one row per recipe (epochs run, final and best held-out accuracy,
seconds to each target or "-" when not reached, images/s) and, for each
target both recipes reached, the ratio default/study. ``--json`` writes the
same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_ARCHIVE = HERE.parent.parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"


def cifar_folder(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("KERASALEX_CIFAR10_JPEG")
    if env:
        return Path(env)
    if not SHARED_ARCHIVE.is_file():
        sys.exit(f"no CIFAR-10 JPEG folder: pass --data DIR or set KERASALEX_CIFAR10_JPEG (no {SHARED_ARCHIVE})")
    with tarfile.open(SHARED_ARCHIVE) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "train"


def time_to(history: list[dict], target: float) -> tuple[float | None, int | None]:
    """(cumulative training seconds, epoch) when val_accuracy first reaches ``target``."""
    for row in history:
        if (row.get("val_accuracy") or 0.0) >= target:
            return float(row["train_seconds"]), int(row["epoch"])
    return None, None


def cpu_name() -> str:
    """The CPU for the report: model name, cores, and its bfloat16 flags
    (``avx512_bf16``, ``amx_bf16``: what precision ``auto`` looks for), e.g.
    ``"Intel(R) Xeon(R) Processor, 2 cores, with avx512_bf16 + amx_bf16"``."""
    from kerasalex.device import bf16_flags, cpu_flags, cpu_model_name

    bf16 = " + ".join(bf16_flags(cpu_flags()))
    return f"{cpu_model_name()}, {os.cpu_count()} cores, " + (f"with {bf16}" if bf16 else "no avx512_bf16/amx_bf16")


def run_recipe(recipe: str, data: Path, out: Path, args) -> dict:
    run_dir = out / f"{recipe}"
    cmd = [
        sys.executable, "-m", "kerasalex", "train", "--arch", "alexnet", "--recipe", recipe,
        "--dataset", str(data), "--val-split", str(args.val_split), "--seed", str(args.seed),
        "--run-dir", str(run_dir), "-o", str(out / f"{recipe}.keras"),
    ]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    history = json.loads((run_dir / "history.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    row = {
        "recipe": recipe,
        "epochs": len(history),
        "precision": config["resolved"]["precision"],
        "batch_size": config["config"]["batch_size"],
        "final_val_accuracy": history[-1].get("val_accuracy"),
        "best_val_accuracy": max(r.get("val_accuracy") or 0.0 for r in history),
        "train_seconds": history[-1]["train_seconds"],
        "images_per_second": round(
            sum(r["images_per_second"] or 0 for r in history) / max(1, len(history)), 1),
    }
    for t in args.targets:
        row[f"seconds_to_{t:g}"], row[f"epoch_to_{t:g}"] = time_to(history, t)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CIFAR-10 JPEG folder (one subfolder per class)")
    p.add_argument("--recipes", default="default,study", help="comma-separated recipes [default,study]")
    p.add_argument("--epochs", type=int, default=None, help="epochs for every recipe [each recipe's own]")
    p.add_argument("--limit", type=int, default=None, help="train on N images (quick look)")
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default="0.7,0.8,0.85", help="held-out accuracies to time [0.7,0.8,0.85]")
    p.add_argument("--out", default=None, help="where the runs go [a temporary folder]")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = cifar_folder(args.data, tmp)
        out = Path(args.out) if args.out else tmp / "runs"
        out.mkdir(parents=True, exist_ok=True)
        rows = [run_recipe(r, data, out, args) for r in args.recipes.split(",")]
    print(f"\nTime to held-out accuracy ({cpu_name()}; {data}; val_split {args.val_split}, "
          f"limit {args.limit or 'none'}, epochs {args.epochs or 'recipe'}):")
    head = f"{'recipe':<10}{'epochs':>7}{'precision':>16}{'final':>8}{'best':>8}{'img/s':>8}"
    head += "".join(f"{'to ' + format(t, '.0%'):>16}" for t in args.targets)
    print(head)
    for r in rows:
        line = (f"{r['recipe']:<10}{r['epochs']:>7}{r['precision']:>16}{r['final_val_accuracy']:>8.2%}"
                f"{r['best_val_accuracy']:>8.2%}{r['images_per_second']:>8.1f}")
        for t in args.targets:
            s, e = r[f"seconds_to_{t:g}"], r[f"epoch_to_{t:g}"]
            line += f"{'-' if s is None else f'{s:,.0f}s (ep {e})':>16}"
        print(line)
    by = {r["recipe"]: r for r in rows}
    if "default" in by and "study" in by:
        for t in args.targets:
            a, b = by["default"][f"seconds_to_{t:g}"], by["study"][f"seconds_to_{t:g}"]
            if a is not None and b is not None:
                print(f"to {t:.0%}: default / study wall time = {a / b:.2f}")
            else:
                print(f"to {t:.0%}: default {'-' if a is None else f'{a:,.0f}s'}, study {'-' if b is None else f'{b:,.0f}s'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
