"""Corrupt and hostile model files (issue #8, items 4 and 5).

A truncated ``.keras`` is a clean "corrupt or incomplete model file" error;
a hostile one (code, other files, zip tricks, legacy HDF5, pickled torch
objects) is refused before Keras or torch deserializes anything. Every
hostile fixture would create a sentinel file if its payload ran; the tests
check it never appears. Where it is cheap, a fixture is first shown to be live
(its payload does run when loaded unsafely), so a refusal is not vacuous.
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_in

CORRUPT = "corrupt or incomplete model file"


# --------------------------------------------------------------------------
# Fixtures: a tiny good model, and ways to rewrite its archive
# --------------------------------------------------------------------------


def tiny_model(classes=("a", "b")):
    import keras

    from kerasalex import preprocessing

    inputs = preprocessing.image_input((8, 8, 3))
    x = preprocessing.rescale_symmetric(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(len(classes), name="predictions")(x)
    return keras.Model(inputs, preprocessing.class_names_head(x, list(classes), len(classes)), name="tiny")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    from kerasalex import files

    path = tmp_path_factory.mktemp("good") / "good.keras"
    files.save_model(tiny_model(), path)
    return path


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_members(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def with_config(good: Path, out: Path, edit) -> Path:
    """A copy of ``good`` whose config.json went through ``edit(config)``."""
    members = read_members(good)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    return write_members(out, members)


def layer(config: dict, name: str) -> dict:
    return next(l for l in config["config"]["layers"] if l["config"]["name"] == name)


def replace_layer(config: dict, name: str, node: dict) -> None:
    """Puts ``node`` (class_name/module/config) in place of layer ``name``, keeping its graph links."""
    old = layer(config, name)
    for key in ("class_name", "module", "registered_name", "config"):
        old.pop(key, None)
    old.update(node)


def with_weights(good: Path, out: Path, edit) -> Path:
    """A copy of ``good`` whose model.weights.h5 went through ``edit(h5py.File)``."""
    import h5py

    members = read_members(good)
    h5_path = out.with_suffix(".h5.tmp")
    h5_path.write_bytes(members["model.weights.h5"])
    with h5py.File(h5_path, "r+") as h5:
        edit(h5)
    members["model.weights.h5"] = h5_path.read_bytes()
    h5_path.unlink()
    return write_members(out, members)


def first_dataset(h5) -> str:
    import h5py

    names = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.size > 1 else None)
    return sorted(names)[0]


# --------------------------------------------------------------------------
# 4. Corrupt (truncated) model files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["0", "1", "half"])
def test_truncated_model_is_a_clean_corrupt_file_error(good, tmp_path, size):
    from kerasalex import files

    data = good.read_bytes()
    n = {"0": 0, "1": 1, "half": len(data) // 2}[size]
    bad = tmp_path / "model.keras"
    bad.write_bytes(data[:n])
    with pytest.raises(files.ModelFileError, match=CORRUPT):
        files.load_model(bad)


def test_truncated_models_through_the_cli_exit_non_zero_without_traceback(good, tmp_path):
    data = good.read_bytes()
    for n in (0, 1, len(data) // 2):
        bad = tmp_path / f"cut{n}.keras"
        bad.write_bytes(data[:n])
        r = cli_in(tmp_path, ["evaluate", bad, "--dataset", "digits"])
        assert r.exit_code != 0
        assert CORRUPT in r.stderr, r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        assert "not found" not in r.stderr.lower()


def test_a_good_model_passes_the_checks_and_loads(good):
    from kerasalex import files
    from kerasalex.models import get_class_names

    files.check_model_file(good)
    assert get_class_names(files.load_model(good)) == ["a", "b"]


# --------------------------------------------------------------------------
# 5. Hostile model files
# --------------------------------------------------------------------------


def lambda_keras(tmp: Path, sentinel: Path) -> Path:
    import keras

    s = str(sentinel)
    inputs = keras.Input((2,))
    out = keras.layers.Lambda(lambda x: (open(s, "w").close(), x)[1], name="payload")(inputs)  # noqa: SIM115
    model = keras.Model(inputs, out)
    if sentinel.exists():
        sentinel.unlink()  # building ran it once; only loading counts
    model.save(tmp / "lambda.keras")
    return tmp / "lambda.keras"


def legacy_h5(tmp: Path, sentinel: Path, name="model.h5") -> Path:
    import keras

    s = str(sentinel)
    inputs = keras.Input((2,))
    out = keras.layers.Lambda(lambda x: (open(s, "w").close(), x)[1], name="payload")(inputs)  # noqa: SIM115
    model = keras.Model(inputs, out)
    if sentinel.exists():
        sentinel.unlink()
    model.save(tmp / "model.h5")
    if name != "model.h5":
        (tmp / "model.h5").rename(tmp / name)
    return tmp / name


class _Touch:
    """Unpickling this opens (creates) the sentinel file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_torch_module(sentinel: Path) -> str:
    import base64

    return base64.b64encode(pickle.dumps(_Touch(sentinel))).decode()


