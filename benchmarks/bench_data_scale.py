"""Larger-than-memory image folders: memory and speed of the decode cache.

Prints, in one run, side by side:

1. **Peak RSS and training images/s at 20,000 and 200,000 images**: synthetic
   class folders made from the shared CIFAR-10 JPEGs, upscaled to
   ``--size`` px (96 by default; 200,000 = every image in 4 variants:
   as is, mirrored, and two 4-pixel shifts), trained a fixed number of steps
   with the real pipeline and model (``kerasalex.training.prepare_data``,
   ``build_training_model``, ``compile_model``, ``data.train_stream``), each
   case in a fresh process. Target: peak RSS at 200,000 within +10% of that
   at 20,000 with the images on disk (in memory it grows by ``size^2 x 3``
   bytes per image).
2. **Training images/s on the shared CIFAR JPEGs** at 32 px with the scratch
   ``alexnet`` (batch 128): images on disk vs in memory, alternated
   ``--repeats`` times. Target: disk >= 95% of memory.
3. **First decode of the 50,000 CIFAR JPEGs**: ``scan_folder`` into an empty
   cache (worker processes, then one process, then Python threads like
   kerasalex 0.x) vs ``keras.utils.image_dataset_from_directory`` iterated
   to the end at the same size.
4. **Disk used by the cache** per image.
5. **Why ``pread``, not ``np.memmap``**: RSS after one epoch of random
   batches gathered from the large cache both ways, each in a fresh process.

    python benchmarks/bench_data_scale.py --jpeg-dir /tmp/cifar10-jpeg/train
    python benchmarks/bench_data_scale.py --jpeg-dir DIR --small 2000 --large 20000 --steps 10   # quick look

Images/s is the steady state: the wall time of steps after the first
``--warmup`` (compilation) divided into their images. Peak RSS is the child
process's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------
# Synthetic folders
# --------------------------------------------------------------------------

VARIANTS = ("orig", "flip", "shl", "shr")


def _variant(img, v: str, size: int):
    from PIL import Image, ImageOps

    if v == "flip":
        img = ImageOps.mirror(img)
    elif v in ("shl", "shr"):
        d = 4 if v == "shl" else -4
        img = img.transform(img.size, Image.Transform.AFFINE, (1, 0, d, 0, 1, 0), fillcolor=(128, 128, 128))
    return img.resize((size, size), Image.Resampling.BILINEAR)


def _make_chunk(task):
    from PIL import Image

    jobs, size = task
    for src, dst, v in jobs:
        with Image.open(src) as img:
            _variant(img.convert("RGB"), v, size).save(dst, quality=90)
    return len(jobs)


def make_folder(jpeg_dir: Path, out: Path, n: int, size: int, workers: int) -> Path:
    """A class folder of ``n`` JPEGs at ``size`` px from the CIFAR JPEGs
    (the same share of each class; variants after the originals run out);
    reused when complete."""
    done = out / ".complete"
    if done.is_file() and done.read_text() == f"{n} {size}":
        return out
    shutil.rmtree(out, ignore_errors=True)
    classes = sorted(p.name for p in jpeg_dir.iterdir() if p.is_dir())
    per = n // len(classes)
    jobs = []
    for c in classes:
        files = sorted((jpeg_dir / c).iterdir())
        (out / c).mkdir(parents=True)
        for k in range(per):
            v = VARIANTS[k // len(files)]
            f = files[k % len(files)]
            jobs.append((str(f), str(out / c / f"{v}_{f.stem}.jpg"), v))
    import multiprocessing

    t0 = time.perf_counter()
    chunks = [(jobs[i : i + 1000], size) for i in range(0, len(jobs), 1000)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        made = 0
        for k in pool.imap_unordered(_make_chunk, chunks):
            made += k
            print(f"\r  making {out.name}: {made}/{len(jobs)}", end="", flush=True)
    print(f"\r  made {len(jobs)} JPEGs at {size} px in {out} ({time.perf_counter() - t0:.0f} s)", flush=True)
    done.write_text(f"{n} {size}")
    return out


# --------------------------------------------------------------------------
# One training case (a child process)
# --------------------------------------------------------------------------


def child(spec: dict) -> dict:
    """Prepares the data, builds the model and trains ``steps`` steps; returns the figures."""
    import keras

    from kerasalex import training
    from kerasalex.compiling import compile_model
    from kerasalex.config import resolve_config
    from kerasalex.data import train_stream

    # the default recipe's step at this batch (dropout 0.5 as in a full-length run)
    config = resolve_config(spec["arch"], dataset=spec["folder"], image_size=spec["size"], epochs=1,
                            batch_size=spec["batch"], data_cache=spec["storage"], val_split=0.0, dropout=0.5)
    training.set_precision(training.resolve_precision("auto"))
    t0 = time.perf_counter()
    data = training.prepare_data(config)
    load_s = time.perf_counter() - t0
    model = training.build_training_model(config, data)
    compile_model(model, config, spec["steps"], total_epochs=1)
    ds, _ = train_stream(data.train, config.batch_size, data.num_classes, config.seed, 0, 1)

    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())

    model.fit(ds, epochs=1, steps_per_epoch=spec["steps"], verbose=0, callbacks=[Clock()], shuffle=False)
    warm = spec["warmup"]
    seconds = times[-1] - times[warm - 1]
    return {"images": len(data.train), "storage": type(data.train.x).__name__, "load_s": load_s,
            "images_per_second": (len(times) - warm) * config.batch_size / seconds}


def run_child(spec: dict, cache_dir: Path) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERASALEX_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec), "--child-out", str(out)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"case {spec} failed (exit {os.waitstatus_to_exitcode(status)})")
    result = json.loads(out.read_text())
    out.unlink()
    result["peak_rss_mb"] = usage.ru_maxrss / 1024.0
    return result


def gather_child(spec: dict) -> dict:
    """One epoch of random batches of 64 from the cache in ``spec["cache"]``,
    by ``pread`` (DiskImages) or through ``np.memmap`` views of the shards."""
    from kerasalex.data.cache import open_cache

    folder = max((p for p in Path(spec["cache"]).glob("folders/*") if (p / "manifest.json").is_file()),
                 key=lambda p: json.loads((p / "manifest.json").read_text())["count"])
    manifest = json.loads((folder / "manifest.json").read_text())
    opened = open_cache(folder, len(np.load(folder / "ok.npy")))
    x = opened.images
    n = len(x)
    order = np.random.default_rng(0).permutation(n)
    t0 = time.perf_counter()
    if spec["how"] == "pread":
        for i in range(0, n, 64):
            x[np.sort(order[i : i + 64])]
    else:
        shape = tuple(manifest["shape"])
        per = manifest["records_per_shard"]
        maps = [np.memmap(folder / s["file"], np.uint8, "r", shape=(s["count"], *shape)) for s in manifest["shards"]]
        for i in range(0, n, 64):
            idx = np.sort(order[i : i + 64])
            np.stack([maps[j // per][j % per] for j in idx])
    return {"images": n, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------
# First decode
# --------------------------------------------------------------------------


def train_rule(arch: str, size: int):
    """The decoding rule ``kerasalex train --arch ARCH --image-size SIZE`` uses (its cache key)."""
    from kerasalex import training
    from kerasalex.config import resolve_config

    return training.resize_rule(resolve_config(arch, image_size=size))


def first_decode(folder: Path, rule, cache_dir: Path, workers: int | None) -> float:
    """Seconds for ``scan_folder`` to decode ``folder`` into an empty cache (disk storage)."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    os.environ["KERASALEX_CACHE_DIR"] = str(cache_dir)
    from kerasalex.data.folders import scan_folder

    t0 = time.perf_counter()
    scan_folder(folder, rule, workers=workers, storage="disk")
    return time.perf_counter() - t0


