"""Issue 14, kinds 1 and 2: an image goes in as a viewer shows it, by one fixed
mapping for every image (EXIF orientation, bit depth, colour profile,
transparency, resizing), and every file under a class folder is either used
or named as left out, with the reason."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from kerasalex import data as D


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(D.MAX_PIXELS_ENV, raising=False)


def phone_photo(path: Path, orientation: int = 6) -> Path:
    """Pixels stored 40x20, left half red, right half blue, EXIF Orientation tag set."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


# --- 1. decoding ---------------------------------------------------------------


def test_exif_orientation_6_is_applied(tmp_path):
    p = phone_photo(tmp_path / "phone.jpg")
    x = D.decode_image(p)
    with Image.open(p) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert x.shape == (40, 20, 3)  # shown 20 wide, 40 high
    np.testing.assert_array_equal(x, expected)
    top, bottom = x[5, 10].astype(int), x[-5, 10].astype(int)
    assert top[0] > 200 and top[2] < 50  # red on top
    assert bottom[2] > 200 and bottom[0] < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_exif_transpose(tmp_path, orientation):
    p = phone_photo(tmp_path / "o.jpg", orientation)
    with Image.open(p) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    np.testing.assert_array_equal(D.decode_image(p), expected)


def test_train_evaluate_predict_and_tune_see_the_rotated_image(tmp_path):
    """The folder scan (train, evaluate, tune) and predict's file decode give
    the same array: the rotated one."""
    root = tmp_path / "ds"
    phone_photo(root / "a" / "phone.jpg")
    phone_photo(root / "b" / "phone.jpg", 1)
    scan = D.scan_folder(root, 16)
    assert scan.split.ids == ["a/phone.jpg", "b/phone.jpg"]
    np.testing.assert_array_equal(scan.split.x[0], D.decode_image(root / "a" / "phone.jpg", 16))
    upright = scan.split.x[0].astype(int)
    assert upright[1, 8, 0] > 200 and upright[1, 8, 2] < 60  # top row red, not purple
    assert upright[-2, 8, 2] > 200


def test_16_bit_samples_map_by_one_fixed_rule_not_the_image_maximum(tmp_path):
    for name, row in (("bright", [1000, 65535]), ("dark", [1000, 2000])):
        Image.fromarray(np.array([row], np.uint16)).save(tmp_path / f"{name}.png")
    bright, dark = D.decode_image(tmp_path / "bright.png"), D.decode_image(tmp_path / "dark.png")
    # the same sample value decodes to the same 8-bit value in both (1000 >> 8 = 3)
    assert bright[0, 0].tolist() == dark[0, 0].tolist() == [3, 3, 3]
    assert bright[0, 1].tolist() == [255, 255, 255] and dark[0, 1].tolist() == [7, 7, 7]


def test_float_and_one_bit_images(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 3.0]], np.float32), "F").save(tmp_path / "f.tif")
    assert D.decode_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255, 255]
    Image.new("1", (4, 4), 1).save(tmp_path / "bw.png")
    assert D.decode_image(tmp_path / "bw.png").max() == 255


def _xyz(x, y, z):
    return b"XYZ " + b"\0" * 4 + b"".join(struct.pack(">i", int(round(v * 65536))) for v in (x, y, z))