def hostile_keras(kind: str, good: Path, tmp: Path, sentinel: Path) -> Path:
    out = tmp / f"{kind}.keras"
    if kind == "lambda":
        return lambda_keras(tmp, sentinel)
    if kind == "tfsm_layer":
        return with_config(good, out, lambda c: replace_layer(c, "flatten", {
            "class_name": "TFSMLayer", "module": "keras.layers",
            "config": {"name": "flatten", "filepath": str(tmp / "saved_model"), "call_endpoint": "serve"}}))
    if kind == "torch_module_wrapper":
        return with_config(good, out, lambda c: replace_layer(c, "flatten", {
            "class_name": "TorchModuleWrapper", "module": "keras.src.utils.torch_utils", "registered_name": "TorchModuleWrapper",
            "config": {"name": "flatten", "module": pickled_torch_module(sentinel)}}))
    if kind == "string_lookup_file":
        vocab = tmp / "secret.txt"
        vocab.write_text("secret\n")
        return with_config(good, out, lambda c: replace_layer(c, "flatten", {
            "class_name": "StringLookup", "module": "keras.layers",
            "config": {"name": "flatten", "vocabulary": str(vocab)}}))
    if kind == "integer_lookup_file":
        return with_config(good, out, lambda c: replace_layer(c, "flatten", {
            "class_name": "IntegerLookup", "module": "keras.layers",
            "config": {"name": "flatten", "vocabulary": "/etc/hostname"}}))
    if kind == "unlisted_layer":
        return with_config(good, out, lambda c: replace_layer(c, "flatten", {
            "class_name": "Embedding", "module": "keras.layers", "config": {"name": "flatten", "input_dim": 3, "output_dim": 2}}))
    if kind == "unlisted_layer_no_module":
        return with_config(good, out, lambda c: replace_layer(c, "flatten", {
            "class_name": "TextVectorization", "config": {"name": "flatten", "vocabulary": str(sentinel)}}))
    if kind == "foreign_module":
        return with_config(good, out, lambda c: replace_layer(c, "flatten", {
            "class_name": "system", "module": "os", "config": {"command": f"touch {sentinel}"}}))
    if kind == "function_gadget":  # CVE-2025-8747 / -9906 style: a Keras function as a config value
        return with_config(good, out, lambda c: layer(c, "predictions")["config"].update(activation={
            "class_name": "function", "module": "keras.utils", "config": "get_file", "registered_name": None}))
    if kind == "unsafe_switch_gadget":
        return with_config(good, out, lambda c: layer(c, "predictions")["config"].update(activation={
            "class_name": "function", "module": "keras.config", "config": "enable_unsafe_deserialization"}))
    if kind == "lambda_marker":
        return with_config(good, out, lambda c: layer(c, "predictions")["config"].update(activation={
            "class_name": "__lambda__", "config": {"code": "", "defaults": None, "closure": None}}))
    if kind == "registered_name_swap":
        return with_config(good, out, lambda c: layer(c, "predictions").update(registered_name="kerasalex>Payload"))
    if kind == "layer_name_traversal":  # CVE-2026-12479: layer names become temp paths
        return with_config(good, out, lambda c: layer(c, "flatten")["config"].update(name="../../escape"))
    if kind == "zip_slip_dotdot":
        return write_members(out, {**read_members(good), "../sentinel": b"x"})
    if kind == "zip_slip_absolute":
        return write_members(out, {**read_members(good), str(sentinel): b"x"})
    if kind == "unexpected_member":
        return write_members(out, {**read_members(good), "assets/vocab.txt": b"x"})
    if kind == "zip_bomb_ratio":
        return write_members(out, {**read_members(good), "metadata.json": b"\0" * (64 * 1024 * 1024)}, zipfile.ZIP_DEFLATED)
    if kind == "zip_bomb_members":
        return write_members(out, {**read_members(good), **{f"config.json.{i}": b"x" for i in range(100)}})
    if kind == "h5_external_storage":  # CVE-2026-1669: weights read from another file
        secret = tmp / "secret.bin"
        secret.write_bytes(np.arange(1024, dtype=np.float32).tobytes())

        def external(h5):
            name = first_dataset(h5)
            shape, dtype = h5[name].shape, h5[name].dtype
            del h5[name]
            h5.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, int(np.prod(shape)) * dtype.itemsize)])

        return with_weights(good, out, external)
    if kind == "h5_external_link":
        import h5py

        other = tmp / "other.h5"
        with h5py.File(other, "w") as h5:
            h5["data"] = np.zeros(4, np.float32)

        def link(h5):
            name = first_dataset(h5)
            del h5[name]
            h5[name] = h5py.ExternalLink(str(other), "/data")

        return with_weights(good, out, link)
    if kind == "h5_shape_bomb":
        def bomb(h5):
            name = first_dataset(h5)
            del h5[name]
            h5.create_dataset(name, shape=(1 << 20, 1 << 12), dtype="float32", chunks=(1024, 64))

        return with_weights(good, out, bomb)
    if kind == "legacy_h5":
        return legacy_h5(tmp, sentinel)
    if kind == "legacy_hdf5":
        return legacy_h5(tmp, sentinel, "model.hdf5")
    if kind == "h5_renamed_keras":
        return legacy_h5(tmp, sentinel, "model.keras")
    raise AssertionError(kind)


