"""Kill-safe writes: SIGKILL a model writer at random moments, check the file.

A writer process saves a small Keras model over the same ``.keras`` file
again and again through :func:`kerasalex.files.save_model`, each time with
new weights (drawn from a known seed, so the reader knows what each save
must contain). It is killed with SIGKILL at a random moment, N times. After
each kill the file must be either the last completed save (same SHA-256) or
the complete new one (its weights are exactly the save in progress), and it
must load with :func:`kerasalex.files.load_model`. The next writer's first
save must leave no temporary file behind.

Writers are forked from a parent that has imported Keras (and TensorFlow)
but run no TensorFlow op, so each start costs milliseconds, not an import.

    python benchmarks/kill_safe_writes.py            # 50 kills
    python benchmarks/kill_safe_writes.py --kills 200 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

UNITS = (256, 1024, 512, 10)  # about 3.3 MB of float32 weights


def expected_weights(i: int) -> list[np.ndarray]:
    """The weights of save number ``i`` (kernel, bias per Dense layer)."""
    rng = np.random.default_rng(i)
    out = []
    for a, b in zip(UNITS[:-1], UNITS[1:]):
        out += [rng.standard_normal((a, b), dtype=np.float32), rng.standard_normal((b,), dtype=np.float32)]
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _writer(target: str, first: int, conn) -> None:
    """Child: save i = first, first+1, ... over ``target``; report each."""
    import keras

    from kerasalex import files

    model = keras.Sequential(
        [keras.Input((UNITS[0],))] + [keras.layers.Dense(u, name=f"dense_{k}") for k, u in enumerate(UNITS[1:])],
        name="writer",
    )
    i = first
    model.set_weights(expected_weights(i))
    files.save_model(model, target)
    conn.send(("ready", i, sha256(Path(target))))
    conn.recv()  # "go"
    while True:
        i += 1
        model.set_weights(expected_weights(i))
        conn.send(("begin", i, None))
        files.save_model(model, target)
        conn.send(("done", i, sha256(Path(target))))


def h5_weights(path: Path) -> list[np.ndarray]:
    """The weights inside a .keras file, read with zipfile + h5py (no TensorFlow)."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
        # Keras names the groups by class, in order: dense, dense_1, dense_2.
        out = []
        for name in sorted(h5["layers"], key=lambda n: (len(n), n)):
            group = h5[f"layers/{name}/vars"]
            out += [np.asarray(group["0"]), np.asarray(group["1"])]
    return out


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def run_kills(folder: Path, kills: int = 50, seed: int = 0, max_delay: float = 0.4) -> dict:
    """Kills a writer ``kills`` times at random moments; returns the figures.

    Returns a dict: kills, unloadable, neither_old_nor_new, stray_temps (temp
    files left after the next writer's first save), killed_mid_write (kills
    that left a temporary file, i.e. landed inside a save), old, new.
    """
    import keras  # noqa: F401  (imported once here, inherited by every forked writer)
    from tensorflow.python.eager import context

    from kerasalex import files

    if context.context()._context_handle is not None:
        # TensorFlow's runtime threads do not survive a fork: writers would hang.
        raise RuntimeError("run_kills must run in a process that has not run TensorFlow ops yet (run this script)")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.keras"
    keep = folder / "outcomes"
    keep.mkdir(exist_ok=True)
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("fork")
    figures = dict(kills=kills, unloadable=0, neither_old_nor_new=0, stray_temps=0, killed_mid_write=0, old=0, new=0)
    first = 0
    problems: list[str] = []
    for k in range(kills + 1):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_writer, args=(str(target), first, child), daemon=True)
        proc.start()
        if not parent.poll(300):
            raise RuntimeError("writer did not start")
        kind, i, digest = parent.recv()
        assert kind == "ready", kind
        # The new writer's first save swept its killed predecessor's temp files.
        strays = [p.name for p in folder.iterdir() if files.is_temp_file(p)]
        if strays:
            figures["stray_temps"] += 1
            problems.append(f"kill {k}: temp files left after the next save: {strays}")
        if k == kills:
            proc.kill()
            proc.join()
            break
        last_done, last_sha, begun = i, digest, i
        parent.send("go")
        deadline = time.monotonic() + rng.uniform(0.05, max_delay)
        while time.monotonic() < deadline:
            if parent.poll(max(0.0, deadline - time.monotonic())):
                kind, i, digest = parent.recv()
                if kind == "begin":
                    begun = i
                else:
                    last_done, last_sha = i, digest
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        while parent.poll():  # messages sent just before the kill
            kind, i, digest = parent.recv()
            if kind == "begin":
                begun = i
            else:
                last_done, last_sha = i, digest
        parent.close()
        if any(files.is_temp_file(p) for p in folder.iterdir()):
            figures["killed_mid_write"] += 1
        now = sha256(target)
        if now == last_sha:
            figures["old"] += 1
        else:
            try:
                files.check_model_file(target)
                ok = same_weights(h5_weights(target), expected_weights(begun))
            except Exception as exc:  # noqa: BLE001
                ok = False
                problems.append(f"kill {k}: {exc}")
            if ok:
                figures["new"] += 1
            else:
                figures["neither_old_nor_new"] += 1
                problems.append(f"kill {k}: file is neither save {last_done} nor save {begun}")
        shutil.copyfile(target, keep / f"kill{k:03d}.keras")
        first = begun + 1
    # Loading runs TensorFlow ops, so it comes after the last fork.
    for p in sorted(keep.iterdir()):
        try:
            files.load_model(p)
        except files.ModelFileError as exc:
            figures["unloadable"] += 1
            problems.append(f"{p.name}: {exc}")
    figures["problems"] = problems
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work folder [a temporary folder]")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="kill-safe-"))
    t0 = time.perf_counter()
    f = run_kills(folder, args.kills, args.seed)
    print(json.dumps(f))
    for p in f["problems"]:
        print("  ", p)
    print(
        f"kill-safe writes: {f['unloadable']}/{f['kills']} unloadable, {f['neither_old_nor_new']}/{f['kills']} neither "
        f"old nor new ({f['old']} old, {f['new']} new), {f['stray_temps']} stray temp files after the next save; "
        f"{f['killed_mid_write']}/{f['kills']} kills landed inside a save ({time.perf_counter() - t0:.0f}s)"
    )
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if f["unloadable"] == f["neither_old_nor_new"] == f["stray_temps"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
