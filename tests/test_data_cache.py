"""Image folders kept on disk: the decoded-image cache (kerasalex.data.cache),
read by position at constant memory, and what happens when it is damaged,
from another version, the disk fills up, or the folder changes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerasalex import data as D
from kerasalex.data import cache as C
from kerasalex.data import folders as F

from conftest import run_python


def _folder(root: Path, per_class=(7, 5, 6), size=(20, 14)) -> Path:
    rng = np.random.default_rng(0)
    for c, n in zip("abc", per_class):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


@pytest.fixture
def pets(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    return _folder(tmp_path / "pets")


def _caches(tmp_path) -> list[Path]:
    return sorted(p for p in (tmp_path / "cache" / "folders").iterdir())


def test_storage_rule():
    assert F.choose_storage("auto", 50_000, 32) == "memory"  # CIFAR-10: 154 MB
    assert F.choose_storage("auto", 20_000, 96) == "memory"  # 553 MB
    assert F.choose_storage("auto", 200_000, 96) == "disk"  # 5.5 GB
    assert F.choose_storage("auto", 7_200, 224) == "disk"  # just over 1 GiB
    assert F.choose_storage("memory", 10**7, 224) == "memory"
    assert F.choose_storage("disk", 10, 8) == "disk"
    with pytest.raises(ValueError, match="one of auto, memory, disk"):
        F.choose_storage("ram", 10, 8)


def test_disk_storage_gives_the_same_split_as_memory(pets, tmp_path):
    mem = F.scan_folder(pets, 16, storage="memory").split
    disk = F.scan_folder(pets, 16, storage="disk").split
    assert len(_caches(tmp_path)) == 1  # one cache serves both
    x = disk.x
    assert isinstance(x, C.DiskImages) and isinstance(mem.x, np.ndarray)
    assert x.shape == mem.x.shape == (18, 16, 16, 3) and x.dtype == np.uint8 and len(x) == 18
    np.testing.assert_array_equal(np.asarray(x), mem.x)
    np.testing.assert_array_equal(disk.y, mem.y)
    assert disk.ids == mem.ids
    # indexing like an array
    np.testing.assert_array_equal(x[3], mem.x[3])
    np.testing.assert_array_equal(x[-1], mem.x[-1])
    np.testing.assert_array_equal(x[2:9:3], mem.x[2:9:3])
    idx = np.array([17, 0, 5, 5])
    np.testing.assert_array_equal(x[idx], mem.x[idx])
    mask = mem.y == 1
    np.testing.assert_array_equal(x[mask], mem.x[mask])
    np.testing.assert_array_equal(x[np.array([[1, 2], [3, 4]])], mem.x[np.array([[1, 2], [3, 4]])])
    with pytest.raises(IndexError):
        x[18]
    with pytest.raises(TypeError, match="one index"):
        x[:, :, ::-1]
    # a subset is a view: nothing read until indexed
    before = x.images_read
    sub = disk.take(np.array([4, 2, 9]))
    assert isinstance(sub.x, C.DiskImages) and x.images_read == before
    np.testing.assert_array_equal(sub.x[1:], mem.x[[2, 9]])
    assert sub.ids == [mem.ids[i] for i in (4, 2, 9)]
    # a view's indices are checked, never read as damage
    np.testing.assert_array_equal(x.subset([-1])[0], mem.x[-1])
    with pytest.raises(IndexError):
        x.subset([18])
    with pytest.raises(TypeError):
        x.subset(np.ones(18, bool))
    assert len(_caches(tmp_path)) == 1
    # the fingerprint does not depend on where the images are
    assert D.fingerprint(disk) == D.fingerprint(mem) and D.fingerprint(sub) == D.fingerprint(mem.take([4, 2, 9]))


def test_prepare_on_disk_records_and_streams_what_memory_does(pets):
    rule = D.ResizeRule(16)
    mem = D.prepare(str(pets), rule, val_split=0.2, storage="memory")
    disk = D.prepare(str(pets), rule, val_split=0.2, storage="disk")
    assert isinstance(disk.train.x, C.DiskImages) and isinstance(disk.val.x, C.DiskImages)
    assert disk.training_data == mem.training_data
    # the (seed, epoch) training order, batch for batch: --resume stays exact
    a, steps_a = D.train_stream(mem.train, 4, 3, seed=7, start_epoch=1, epochs=3)
    b, steps_b = D.train_stream(disk.train, 4, 3, seed=7, start_epoch=1, epochs=3)
    assert steps_a == steps_b
    pairs = list(zip(a.as_numpy_iterator(), b.as_numpy_iterator()))
    assert len(pairs) == 2 * steps_a
    for (xa, ya), (xb, yb) in pairs:
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # validation / evaluation batches in order
    ea = [e for e in D.eval_dataset(mem.val, 3, 3).as_numpy_iterator()]
    eb = [e for e in D.eval_dataset(disk.val, 3, 3).as_numpy_iterator()]
    assert len(ea) == len(eb) == 2
    for (xa, ya), (xb, yb) in zip(ea, eb):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    flipped = np.concatenate(list(D.images_only(disk.val.x, 2, flip=True).as_numpy_iterator()))
    np.testing.assert_array_equal(flipped, mem.val.x[:, :, ::-1])


def test_parallel_first_decode_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "DECODE_CHUNK", 4)
    root = _folder(tmp_path / "p", per_class=(6, 5))
    (root / "b" / "broken.png").write_bytes(b"not a png")
    files = F.list_image_files(root)
    one = list(F.decode_files(files, D.ResizeRule(12), workers=1))
    two = list(F.decode_files(files, D.ResizeRule(12), workers=2))
    assert [s for s, *_ in one] == [s for s, *_ in two] == [0, 4, 8]
    for (_, xa, oka, ra), (_, xb, okb, rb) in zip(one, two):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(oka, okb)
        assert ra == rb
    assert sum(int((~ok).sum()) for _, _, ok, _ in two) == 1


def test_a_damaged_shard_is_refused_in_one_line_then_rebuilt(pets, tmp_path):
    first = F.scan_folder(pets, 16, storage="disk").split
    expected = np.asarray(first.x)
    (cache,) = _caches(tmp_path)
    shard = cache / "images-00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[5 * 16 * 16 * 3 + 7] ^= 0xFF  # one byte of image 5, same size: only the checksum tells
    shard.write_bytes(bytes(raw))
    x = F.scan_folder(pets, 16, storage="disk").split.x
    np.testing.assert_array_equal(x[:5], expected[:5])
    with pytest.raises(C.CacheError) as err:
        x[3:8]
    msg = str(err.value)
    assert "\n" not in msg and "damaged" in msg and "image 5" in msg and "rebuild" in msg
    assert not cache.exists()  # removed: the next run rebuilds it
    again = F.scan_folder(pets, 16, storage="disk").split.x
    np.testing.assert_array_equal(np.asarray(again), expected)


def test_a_truncated_or_foreign_cache_is_rebuilt_with_a_line(pets, tmp_path, capsys):
    expected = np.asarray(F.scan_folder(pets, 16, storage="disk").split.x)
    (cache,) = _caches(tmp_path)
    shard = cache / "images-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    capsys.readouterr()
    np.testing.assert_array_equal(np.asarray(F.scan_folder(pets, 16, storage="disk").split.x), expected)
    assert "has a damaged shard (images-00000.bin" in capsys.readouterr().err
    # a damaged label array (same size: only its checksum tells) is never trusted
    labels = bytearray((cache / "labels.npy").read_bytes())
    labels[-1] ^= 0x01
    (cache / "labels.npy").write_bytes(bytes(labels))
    np.testing.assert_array_equal(np.asarray(F.scan_folder(pets, 16, storage="disk").split.x), expected)
    assert "has a damaged labels.npy (checksum)" in capsys.readouterr().err
    # a cache written by another format version is never read
    manifest = json.loads((cache / C.MANIFEST).read_text())
    manifest["format_version"] = C.FORMAT_VERSION + 1
    (cache / C.MANIFEST).write_text(json.dumps(manifest))
    np.testing.assert_array_equal(np.asarray(F.scan_folder(pets, 16, storage="disk").split.x), expected)
    out = capsys.readouterr().err
    assert "was written by another kerasalex" in out and "rebuilding it" in out
    assert json.loads((cache / C.MANIFEST).read_text())["format_version"] == C.FORMAT_VERSION


def test_labels_come_from_the_listing_not_the_cache(pets, tmp_path):
    """The same files cached with other labels (predict caches none; another
    model's class list numbers them otherwise) get the caller's labels."""
    files = F.list_image_files(pets)
    rule = D.ResizeRule(16)
    F.decode_cached(pets, files, np.zeros(len(files), np.int32), rule, storage="disk")  # as predict does
    scan = F.scan_folder(pets, rule, storage="disk")
    assert np.bincount(scan.split.y).tolist() == [7, 5, 6] and len(_caches(tmp_path)) == 1
    assert D.fingerprint(scan.split) == D.fingerprint(F.scan_folder(pets, rule, storage="memory").split)


def test_a_folder_changed_between_runs_gets_a_new_cache(pets, tmp_path):
    a = F.scan_folder(pets, 16, storage="disk").split
    img = np.asarray(Image.open(pets / "a" / "000.png"))
    Image.fromarray(255 - img).save(pets / "a" / "000.png")
    os.utime(pets / "a" / "000.png", ns=(1, 1))
    b = F.scan_folder(pets, 16, storage="disk").split
    assert len(_caches(tmp_path)) == 2
    assert not np.array_equal(a.x[0], b.x[0]) and np.array_equal(a.x[1:], b.x[1:])


def test_a_folder_changed_while_decoding_is_refused(pets, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "DECODE_CHUNK", 4)
    real = F.decode_files
    rewrites = iter([(9, 10**9), (11, 2 * 10**9)])

    def touching(files, rule, workers=None, progress=False):
        for i, chunk in enumerate(real(files, rule, 1, progress)):
            if i == 1:  # a file rewritten mid-decode
                side, mtime = next(rewrites)
                Image.new("RGB", (side, side)).save(pets / "c" / "002.png")
                os.utime(pets / "c" / "002.png", ns=(mtime, mtime))
            yield chunk

    monkeypatch.setattr(F, "decode_files", touching)
    for storage in ("disk", "memory"):
        with pytest.raises(C.CacheError, match=r"changed while it was being decoded; run the command again"):
            F.scan_folder(pets, 16, storage=storage)
        assert not (tmp_path / "cache" / "folders").exists() or _caches(tmp_path) == []


FULL_DISK = r"""
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from kerasalex.data import folders as F, cache as C
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # every file over 2,000 bytes fails: EFBIG
root = Path(sys.argv[1])
try:
    s = F.scan_folder(root, 16, storage=sys.argv[2]).split
    print("OK", len(s), type(s.x).__name__)
except C.CacheError as exc:
    print("ERROR", exc)
"""


@pytest.mark.parametrize("storage", ["disk", "memory"])
def test_a_full_disk_while_writing_the_cache(pets, tmp_path, storage):
    """disk: refused in one line, nothing left behind; memory: the images are
    decoded in memory anyway (the cache is an optimisation there)."""
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    env = {"KERASALEX_CACHE_DIR": str(tmp_path / "cache")}
    r = run_python(f"import runpy, sys; sys.argv = ['x', {str(pets)!r}, {storage!r}]; runpy.run_path({str(script)!r})",
                   env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("OK", "ERROR"))]
    assert r.returncode == 0 and len(lines) == 1, r.stdout + r.stderr
    if storage == "disk":
        assert lines[0].startswith("ERROR the disk filled up while writing the decoded-image cache"), lines[0]
        assert "KERASALEX_CACHE_DIR" in lines[0]
    else:
        assert lines[0] == "OK 18 ndarray"
    assert list((tmp_path / "cache" / "folders").iterdir()) == []  # no partial cache


def test_too_little_free_space_is_refused_before_decoding(pets, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(C.CacheError, match=r"not enough disk space for the decoded-image cache .* GB are free"):
        F.scan_folder(pets, 16, storage="disk")
    # memory storage goes on without a cache
    assert len(F.scan_folder(pets, 16, storage="memory").split) == 18


def test_cli_train_and_evaluate_from_disk_match_memory(tmp_path, monkeypatch):
    from conftest import invoke_in, tiny_alexnet_registered

    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path / "pets", per_class=(12, 12, 12))
    results = {}
    with tiny_alexnet_registered():
        for storage in ("memory", "disk"):
            invoke_in(["train", "--dataset", root, "--epochs", "2", "--image-size", "16", "--data-cache", storage,
                       "--run-dir", f"runs/{storage}", "-o", f"{storage}.keras"], tmp_path)
            r = invoke_in(["evaluate", f"{storage}.keras", "--data-cache", storage, "--output-dir", f"ev-{storage}"],
                          tmp_path)
            results[storage] = json.loads((tmp_path / f"ev-{storage}" / "evaluation.json").read_text())
            assert "Held-out accuracy" in r.output
            cfg = json.loads((tmp_path / "runs" / storage / "config.json").read_text())
            assert cfg["config"]["data_cache"] == storage
    m, d = results["memory"], results["disk"]
    assert m["test_accuracy"] == d["test_accuracy"] and m["confusion_matrix"] == d["confusion_matrix"]
    assert abs(m["test_loss"] - d["test_loss"]) < 1e-6


def test_replica_parts_split_every_batch_and_pad_only_a_tiny_last_one():
    parts = D.replica_parts(np.arange(30), 2)
    assert [p.tolist() for p in parts] == [list(range(15)), list(range(15, 30))]
    parts = D.replica_parts(np.arange(7), 3)  # sizes differ by at most one, nothing lost or repeated
    assert [len(p) for p in parts] == [3, 2, 2] and np.concatenate(parts).tolist() == list(range(7))
    parts = D.replica_parts(np.array([5]), 2)  # fewer images than replicas: repeated, as DistributedSampler pads
    assert [p.tolist() for p in parts] == [[5], [5]]


def test_cli_a_shard_damaged_under_training_stops_with_one_line(tmp_path, monkeypatch):
    """The damaged record is met inside tf.data (wrapped by TensorFlow): the
    command still ends with our one line and a non-zero exit, and the next
    run rebuilds the cache and trains."""
    from conftest import cli_in, tiny_alexnet_registered

    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path / "pets", per_class=(8, 8, 8))
    args = ["train", "--dataset", root, "--epochs", "1", "--image-size", "16", "--data-cache", "disk",
            "--val-split", "0", "--batch-size", "8"]
    with tiny_alexnet_registered():
        first = cli_in(tmp_path, args + ["--run-dir", "runs/a", "-o", "a.keras"])
        assert first.exit_code == 0, first.output
        (cache,) = _caches(tmp_path)
        shard = cache / "images-00000.bin"
        raw = bytearray(shard.read_bytes())
        raw[-1] ^= 0xFF  # the last image: read by training, not before
        shard.write_bytes(bytes(raw))
        r = cli_in(tmp_path, args + ["--run-dir", "runs/b", "-o", "b.keras"])
        assert r.exit_code == 1, r.output
        last = r.output.strip().splitlines()[-1]
        assert last.startswith("Error: decoded-image cache") and "image 23 in images-00000.bin fails its checksum" in last
        assert "Traceback" not in r.output and not (tmp_path / "b.keras").exists()
        again = cli_in(tmp_path, args + ["--run-dir", "runs/c", "-o", "c.keras"])
        assert again.exit_code == 0, again.output


def test_a_killed_writer_leaves_nothing_the_next_one_keeps(pets, tmp_path):
    """A writer killed mid-way leaves ``<key>.partial-<pid>-*``; the next
    writer of that cache removes it (its process is gone), never a live one's."""
    import subprocess

    F.scan_folder(pets, 16, storage="disk")
    (cache,) = _caches(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = cache.with_name(f"{cache.name}.partial-{dead.pid}-deadbeef")
    live = cache.with_name(f"{cache.name}.partial-{os.getpid()}-cafecafe")
    for p in (stale, live):
        p.mkdir()
        (p / "images-00000.bin").write_bytes(b"\0" * 100)
    C.remove(cache)  # the next run writes the cache again
    F.scan_folder(pets, 16, storage="disk")
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in _caches(tmp_path)) == sorted([cache.name, live.name])


def test_decode_progress_in_a_log_is_one_plain_line(tmp_path, capsys):
    """Not a terminal (nohup, CI, a log file): the first-decode bar ends as one
    line without ANSI codes, as fit() does with verbose=2."""
    from kerasalex.data.decoding import ResizeRule

    root = _folder(tmp_path / "pets")
    files = sorted(root.rglob("*.png"))
    list(F.decode_files(files, ResizeRule(8), workers=1, progress=True))
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert f"{len(files)}/{len(files)}" in out
    assert len([line for line in out.splitlines() if "/18" in line]) == 1