HOSTILE_KERAS = [
    "lambda", "tfsm_layer", "torch_module_wrapper", "string_lookup_file", "integer_lookup_file",
    "unlisted_layer", "unlisted_layer_no_module", "foreign_module", "function_gadget", "unsafe_switch_gadget",
    "lambda_marker", "registered_name_swap", "layer_name_traversal", "zip_slip_dotdot", "zip_slip_absolute",
    "unexpected_member", "zip_bomb_ratio", "zip_bomb_members", "h5_external_storage", "h5_external_link",
    "h5_shape_bomb", "legacy_h5", "legacy_hdf5", "h5_renamed_keras",
]


@pytest.mark.parametrize("kind", HOSTILE_KERAS)
def test_hostile_model_file_is_refused_before_keras_loads_it(kind, good, tmp_path, monkeypatch):
    import keras

    from kerasalex import files

    sentinel = tmp_path / "SENTINEL"
    path = hostile_keras(kind, good, tmp_path, sentinel)
    assert not sentinel.exists()

    def keras_must_not_run(*args, **kwargs):
        raise AssertionError("keras.saving.load_model ran on a hostile file")

    monkeypatch.setattr(keras.saving, "load_model", keras_must_not_run)
    with pytest.raises(files.ModelFileError) as err:
        files.load_model(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "refused" in message or CORRUPT in message
    assert not sentinel.exists()
    assert not (tmp_path.parent / "sentinel").exists()


def test_the_lambda_and_h5_fixtures_are_live(good, tmp_path):
    """Loaded unsafely, the payloads run: the refusals above are not vacuous."""
    import keras

    sentinel = tmp_path / "SENTINEL"
    keras.saving.load_model(lambda_keras(tmp_path, sentinel), safe_mode=False)
    assert sentinel.exists()
    sentinel.unlink()
    keras.saving.load_model(legacy_h5(tmp_path, sentinel), safe_mode=False)
    assert sentinel.exists()


def test_zip_size_limit(good, tmp_path, monkeypatch):
    from kerasalex import files

    monkeypatch.setattr(files.checks, "MAX_MODEL_BYTES", 1000)
    with pytest.raises(files.ModelFileError, match="limit 1000"):
        files.check_model_file(good)


def test_hostile_model_through_the_cli_is_one_line(good, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = hostile_keras("torch_module_wrapper", good, tmp_path, sentinel)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    r = cli_in(tmp_path, ["predict", path, img])
    assert r.exit_code != 0
    assert "refused to load" in r.stderr and "TorchModuleWrapper" in r.stderr
    assert "Traceback" not in r.stderr
    assert not sentinel.exists()


# --------------------------------------------------------------------------
# 5. Hostile .pth files (kerasalex.porting: weights_only=True, no fallback)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install 'kerasalex[torch]')")


def hostile_pth(kind: str, torch, tmp: Path, sentinel: Path) -> Path:
    path = tmp / f"{kind}.pth"
    if kind == "reduce_payload":
        torch.save({"features.0.weight": torch.zeros(2), "x": _Touch(sentinel)}, path)
    elif kind == "legacy_format_payload":
        torch.save({"w": _Touch(sentinel)}, path, _use_new_zipfile_serialization=False)
    elif kind == "nested_checkpoint":
        torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)
    elif kind == "not_a_mapping":
        torch.save([torch.zeros(2)], path)
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps(_Touch(sentinel)))
    else:
        raise AssertionError(kind)
    return path