def threads_decode(folder: Path, size: int, threads: int = 4) -> float:
    """Seconds to decode ``folder`` with :func:`decode_image` on Python threads
    (kerasalex 0.x's first decode: 4 threads), without writing a cache."""
    import concurrent.futures

    from kerasalex.data import decode_image, list_image_files

    files = list_image_files(folder)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda f: decode_image(f, size), files, chunksize=256):
            pass
    return time.perf_counter() - t0


def keras_decode(folder: Path, size: int) -> tuple[float, int]:
    """Seconds (and images) to iterate ``keras.utils.image_dataset_from_directory`` to the end."""
    import keras

    t0 = time.perf_counter()
    ds = keras.utils.image_dataset_from_directory(folder, image_size=(size, size), batch_size=256, shuffle=False,
                                                  verbose=False)
    n = 0
    for x, _ in ds:
        n += int(x.shape[0])
    return time.perf_counter() - t0, n


def cache_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(cache_dir).rglob("*") if p.is_file())


# --------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jpeg-dir", required=False, help="the shared CIFAR-10 JPEGs (class subfolders)")
    p.add_argument("--work", default="/tmp/kerasalex-scale", help="where the synthetic folders and caches go")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--small", type=int, default=20_000)
    p.add_argument("--large", type=int, default=200_000)
    p.add_argument("--arch", default="alexnet-torch", help="model for the scale runs (at --size px)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--cifar-steps", type=int, default=120)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: scale,speed,decode,gather")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = gather_child(spec) if "how" in spec else child(spec)
        Path(args.child_out).write_text(json.dumps(result))
        return
    if not args.jpeg_dir:
        p.error("--jpeg-dir is required (the shared CIFAR-10 JPEGs)")
    jpeg = Path(args.jpeg_dir)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {cpus} CPU(s); work folder {work}; free disk {shutil.disk_usage(work).free / 1e9:.0f} GB",
          flush=True)
    lines = []

    if "scale" not in skip:
        small = make_folder(jpeg, work / f"synthetic-{args.small}", args.small, args.size, cpus)
        large = make_folder(jpeg, work / f"synthetic-{args.large}", args.large, args.size, cpus)
        rows = []
        for folder, n in ((small, args.small), (large, args.large)):
            cache = work / f"cache-{n}"
            decode_s = None
            if not (cache / "folders").is_dir():
                decode_s = first_decode(folder, train_rule(args.arch, args.size), cache, None)
            per_image = cache_bytes(cache) / n
            for storage in ("disk", "memory"):
                spec = {"arch": args.arch, "folder": str(folder), "size": args.size, "batch": args.batch,
                        "steps": args.steps, "warmup": args.warmup, "storage": storage}
                r = run_child(spec, cache)
                rows.append((n, storage, r, decode_s, per_image))
                print(f"  {n} images, {storage}: {r['images_per_second']:.1f} images/s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        lines.append(f"\n1. {args.arch} at {args.size} px, batch {args.batch}, {args.steps} steps "
                     f"(images/s over the last {args.steps - args.warmup}), a fresh process each:\n")
        lines.append("| images | storage | first decode s (images/s) | cache bytes/image | load s | train images/s | peak RSS MB |")
        lines.append("|---|---|---|---|---|---|---|")
        for n, storage, r, dec, per in rows:
            d = f"{dec:.0f} ({n / dec:.0f})" if dec else "(cached)"
            lines.append(f"| {n:,} | {storage} | {d} | {per:,.0f} | {r['load_s']:.1f} | "
                         f"{r['images_per_second']:.1f} | {r['peak_rss_mb']:,.0f} |")
        rss = {(n, s): r["peak_rss_mb"] for n, s, r, _, _ in rows}
        ratio = rss[(args.large, "disk")] / rss[(args.small, "disk")]
        lines.append(f"\npeak RSS on disk, {args.large:,} vs {args.small:,} images: {ratio:.3f}x "
                     f"(target <= 1.10x): {'PASS' if ratio <= 1.10 else 'FAIL'}; in memory: "
                     f"{rss[(args.large, 'memory')] / rss[(args.small, 'memory')]:.2f}x")

    if "speed" not in skip:
        cache = work / "cache-cifar"
        if not (cache / "folders").is_dir():
            first_decode(jpeg, train_rule("alexnet", 32), cache, None)
        got: dict[str, list[float]] = {"memory": [], "disk": []}
        for k in range(args.repeats):
            for storage in ("memory", "disk"):
                spec = {"arch": "alexnet", "folder": str(jpeg), "size": 32, "batch": 128, "steps": args.cifar_steps,
                        "warmup": args.warmup, "storage": storage}
                r = run_child(spec, cache)
                got[storage].append(r["images_per_second"])
                print(f"  CIFAR JPEGs, alexnet, {storage} (round {k + 1}): {r['images_per_second']:.1f} images/s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        m, d = np.median(got["memory"]), np.median(got["disk"])
        lines.append(f"\n2. alexnet on the CIFAR JPEGs (50,000 images, 32 px), batch 128, {args.cifar_steps} steps, "
                     f"{args.repeats} alternated rounds: memory {', '.join(f'{v:.1f}' for v in got['memory'])}; "
                     f"disk {', '.join(f'{v:.1f}' for v in got['disk'])} images/s; median disk/memory "
                     f"{d / m:.3f} (target >= 0.95): {'PASS' if d / m >= 0.95 else 'FAIL'}")

    if "decode" not in skip:
        n = sum(1 for _ in jpeg.rglob("*.jpg"))
        cache = work / "cache-decode"
        rule = train_rule("alexnet", 32)
        procs = first_decode(jpeg, rule, cache, None)
        per_image = cache_bytes(cache) / n
        one = first_decode(jpeg, rule, cache, 1)
        threads = threads_decode(jpeg, 32)
        keras_s, keras_n = keras_decode(jpeg, 32)
        shutil.rmtree(cache, ignore_errors=True)
        lines.append(f"\n3. first decode of {n:,} CIFAR JPEGs at 32 px (images/s):\n")
        lines.append("| how | seconds | images/s |")
        lines.append("|---|---|---|")
        lines.append(f"| kerasalex scan_folder, {cpus} worker processes, cache written | {procs:.1f} | {n / procs:,.0f} |")
        lines.append(f"| kerasalex scan_folder, 1 process, cache written | {one:.1f} | {n / one:,.0f} |")
        lines.append(f"| decode_image on 4 Python threads (kerasalex 0.x), no cache | {threads:.1f} | {n / threads:,.0f} |")
        lines.append(f"| keras.utils.image_dataset_from_directory, iterated | {keras_s:.1f} | {keras_n / keras_s:,.0f} |")
        lines.append(f"\n4. cache on disk: {per_image:,.0f} bytes per image at 32 px "
                     "(3,072 of pixels + CRC-32, label, ok flag)")

    if "gather" not in skip and (work / f"cache-{args.large}" / "folders").is_dir():
        got = {}
        for how in ("pread", "memmap"):
            got[how] = run_child({"how": how, "cache": str(work / f"cache-{args.large}")}, work / "unused")
            print(f"  gather by {how}: {got[how]['peak_rss_mb']:.0f} MB peak RSS", flush=True)
        lines.append(f"\n5. one epoch of random batches of 64 from the {args.large:,}-image cache "
                     f"({got['pread']['images']:,} images): peak RSS by pread {got['pread']['peak_rss_mb']:,.0f} MB "
                     f"({got['pread']['seconds']:.0f} s), through np.memmap {got['memmap']['peak_rss_mb']:,.0f} MB "
                     f"({got['memmap']['seconds']:.0f} s)")

    print("\n".join(lines))


if __name__ == "__main__":
    main()
