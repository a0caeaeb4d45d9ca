"""Awkward image folders (issue #8, item 8).

A folder with a 0-byte .jpg, a truncated JPEG, text renamed .png, grayscale,
RGBA, CMYK, 1x1, 4000x10, an animated GIF and an upper-case .JPG: the
pre-scan names exactly the three corrupt files (they are skipped, named in a
warning on every run and recorded), and every batch is (N, H, W, 3) uint8.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = 16


def jpeg_bytes(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def awkward(tmp_path, monkeypatch) -> tuple[Path, set[str]]:
    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "photos"
    odd, plain = root / "odd", root / "plain"
    odd.mkdir(parents=True)
    plain.mkdir()
    corrupt = set()
    (odd / "empty.jpg").write_bytes(b"")
    corrupt.add(odd / "empty.jpg")
    full = jpeg_bytes((64, 64))
    (odd / "truncated.jpg").write_bytes(full[: len(full) // 2])
    corrupt.add(odd / "truncated.jpg")
    (odd / "notes.png").write_text("these are my notes, not a picture\n")
    corrupt.add(odd / "notes.png")
    Image.new("L", (20, 20), 128).save(odd / "gray.png")
    Image.new("RGBA", (20, 20), (0, 255, 0, 0)).save(odd / "rgba.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(odd / "cmyk.jpg")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(odd / "dot.png")
    Image.new("RGB", (4000, 10), (9, 9, 9)).save(odd / "strip.png")
    frames = [Image.new("P", (12, 12), i) for i in (10, 200)]
    frames[0].save(odd / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    (odd / "UPPER.JPG").write_bytes(jpeg_bytes())
    for i in range(3):
        Image.new("RGB", (24, 24), (i * 50, 0, 0)).save(plain / f"p{i}.png")
    return root, {str(p) for p in corrupt}


def test_prescan_names_exactly_the_corrupt_files(awkward):
    from kerasalex.data import scan_folder

    root, corrupt = awkward
    with pytest.warns(UserWarning, match="skipped 3 unreadable image file") as caught:
        split, names, skipped, _ = scan_folder(root, SIZE)
    assert set(skipped) == corrupt
    message = str(caught[0].message)
    assert all(p in message for p in corrupt)
    assert names == ["odd", "plain"]
    # gray, rgba, cmyk, dot, strip, anim, UPPER + 3 plain
    assert len(split) == 10 and np.bincount(split.y).tolist() == [7, 3]
    assert split.x.shape == (10, SIZE, SIZE, 3) and split.x.dtype == np.uint8


def test_the_cached_scan_names_them_again(awkward):
    from kerasalex.data import scan_folder

    root, corrupt = awkward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan_folder(root, SIZE)
    with pytest.warns(UserWarning, match="skipped 3 unreadable image file"):
        _, _, skipped, _ = scan_folder(root, SIZE)  # from the cache
    assert set(skipped) == corrupt


def test_odd_images_decode_to_rgb(awkward):
    from kerasalex.data import decode_image

    root, _ = awkward
    odd = root / "odd"
    assert decode_image(odd / "rgba.png", None).tolist() == np.full((20, 20, 3), [255, 255, 255]).tolist()  # transparent -> white
    assert decode_image(odd / "gray.png", None).shape == (20, 20, 3)
    assert decode_image(odd / "cmyk.jpg", None).shape == (20, 20, 3)
    assert decode_image(odd / "dot.png", SIZE).shape == (SIZE, SIZE, 3)
    assert decode_image(odd / "strip.png", SIZE).shape == (SIZE, SIZE, 3)
    first = decode_image(odd / "anim.gif", None)
    assert first.shape == (12, 12, 3)
    for name in ("empty.jpg", "truncated.jpg", "notes.png"):
        with pytest.raises(ValueError, match=name):
            decode_image(odd / name, SIZE)


def test_every_batch_is_n_h_w_3(awkward):
    from kerasalex.data import carve_validation, eval_dataset, load_data, train_stream

    root, corrupt = awkward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = carve_validation(load_data(str(root), image_size=SIZE), 0.2)
    assert set(data.skipped) == corrupt
    ds, steps = train_stream(data.train, 3, data.num_classes, seed=0, start_epoch=0, epochs=2)
    shapes = [tuple(x.shape) for x, _ in ds]
    assert len(shapes) == 2 * steps
    assert all(s[1:] == (SIZE, SIZE, 3) and 1 <= s[0] <= 3 for s in shapes)
    for x, y in eval_dataset(data.val, 2, data.num_classes):
        assert tuple(x.shape[1:]) == (SIZE, SIZE, 3) and x.dtype.name == "uint8"
        assert tuple(y.shape[1:]) == (data.num_classes,)


def test_a_class_with_only_corrupt_files_is_an_error(awkward):
    from kerasalex.data import scan_folder

    root, _ = awkward
    bad = root / "zzz"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"zzz holds no readable image \(all unreadable"):
            scan_folder(root, SIZE)


def test_a_decompression_bomb_is_skipped_not_fatal(tmp_path, monkeypatch):
    from kerasalex.data import decode_image

    monkeypatch.delenv("KERASALEX_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")  # 1600 px > 2 x 100: DecompressionBombError
    with pytest.raises(ValueError, match="big.png: too large, not corrupt"):
        decode_image(tmp_path / "big.png", SIZE)