HOSTILE_PTH = ["reduce_payload", "legacy_format_payload", "nested_checkpoint", "not_a_mapping", "plain_pickle"]


@pytest.mark.parametrize("kind", HOSTILE_PTH)
def test_hostile_pth_is_refused_and_never_runs(kind, torch, tmp_path):
    from kerasalex import porting  # ours: an ImportError fails, never skips

    sentinel = tmp_path / "SENTINEL"
    path = hostile_pth(kind, torch, tmp_path, sentinel)
    assert not sentinel.exists()
    with pytest.raises(ValueError) as err:
        porting.load_state_dict(path)
    assert str(path) in str(err.value)
    assert not sentinel.exists()


def test_pth_payload_fixture_is_live(torch, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = hostile_pth("reduce_payload", torch, tmp_path, sentinel)
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_porting_never_falls_back_to_unsafe_torch_load():
    from kerasalex import porting  # ours: an ImportError fails, never skips

    source = Path(porting.__file__).read_text()
    assert "weights_only=True" in source
    assert "weights_only=False" not in source


def test_pinned_versions_carry_the_known_fixes():
    import importlib.metadata as md

    from packaging.version import Version

    assert Version(md.version("keras")) >= Version("3.15.1")
    try:
        assert Version(md.version("torch").split("+")[0]) >= Version("2.10")
    except md.PackageNotFoundError:
        pass
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"keras>=3.15.1,' in text and '"torch>=2.10"' in text


# --------------------------------------------------------------------------
# Our .keras writer: large variables written block by block
# --------------------------------------------------------------------------


def test_block_written_weights_equal_keras_own_save(tmp_path, monkeypatch):
    """With every variable above the block size (so each one is written in
    row blocks, the optimizer's too), the archive holds exactly what Keras'
    own ``model.save`` writes, loads back to the same weights and optimizer
    state, and Keras' saving code is left as it was."""
    import h5py
    import keras

    from kerasalex import _keras_internals, files
    from keras.src.optimizers import base_optimizer
    from keras.src.saving import saving_lib

    monkeypatch.setattr(_keras_internals, "H5_BLOCK_BYTES", 40)  # a 3-row block of a (N, 3) float32 kernel
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    x = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3)).astype("uint8")
    model.fit(x, np.ones((4, 2), "float32"), epochs=1, verbose=0)
    before = (saving_lib.H5IOStore.__setitem__, base_optimizer.BaseOptimizer.save_own_variables)

    ours, theirs = tmp_path / "ours.keras", tmp_path / "theirs.keras"
    files.save_model(model, ours)
    model.save(theirs)
    assert (saving_lib.H5IOStore.__setitem__, base_optimizer.BaseOptimizer.save_own_variables) == before

    def datasets(path, out):
        with zipfile.ZipFile(path) as zf:
            zf.extract("model.weights.h5", out)
        found = {}
        with h5py.File(out / "model.weights.h5") as h5:
            h5.visititems(lambda name, obj: found.__setitem__(name, (obj.dtype, obj[()])) if isinstance(obj, h5py.Dataset) else None)
        return found

    a, b = datasets(ours, tmp_path / "a"), datasets(theirs, tmp_path / "b")
    assert sorted(a) == sorted(b) and any("optimizer" in k for k in a)
    assert any(v[1].shape[0] > 3 for v in a.values())  # some variable really was split into blocks
    for name in a:
        assert a[name][0] == b[name][0] and np.array_equal(a[name][1], b[name][1]), name

    loaded = keras.saving.load_model(ours)  # compiled: the optimizer state comes back too
    for w, v in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(v))
    for w, v in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(v))


