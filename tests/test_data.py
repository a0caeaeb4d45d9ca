"""Datasets: CIFAR python archives (the layout Keras downloads), digits, image
folders, validation carving, and the (seed, epoch)-ordered tf.data stream."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerasalex import data as D

# --- CIFAR python format ----------------------------------------------------


def _batch(n, seed, label_key=b"labels", classes=10):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


def make_cifar10(root: Path, n=20, as_tar=True, drop=None) -> Path:
    """Writes a tiny CIFAR-10 in the exact python layout Keras downloads."""
    members = {f"data_batch_{i}": _batch(n, i) for i in range(1, 6)}
    members["test_batch"] = _batch(n, 99)
    members["batches.meta"] = {b"label_names": [c.encode() for c in D.CIFAR10_CLASSES], b"num_vis": 3072}
    if drop:
        members.pop(drop)
    if as_tar:
        path = root / "cifar-10-python.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, obj in members.items():
                blob = pickle.dumps(obj, protocol=2)
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return path
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, obj in members.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return folder


@pytest.mark.parametrize("as_tar", [True, False])
def test_cifar10_python_archive_and_folder(tmp_path, as_tar):
    path = make_cifar10(tmp_path, as_tar=as_tar)
    d = D.load_data("cifar10", data_dir=str(path))
    assert d.class_names == D.CIFAR10_CLASSES
    assert d.train.x.shape == (100, 32, 32, 3) and d.train.x.dtype == np.uint8
    assert d.test.x.shape == (20, 32, 32, 3)
    # pixel layout: row-major CHW planes -> HWC
    raw = _batch(20, 1)[b"data"][0]
    np.testing.assert_array_equal(d.train.x[0, 0, 0], [raw[0], raw[1024], raw[2048]])
    np.testing.assert_array_equal(d.train.y[:20], _batch(20, 1)[b"labels"])


def test_cifar10_parent_folder_of_extracted_archive(tmp_path):
    make_cifar10(tmp_path, as_tar=False)
    assert len(D.load_data("cifar10", data_dir=str(tmp_path)).train) == 100


def test_cifar100_python_archive(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps(_batch(30, 1, b"fine_labels", 100)))
    (folder / "test").write_bytes(pickle.dumps(_batch(10, 2, b"fine_labels", 100)))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [c.encode() for c in D.CIFAR100_CLASSES]}))
    d = D.load_data("cifar100", data_dir=str(tmp_path))
    assert d.num_classes == 100 and len(d.train) == 30 and len(d.test) == 10


def test_cifar_archive_in_the_wrong_layout(tmp_path):
    path = make_cifar10(tmp_path, drop="test_batch")
    with pytest.raises(ValueError, match="missing cifar-10-batches-py/test_batch"):
        D.load_data("cifar10", data_dir=str(path))


def test_cifar_archive_that_is_not_an_archive(tmp_path):
    p = tmp_path / "cifar-10-python.tar.gz"
    p.write_bytes(b"not a tar at all")
    with pytest.raises(ValueError, match="not a readable"):
        D.load_data("cifar10", data_dir=str(p))


def test_cifar_missing_data_dir(tmp_path):
    with pytest.raises(ValueError, match="--data-dir not found"):
        D.load_data("cifar10", data_dir=str(tmp_path / "nope.tar.gz"))


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar_batch_that_runs_code_is_refused(tmp_path):
    folder = make_cifar10(tmp_path, as_tar=False)
    sentinel = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(str(sentinel)), b"labels": [0]}))
    with pytest.raises(ValueError, match="refused to load"):
        D.load_data("cifar10", data_dir=str(folder))
    assert not sentinel.exists()


# --- digits -----------------------------------------------------------------


def test_digits_is_offline_rgb_uint8():
    d = D.load_data("digits")
    assert d.class_names == [str(i) for i in range(10)]
    assert d.train.x.shape[1:] == (32, 32, 3) and d.train.x.dtype == np.uint8
    assert len(d.train) + len(d.test) == 1797
    assert d.train.x.max() == 255
    # gray replicated into three channels
    np.testing.assert_array_equal(d.train.x[..., 0], d.train.x[..., 2])


def test_digits_resized():
    assert D.load_data("digits", image_size=48).train.x.shape[1:] == (48, 48, 3)


# --- folders ----------------------------------------------------------------


def _img(path, size=(20, 14), mode="RGB", color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, size, color if mode != "L" else 128)
    img.save(path)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "pets"
    _img(root / "cat" / "a.png", (20, 14))
    _img(root / "cat" / "b.png", (7, 7), mode="L")
    _img(root / "cat" / "c.png", (40, 40), mode="RGBA", color=(0, 255, 0, 128))
    _img(root / "dog" / "d.jpg", (33, 31))
    _img(root / "dog" / "e.JPG", (16, 16))
    (root / "dog" / "broken.png").write_bytes(b"this is text, not a png")
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_folder_grayscale_rgba_odd_sizes_corrupt(folder):
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\).*broken\.png"):
        d = D.load_data(str(folder), image_size=24)
    assert d.class_names == ["cat", "dog"]
    assert d.train.x.shape == (5, 24, 24, 3) and d.train.x.dtype == np.uint8
    assert d.train.y.tolist() == [0, 0, 0, 1, 1]
    # the RGBA image is composited on white: half-transparent green -> light green
    assert tuple(d.train.x[2, 12, 12]) == (127, 255, 127) or abs(int(d.train.x[2, 12, 12, 0]) - 127) <= 1
    assert d.skipped == [str(folder / "dog" / "broken.png")]
    # a folder without test/ is its own test split
    assert d.test is d.train


def test_folder_counts_every_readable_file(folder):
    with pytest.warns(UserWarning):
        d = D.load_data(str(folder), image_size=16)
    assert np.bincount(d.train.y).tolist() == [3, 2]


def test_folder_cache_is_reused_and_invalidated(folder):
    with pytest.warns(UserWarning):
        a = D.load_data(str(folder), image_size=16)
    assert len(list((folder.parent / "cache" / "folders").glob("*/manifest.json"))) == 1
    b = D.load_data(str(folder), image_size=16)  # from cache: no decoding, same arrays
    np.testing.assert_array_equal(a.train.x, b.train.x)
    _img(folder / "dog" / "f.png", (10, 10))
    with pytest.warns(UserWarning):
        c = D.load_data(str(folder), image_size=16)
    assert len(c.train) == len(a.train) + 1


def test_folder_with_train_and_test(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    for split, n in (("train", 3), ("test", 2)):
        for c in ("x", "y"):
            for i in range(n):
                _img(tmp_path / "ds" / split / c / f"{i}.png")
    d = D.load_data(str(tmp_path / "ds"))
    assert len(d.train) == 6 and len(d.test) == 4


def test_folder_test_classes_may_be_a_subset_but_not_add_one(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    for c in ("x", "y", "z"):
        _img(tmp_path / "ds" / "train" / c / "0.png")
    _img(tmp_path / "ds" / "test" / "x" / "0.png")
    _img(tmp_path / "ds" / "test" / "z" / "0.png")
    d = D.load_data(str(tmp_path / "ds"))
    # test/ lacks y: its images are labelled by name, x -> 0 and z -> 2
    assert d.class_names == ["x", "y", "z"] and d.test.y.tolist() == [0, 2]
    _img(tmp_path / "ds" / "test" / "w" / "0.png")
    with pytest.raises(ValueError, match=r"\['w'\] are not among the model's classes"):
        D.load_data(str(tmp_path / "ds"))
    # training never reads test/: an extra class there does not stop it
    d = D.load_data(str(tmp_path / "ds"), test=False)
    assert d.test is None and len(d.train) == 3


@pytest.mark.parametrize(
    "setup, match",
    [
        ("missing", "neither a known name"),
        ("empty", "no class subfolders"),
        ("single", "only one class folder"),
        ("noimages", "holds no image files"),
        ("allcorrupt", "holds no readable image"),
        ("file", "Received a file"),
    ],
)
def test_folder_bad_input(tmp_path, monkeypatch, setup, match):
    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    if setup == "empty":
        root.mkdir()
    elif setup == "single":
        _img(root / "only" / "a.png")
    elif setup == "noimages":
        _img(root / "a" / "a.png")
        (root / "b").mkdir()
        (root / "b" / "readme.txt").write_text("x")
    elif setup == "allcorrupt":
        _img(root / "a" / "a.png")
        (root / "b").mkdir()
        (root / "b" / "x.jpg").write_bytes(b"")
    elif setup == "file":
        root.write_text("x")
    with pytest.raises(ValueError, match=match):
        if setup == "file":
            D.scan_folder(root, 32)
        else:
            D.load_data(str(root))


# --- validation carving and the stream --------------------------------------


def test_carve_validation_is_stratified_fixed_and_disjoint():
    d = D.load_data("digits")
    a = D.carve_validation(d, 0.2)
    np.random.seed(7)  # --seed (the global RNGs) does not move the validation slice
    b = D.carve_validation(d, 0.2)
    np.testing.assert_array_equal(a.val.y, b.val.y)
    assert len(a.train) + len(a.val) == len(d.train)
    assert abs(len(a.val) - 0.2 * len(d.train)) <= 1
    counts = np.bincount(a.val.y, minlength=10)
    assert counts.min() >= 0.8 * len(a.val) / 10  # stratified: every class in proportion


def test_carve_validation_with_limit():
    d = D.carve_validation(D.load_data("digits"), 0.1, limit=100)
    assert len(d.train) == 100
    assert 5 <= len(d.val) <= 20


def test_prepare_is_load_then_carve_with_the_record():
    rule = D.ResizeRule(D.DEFAULT_IMAGE_SIZE, "squash", "nearest")
    d = D.prepare("digits", rule, val_split=0.1, limit=100)
    assert d.test is None and len(d.train) == 100 and d.image_shape == (32, 32, 3)
    c = D.carve_validation(D.load_data("digits", interpolation="nearest", test=False), 0.1, limit=100)
    np.testing.assert_array_equal(d.train.x, c.train.x)
    np.testing.assert_array_equal(d.val.y, c.val.y)
    rec = d.training_data
    assert (rec["dataset"], rec["val_split"], rec["limit"], rec["split_seed"]) == ("digits", 0.1, 100, D.SPLIT_SEED)
    assert rec["held_out_fingerprint"] == D.fingerprint(d.val) and rec["preprocessing"] == rule.to_dict()


def test_folder_layout_is_one_rule(tmp_path):
    flat = tmp_path / "flat"
    (flat / "a").mkdir(parents=True)
    assert D.folder_layout(flat) == (flat, flat) and not D.has_test_split(str(flat))
    split = tmp_path / "split"
    (split / "train" / "a").mkdir(parents=True)
    assert D.folder_layout(split) == (split / "train", None) and not D.has_test_split(str(split))
    (split / "test" / "a").mkdir(parents=True)
    assert D.folder_layout(split) == (split / "train", split / "test") and D.has_test_split(str(split))


def test_train_stream_order_is_a_function_of_seed_and_epoch():
    split = D.Split(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, -1), np.arange(10, dtype=np.int32))
    ds, steps = D.train_stream(split, 4, 10, seed=3, start_epoch=0, epochs=3, one_hot=False)
    assert steps == 3
    batches = [b[1].numpy().tolist() for b in ds]
    assert len(batches) == 9 and [len(b) for b in batches[:3]] == [4, 4, 2]
    epochs = [sum(batches[i * 3:(i + 1) * 3], []) for i in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    # resuming at epoch 2 gives exactly the tail of the uninterrupted stream
    ds2, _ = D.train_stream(split, 4, 10, seed=3, start_epoch=2, epochs=3, one_hot=False)
    assert sum([b[1].numpy().tolist() for b in ds2], []) == epochs[2]
    assert D.epoch_order(10, 3, 2).tolist() == epochs[2]
    # another seed, another order
    ds3, _ = D.train_stream(split, 4, 10, seed=4, start_epoch=0, epochs=1, one_hot=False)
    assert sum([b[1].numpy().tolist() for b in ds3], []) != epochs[0]


def test_train_stream_ships_uint8_images_and_one_hot_labels():
    d = D.load_data("digits")
    ds, _ = D.train_stream(d.train, 32, 10, seed=0, start_epoch=0, epochs=1)
    x, y = next(iter(ds))
    assert x.dtype.name == "uint8" and x.shape == (32, 32, 32, 3)
    assert y.shape == (32, 10) and float(y.numpy().sum()) == 32.0