def swapped_primaries_profile() -> bytes:
    """A minimal ICC v2 RGB matrix/TRC profile whose red and green primaries
    are sRGB's green and red (D50): converting to sRGB swaps the two."""
    desc_text = b"kerasalex test RGB\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(desc_text)) + desc_text + b"\0" * 4 + b"\0" * 4 + b"\0" * 3 + b"\0" * 67
    curv = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", 563) + b"\0\0"  # gamma 2.2
    tags = [
        (b"desc", desc),
        (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz(0.3851, 0.7169, 0.0971)),  # sRGB green
        (b"gXYZ", _xyz(0.4361, 0.2225, 0.0139)),  # sRGB red
        (b"bXYZ", _xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntr" + b"RGB " + b"XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + struct.pack(">iii", 63190, 65536, 54061) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def test_an_embedded_icc_profile_is_converted_to_srgb(tmp_path):
    if D._image_cms() is None:
        pytest.skip("Pillow without LittleCMS")
    a = np.zeros((4, 4, 3), np.uint8)
    a[..., 0] = 255  # stored as "red" in the profile's terms: sRGB green
    Image.fromarray(a).save(tmp_path / "p.png", icc_profile=swapped_primaries_profile())
    x = D.decode_image(tmp_path / "p.png").astype(int)
    assert x[0, 0, 1] > 240 and x[0, 0, 0] < 15, x[0, 0]
    # the same pixels without a profile stay red
    Image.fromarray(a).save(tmp_path / "plain.png")
    assert D.decode_image(tmp_path / "plain.png")[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("kind", ["rgba", "la", "palette", "rgb_key", "gray_key"])
def test_every_kind_of_transparency_is_composited_on_white(tmp_path, kind):
    p = tmp_path / f"{kind}.png"
    if kind == "rgba":
        Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(p)
    elif kind == "la":
        Image.new("LA", (4, 4), (0, 0)).save(p)
    elif kind == "palette":
        img = Image.fromarray(np.array([[0, 1, 0, 1]] * 4, np.uint8), "P")
        img.putpalette([10, 20, 30, 40, 50, 60])
        img.save(p, transparency=bytes([0, 0]))  # both palette entries fully transparent
    elif kind == "rgb_key":
        Image.new("RGB", (4, 4), (10, 20, 30)).save(p, transparency=(10, 20, 30))
    else:
        Image.new("L", (4, 4), 7).save(p, transparency=7)
    assert D.decode_image(p).tolist() == np.full((4, 4, 3), 255).tolist()


def test_crop_keeps_the_aspect_ratio_and_squash_does_not(tmp_path):
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:40] = (0, 255, 0)
    a[:, 40:] = (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "wide.png")
    crop = D.decode_image(tmp_path / "wide.png", 10, resize="crop")
    # the centre square: green (its edge columns blend with their neighbours, as torchvision's do)
    assert (crop[:, 1:-1] == [0, 255, 0]).all() and (crop[..., 1] >= 200).all()
    squash = D.decode_image(tmp_path / "wide.png", 10, resize="squash")
    assert tuple(squash[5, 0]) == (255, 0, 0) and tuple(squash[5, -1]) == (0, 0, 255)
    # a tall image crops its centre too
    Image.fromarray(a.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")
    assert (D.decode_image(tmp_path / "tall.png", 10, resize="crop")[1:-1] == [0, 255, 0]).all()


def test_crop_is_resize_shorter_side_then_centre_crop(tmp_path):
    """Pillow's box resize of the centre square = torchvision's Resize(shorter
    side) + CenterCrop, up to resampling rounding."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (427, 640, 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(a).resize((64, 43)).resize((640, 427), Image.BILINEAR))  # smooth, photo-like
    Image.fromarray(a).save(tmp_path / "photo.png")
    ours = D.decode_image(tmp_path / "photo.png", 64, resize="crop").astype(int)
    short = Image.fromarray(a).resize((int(64 * 640 / 427), 64), Image.BILINEAR)  # torchvision Resize(64)
    left = int(round((short.size[0] - 64) / 2.0))
    tv = np.asarray(short.crop((left, 0, left + 64, 64))).astype(int)  # CenterCrop(64)
    assert np.abs(ours - tv).mean() < 3.0


def test_digits_and_a_raw_8x8_digit_png_go_through_the_same_mapping(tmp_path):
    from sklearn.datasets import load_digits

    d = D.load_data("digits", image_size=32)
    raw = np.clip(np.round(load_digits().images[0] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    Image.fromarray(raw, "L").save(tmp_path / "digit.png")
    x = D.decode_image(tmp_path / "digit.png", 32, interpolation=D.default_interpolation("digits"))
    full = D.resize_array(np.repeat(raw[None, ..., None], 3, -1), 32, "squash", "nearest")[0]
    np.testing.assert_array_equal(x, full)
    # the dataset's images are the same mapping of the same 8x8 pixels
    raws = np.clip(np.round(load_digits().images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    mapped = D.resize_array(np.repeat(raws[..., None], 3, -1), 32, "squash", "nearest")
    assert {m.tobytes() for m in mapped} == {m.tobytes() for m in np.concatenate([d.train.x, d.test.x])}
    # nearest: every 8x8 pixel becomes a 4x4 block
    np.testing.assert_array_equal(x[:, :, 0], np.repeat(np.repeat(raw, 4, 0), 4, 1))


def test_a_decompression_bomb_is_named_as_such_not_corrupt(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")  # 1600 px > 2 x 100: Pillow's DecompressionBombError
    with pytest.raises(ValueError) as e:
        D.decode_image(tmp_path / "big.png", 16)
    msg = str(e.value)
    assert "big.png: too large, not corrupt" in msg and "1,600 pixels" in msg
    assert "decompression-bomb limit of 200 pixels" in msg and "KERASALEX_MAX_IMAGE_PIXELS" in msg
    monkeypatch.setenv(D.MAX_PIXELS_ENV, "2000")
    assert D.decode_image(tmp_path / "big.png", 16).shape == (16, 16, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's own setting is left as it was
    monkeypatch.setenv(D.MAX_PIXELS_ENV, "1000")
    with pytest.raises(ValueError, match="raise KERASALEX_MAX_IMAGE_PIXELS"):
        D.decode_image(tmp_path / "big.png", 16)


def test_the_cache_is_keyed_on_every_decoding_option(tmp_path):
    root = tmp_path / "ds"
    for c in ("a", "b"):
        root.joinpath(c).mkdir(parents=True)
        a = np.zeros((10, 30, 3), np.uint8)
        a[:, :10] = 255
        Image.fromarray(a).save(root / c / "x.png")
    squash = D.scan_folder(root, D.ResizeRule(10, "squash")).split.x
    crop = D.scan_folder(root, D.ResizeRule(10, "crop")).split.x
    nearest = D.scan_folder(root, D.ResizeRule(10, "squash", "nearest")).split.x
    assert len(list((tmp_path / "cache" / "folders").glob("*/manifest.json"))) == 3
    assert not np.array_equal(squash, crop) and not np.array_equal(squash, nearest)
    assert (crop[:, 2:] == 0).all()  # the centre third is black


# --- 2. the file set ---------------------------------------------------------


def _png(path: Path, color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), color).save(path)


def test_hidden_folders_at_any_depth_are_ignored_and_named(tmp_path):
    root = tmp_path / "pets"
    for i in range(4):
        _png(root / "cat" / f"c{i}.png")
        _png(root / "dog" / f"d{i}.jpg")
    _png(root / "dog" / ".ipynb_checkpoints" / "d0-checkpoint.jpg")  # Jupyter's copy
    _png(root / "cat" / "deep" / ".thumbs" / "c0.png")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    d = D.load_data(str(root), image_size=8)
    assert len(d.train) == 8 and np.bincount(d.train.y).tolist() == [4, 4]
    assert not any(".ipynb" in i or ".thumbs" in i for i in d.train.ids)
    reasons = {Path(e["path"]).name: e["reason"] for e in d.left_out}
    assert reasons[".ipynb_checkpoints"].startswith("hidden folder") and "1 file(s)" in reasons[".ipynb_checkpoints"]
    assert reasons[".thumbs"].startswith("hidden folder")
    assert reasons[".DS_Store"].startswith("hidden file")


def test_files_the_scan_does_not_take_are_named_with_the_reason(tmp_path):
    root = tmp_path / "pets"
    for c in ("cat", "dog"):
        _png(root / c / "a.png")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    (root / "cat" / "b.jpg.bak").write_bytes(buf.getvalue())  # a JPEG the scan does not take
    (root / "cat" / "notes.txt").write_text("hello")
    _png(root / "stray.png")  # not inside a class folder
    (root / "dog" / "e.jfif").write_bytes(buf.getvalue())  # .jfif is a JPEG extension: taken
    d = D.load_data(str(root), image_size=8)
    assert sorted(d.train.ids) == ["cat/a.png", "dog/a.png", "dog/e.jfif"]
    reasons = {Path(e["path"]).name: e["reason"] for e in d.left_out}
    assert set(reasons) == {"b.jpg.bak", "notes.txt", "stray.png"}
    assert "a JPEG image, but its extension '.bak' is not one the scan takes" in reasons["b.jpg.bak"]
    assert "rename it" in reasons["b.jpg.bak"]
    assert reasons["notes.txt"] == "not an image file (extension '.txt')"
    assert reasons["stray.png"].startswith("not inside a class folder")
    line = D.describe_left_out(d.left_out)
    assert line.startswith("left out 3 file(s)") and "b.jpg.bak" in line


def test_unreadable_files_are_left_out_with_their_reason(tmp_path, monkeypatch):
    root = tmp_path / "pets"
    for c in ("cat", "dog"):
        _png(root / c / "a.png")
    (root / "dog" / "broken.png").write_text("not a png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (60, 60)).save(root / "cat" / "huge.png")
    with pytest.warns(UserWarning, match="skipped 2 unreadable image file"):
        d = D.load_data(str(root), image_size=8)
    reasons = {Path(e["path"]).name: e["reason"] for e in d.left_out}
    assert "too large, not corrupt" in reasons["huge.png"]
    assert "not a readable image" in reasons["broken.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = D.load_data(str(root), image_size=8)  # from the cache: the same list
    assert again.left_out == d.left_out


def test_predict_paths_use_the_same_rule_and_name_an_empty_folder(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / ".ipynb_checkpoints" / "a-checkpoint.png")
    (tmp_path / "imgs" / "readme.md").write_text("x")
    left: list[dict] = []
    assert D.iter_image_paths([tmp_path / "imgs"], left) == [tmp_path / "imgs" / "a.png"]
    assert {Path(e["path"]).name for e in left} == {".ipynb_checkpoints", "readme.md"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        D.iter_image_paths([tmp_path / "empty"])
    assert str(tmp_path / "empty") in str(e.value) and ".jpg" in str(e.value) and ".png" in str(e.value)


def test_each_architecture_resizes_as_its_weights_were_trained_and_the_run_records_it():
    from kerasalex.config import resolve_config
    from kerasalex.training import resize_rule

    assert resize_rule(resolve_config("alexnet-torch", dataset="flowers")).resize == "crop"  # torchvision's
    assert resize_rule(resolve_config("vgg16", dataset="flowers")).resize == "crop"
    assert resize_rule(resolve_config("alexnet", dataset="flowers")).resize == "squash"
    assert resize_rule(resolve_config("alexnet-torch", resize="squash")).resize == "squash"
    assert resize_rule(resolve_config("alexnet", dataset="digits")).interpolation == "nearest"
    with pytest.raises(ValueError, match="resize must be one of"):
        resolve_config("alexnet", resize="stretch")


def test_a_15000x12500_jpeg_is_too_large_not_corrupt(tmp_path, monkeypatch):
    """The issue's case at Pillow's default limit: a JPEG whose header says
    15000x12500 (187.5 M pixels > 178,956,970)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)  # Pillow's default
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 12500, 15000)  # height, width
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        D.decode_image(tmp_path / "huge.jpg", 32)
    msg = str(e.value)
    assert "too large, not corrupt: 187,500,000 pixels" in msg and "178,956,970" in msg
    assert "corrupt" not in msg.replace("not corrupt", "")