def test_metadata_travels_inside_the_archive_and_plain_keras_ignores_it(tmp_path):
    import keras

    from kerasalex import files

    path = tmp_path / "meta.keras"
    files.save_model(tiny_model(), path, metadata={"class_names": ["a", "b"], "note": "x"})
    assert files.read_model_metadata(path) == {"class_names": ["a", "b"], "note": "x"}
    files.check_model_file(path)
    # Inside Keras's own metadata.json: Keras's three members, no fourth (with
    # more than three, Keras extracts the whole archive to disk on each load).
    members = read_members(path)
    assert sorted(members) == ["config.json", "metadata.json", "model.weights.h5"]
    meta = json.loads(members["metadata.json"])
    assert meta["kerasalex"] == {"class_names": ["a", "b"], "note": "x"} and "keras_version" in meta
    # Keras loads the file as it loads its own (the entry is ignored).
    import kerasalex.preprocessing  # noqa: F401

    model = keras.saving.load_model(path, safe_mode=True)
    assert model.output_shape == (None, 2)
    # A model without the entry reads as {}; an entry that is not an object is refused.
    plain = tmp_path / "plain.keras"
    files.save_model(tiny_model(), plain)
    assert files.read_model_metadata(plain) == {}
    members["metadata.json"] = json.dumps({**meta, "kerasalex": [1, 2]}).encode()
    bad = write_members(tmp_path / "bad.keras", members)
    with pytest.raises(files.ModelFileError, match="not a JSON object"):
        files.read_model_metadata(bad)
    # Files of earlier versions kept it in a kerasalex.json member: still read.
    legacy = read_members(plain)
    legacy["kerasalex.json"] = json.dumps({"class_names": ["x", "y"]}).encode()
    old = write_members(tmp_path / "old.keras", legacy)
    assert files.read_model_metadata(old) == {"class_names": ["x", "y"]}
    from kerasalex.models import get_class_names

    assert get_class_names(files.load_model(old)) == ["x", "y"]
