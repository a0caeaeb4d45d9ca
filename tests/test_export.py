"""`kerasalex export` (SavedModel, LiteRT, ONNX), `predict` on the artifacts,
and the files `train` writes loading in plain Keras without kerasalex.

One module fixture trains a tiny convnet on digits through the real `train`
command (augmentation and dropout on, so the training front is exercised)
and exports it once per format; the tests read what was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import BLOCK_KERASALEX, run_python

pytest.importorskip("tf2onnx", reason='the export packages are not installed: pip install "kerasalex[export]"')
pytest.importorskip("onnxruntime", reason='pip install "kerasalex[export]"')
pytest.importorskip("ai_edge_litert", reason='pip install "kerasalex[export]"')

FORMATS = {"saved_model": "tiny_saved_model", "litert": "tiny.tflite", "onnx": "tiny.onnx"}
DIGITS = [str(i) for i in range(10)]


def build_tiny(num_classes=10, input_shape=(16, 16, 3), class_names=None, dropout=0.0, seed=None, resize="bilinear"):
    """A 17k-parameter convnet with the builders' conventions (uint8 of any
    size in, logits out, stock layers only)."""
    import keras
    from keras import layers

    from kerasalex import preprocessing
    from kerasalex.models import set_model_info

    h, w = input_shape[:2]
    inputs = preprocessing.image_input()
    x = preprocessing.rescale_symmetric(inputs)
    x = layers.Resizing(h, w, interpolation=resize, name="resize" if resize == "bilinear" else f"resize_{resize}")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(x)
    x = layers.MaxPooling2D(2, name="block1_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="fc1_dropout")(x)
    x = layers.Dense(32, activation="relu", name="fc1")(x)
    logits = layers.Dense(num_classes, name="predictions", dtype="float32")(x)
    model = keras.Model(inputs, logits, name="tiny")
    return set_model_info(model, preprocessing.check_class_names(class_names, num_classes), input_shape)


@contextlib.contextmanager
def _chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _cli(args, cwd: Path):
    from click.testing import CliRunner

    from kerasalex.cli import cli

    with _chdir(cwd):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tiny.keras trained by `kerasalex train`, and each format exported from it."""
    from kerasalex.models import ARCHITECTURES, Architecture

    root = tmp_path_factory.mktemp("export")
    ARCHITECTURES["tiny"] = Architecture("tiny", "test_export:build_tiny", "a tiny test model", image_size=16, min_image_size=8)
    try:
        r = _cli(["train", "--arch", "tiny", "--dataset", "digits", "--limit", "600", "--epochs", "8",
                  "--batch-size", "30", "--image-size", "16", "--augment", "--dropout", "0.3", "--optimizer", "adam",
                  "--lr", "0.003", "--schedule", "constant", "--save-best",
                  "--run-dir", "run", "-o", "tiny.keras"], root)
        assert r.exit_code == 0, r.output
    finally:
        del ARCHITECTURES["tiny"]
    outputs = {}
    for fmt in FORMATS:
        r = _cli(["export", "tiny.keras", "--format", fmt, "--dataset", "digits", "--limit", "120"], root)
        assert r.exit_code == 0, r.output
        outputs[fmt] = r.output
    r = _cli(["export", "tiny.keras", "--format", "litert", "--quantize", "--dataset", "digits"], root)
    assert r.exit_code == 0, r.output
    outputs["int8"] = r.output
    return root, outputs


def _keras_probs(root: Path, x: np.ndarray) -> np.ndarray:
    from kerasalex import files
    from kerasalex.evaluation import predict_logits, softmax
    from kerasalex.export import float32_model

    return softmax(predict_logits(float32_model(files.load_model(root / "tiny.keras")), x))


def _digits(n=100):
    from kerasalex.data import load_data

    test = load_data("digits", image_size=16).test
    return test.x[:n], test.y[:n]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --------------------------------------------------------------------------
# What train writes: the inference model, stock Keras, loadable anywhere
# --------------------------------------------------------------------------


def test_train_writes_the_inference_model_of_stock_layers(exported):
    root, _ = exported
    for path in (root / "run" / "model.keras", root / "run" / "best.keras", root / "tiny.keras"):
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
            members = sorted(zf.namelist())
            meta = json.loads(zf.read("metadata.json"))["kerasalex"]
        text = json.dumps(config)
        assert "kerasalex" not in text and "Random" not in text and "augment" not in text, path
        assert "mixed_" not in text  # float32 policies, whatever precision trained it
        # Keras's three members only (with a fourth, Keras extracts the whole archive on every load)
        assert members == ["config.json", "metadata.json", "model.weights.h5"]
        assert not config.get("compile_config") and "optimizer" not in text  # no FusedSGD, no optimizer state
        assert meta["class_names"] == DIGITS and meta["image_shape"] == [16, 16, 3] and meta["arch"] == "tiny"
    assert not (root / "run" / "resume").exists()


def test_plain_keras_loads_the_trained_files_without_kerasalex(exported):
    """In a Python where kerasalex cannot be imported, keras.saving.load_model
    (safe mode on) loads what train wrote and gives kerasalex's logits; the
    class names come out of the archive with zipfile + json."""
    from kerasalex import files

    root, _ = exported
    x, _ = _digits(20)
    np.save(root / "x.npy", x)
    for name in ("tiny", "best"):
        path = root / ("tiny.keras" if name == "tiny" else "run/best.keras")
        np.save(root / f"{name}.npy", files.load_model(path).predict(x, verbose=0))
    code = BLOCK_KERASALEX + f"""
import json, zipfile
import numpy as np, keras
root = {str(root)!r}
x = np.load(root + "/x.npy")
for name, path in (("tiny", root + "/tiny.keras"), ("best", root + "/run/best.keras")):
    model = keras.saving.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), np.load(root + "/" + name + ".npy"))
    np.testing.assert_array_equal(np.asarray(model(x)), model.predict(x, verbose=0))
    print(name, json.loads(zipfile.ZipFile(path).read("metadata.json"))["kerasalex"]["class_names"][:3])
"""
    r = run_python(code, cwd=root, env={"PYTHONPATH": None})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tiny ['0', '1', '2']" in r.stdout and "best ['0', '1', '2']" in r.stdout


# --------------------------------------------------------------------------
# Each format: the command's check, the artifact in its runtime, its contract
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_round_trips_within_the_tolerance(exported, fmt):
    from kerasalex import export as E

    root, outputs = exported
    out = outputs[fmt]
    assert "max |probability difference|" in out and "top-1 agreement" in out and "Accuracy: .keras" in out
    path = root / FORMATS[fmt]
    info = json.loads(E.info_path(path, fmt).read_text())
    assert info["class_names"] == DIGITS and info["image_shape"] == [16, 16, 3]
    assert info["input"] == {"name": "image", "dtype": "uint8", "shape": [None, 16, 16, 3], "values": "RGB 0..255"}
    assert info["check"]["max_prob_diff"] <= E.MAX_PROB_DIFF

    art = E.Artifact(path)
    assert art.format == fmt and art.class_names == DIGITS and art.image_shape == (16, 16, 3)
    x, _ = _digits(100)
    probs, want = art.predict(x), _keras_probs(root, x)
    assert probs.shape == (100, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.abs(probs - want).max() <= E.MAX_PROB_DIFF
    assert np.mean(probs.argmax(1) == want.argmax(1)) >= 0.99
    np.testing.assert_array_equal(art.predict(x), probs)  # deterministic
    assert E.random_ops(path) == []
    assert _temps(root) == []


def test_the_litert_file_needs_only_builtin_ops(exported):
    """No Select TF (Flex) or custom ops: the stock interpreter runs it."""
    from ai_edge_litert.interpreter import Interpreter

    from kerasalex import export as E

    root, _ = exported
    ops = E.graph_ops(root / "tiny.tflite")
    assert ops and all(op.isupper() and not op.startswith(("FLEX", "CUSTOM")) for op in ops), ops
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(ops)
    it = Interpreter(model_path=str(root / "tiny.tflite"))
    it.allocate_tensors()
    d = it.get_input_details()[0]
    assert d["dtype"] == np.uint8 and list(d["shape_signature"]) == [-1, 16, 16, 3]


def test_the_saved_model_signature_takes_uint8_and_returns_probabilities(exported):
    import tensorflow as tf

    root, _ = exported
    fn = tf.saved_model.load(str(root / "tiny_saved_model")).signatures["serving_default"]
    (name, spec), = fn.structured_input_signature[1].items()
    assert name == "image" and spec.dtype == tf.uint8 and tuple(spec.shape) == (None, 16, 16, 3)
    assert list(fn.structured_outputs) == ["probabilities"]
    assert tuple(fn.structured_outputs["probabilities"].shape) == (None, 10)
    assert (root / "tiny_saved_model" / "assets.extra" / "kerasalex.json").is_file()


def test_quantized_litert_reports_the_accuracy_change(exported):
    root, outputs = exported
    out = outputs["int8"]
    assert "Accuracy: .keras" in out and "litert int8" in out and "points)" in out
    assert (root / "tiny_int8.tflite").stat().st_size < (root / "tiny.tflite").stat().st_size
    info = json.loads((root / "tiny_int8.tflite.json").read_text())
    assert info["quantized"] is True and info["check"]["top1_agreement"] >= 0.95


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_predict_runs_each_artifact_like_the_keras_file(exported, fmt, tmp_path):
    from PIL import Image

    root, _ = exported
    x, _ = _digits(3)
    for i, im in enumerate(x):
        Image.fromarray(im).save(tmp_path / f"d{i}.png")
    r_keras = _cli(["predict", root / "tiny.keras", tmp_path, "--json", "--top-k", "2"], tmp_path)
    r_art = _cli(["predict", root / FORMATS[fmt], tmp_path, "--json", "--top-k", "2"], tmp_path)
    assert r_keras.exit_code == 0 and r_art.exit_code == 0, r_art.output
    want, got = json.loads(r_keras.output), json.loads(r_art.output)
    for a, b in zip(want, got):
        assert [t["class"] for t in a["top"]][:1] == [t["class"] for t in b["top"]][:1]
        assert abs(a["top"][0]["probability"] - b["top"][0]["probability"]) < 1e-4


# --------------------------------------------------------------------------
# Bad input: one line, a non-zero exit, no file
# --------------------------------------------------------------------------


def _one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def tiny_copy(exported, tmp_path):
    import shutil

    shutil.copy(exported[0] / "tiny.keras", tmp_path / "tiny.keras")
    return tmp_path / "tiny.keras"


def test_not_a_model(invoke, tmp_path):
    (tmp_path / "notes.keras").write_text("not a zip")
    (tmp_path / "notes.txt").write_text("hello")
    line = _one_line_error(invoke(["export", "notes.keras", "--format", "onnx"], expect_ok=False))
    assert "corrupt or incomplete model file" in line
    line = _one_line_error(invoke(["export", "notes.txt", "--format", "litert"], expect_ok=False))
    assert "expected a .keras model file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.keras", "notes.txt"]


def test_an_existing_output_is_kept_unless_overwrite(invoke, tiny_copy, tmp_path):
    (tmp_path / "tiny.onnx").write_text("mine")
    line = _one_line_error(invoke(["export", "tiny.keras", "--format", "onnx"], expect_ok=False))
    assert "tiny.onnx already exists; pass --overwrite" in line
    assert (tmp_path / "tiny.onnx").read_text() == "mine" and not (tmp_path / "tiny.onnx.json").exists()
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "mine.txt").write_text("x")
    line = _one_line_error(invoke(["export", "tiny.keras", "--format", "saved_model", "-o", "served", "--overwrite"],
                                  expect_ok=False))
    assert "not a SavedModel; refused to replace it" in line
    assert (tmp_path / "served" / "mine.txt").is_file()
    r = invoke(["export", "tiny.keras", "--format", "onnx", "--overwrite"])
    assert "Saved tiny.onnx" in r.output and (tmp_path / "tiny.onnx").stat().st_size > 1000
    assert _temps(tmp_path) == []


@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_a_layer_the_format_cannot_express_is_named(invoke, tmp_path, fmt):
    """Lanczos resizing (ScaleAndTranslate) is neither a LiteRT builtin nor an ONNX op."""
    from kerasalex import files

    files.save_model(build_tiny(10, (16, 16, 3), resize="lanczos3"), tmp_path / "odd.keras")
    line = _one_line_error(invoke(["export", "odd.keras", "--format", fmt], expect_ok=False))
    assert f"{fmt} cannot express layer 'resize_lanczos3' (Resizing)" in line and "ScaleAndTranslate" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.keras"]


@pytest.mark.parametrize("fmt, module", [("onnx", "onnxruntime"), ("onnx", "tf2onnx"), ("litert", "ai_edge_litert")])
def test_missing_packages_name_the_extra(invoke, tiny_copy, tmp_path, monkeypatch, fmt, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    line = _one_line_error(invoke(["export", "tiny.keras", "--format", fmt], expect_ok=False))
    assert f"--format {fmt} needs {module}" in line and 'pip install "kerasalex[export]"' in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.keras"]


def test_a_check_beyond_the_tolerance_writes_nothing(invoke, tiny_copy, tmp_path, monkeypatch):
    from kerasalex import export as E

    monkeypatch.setattr(E, "MAX_PROB_DIFF", -1.0)
    line = _one_line_error(invoke(["export", "tiny.keras", "--format", "litert"], expect_ok=False))
    assert "disagrees with tiny.keras" in line and "nothing written" in line
    line = _one_line_error(invoke(["export", "tiny.keras", "--format", "onnx", "--quantize"], expect_ok=False))
    assert "--quantize applies to --format litert" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.keras"]


def test_mixed_precision_models_are_saved_and_exported_in_float32(tmp_path):
    """A model built under mixed_bfloat16 (as `train --precision auto` does on
    bf16 hardware) is written with float32 policies, so model(x) equals
    predict(x) after loading; a file that kept its mixed policy (earlier
    versions) still exports, computed in float32."""
    import keras

    from kerasalex import export as E
    from kerasalex import files

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_tiny(10, (16, 16, 3))
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    files.save_model(model, tmp_path / "f32.keras", float32=True)
    files.save_model(model, tmp_path / "mixed.keras")
    with zipfile.ZipFile(tmp_path / "f32.keras") as zf:
        assert "mixed_" not in zf.read("config.json").decode()
    loaded = files.load_model(tmp_path / "f32.keras")
    x, _ = _digits(8)
    np.testing.assert_array_equal(np.asarray(loaded(x)), loaded.predict(x, verbose=0))
    figures = E.export_model(tmp_path / "mixed.keras", "litert")
    assert figures["max_prob_diff"] <= E.MAX_PROB_DIFF and figures["top1_agreement"] == 1.0
    np.testing.assert_allclose(E.Artifact(tmp_path / "mixed.tflite").predict(x),
                               keras.ops.softmax(loaded.predict(x, verbose=0)).numpy(), atol=1e-5)


def test_the_builders_preprocessing_exports_to_onnx_on_images_alone(tmp_path):
    """alexnet-torch's and vgg16's normalization are per-channel Rescaling
    layers: a keras.layers.Normalization would leave its mean and variance as
    extra required inputs of the ONNX graph (Keras 3.15 + tf2onnx 1.17)."""
    import keras

    from kerasalex import export as E
    from kerasalex import files, preprocessing
    from kerasalex.models import set_model_info

    for name, normalize in (("imagenet", preprocessing.imagenet_normalize), ("vgg", preprocessing.vgg_preprocess)):
        inputs = preprocessing.image_input()
        x = preprocessing.resize(normalize(inputs), 16, 16)
        x = keras.layers.Dense(3, name="predictions")(keras.layers.Flatten()(x))
        model = set_model_info(keras.Model(inputs, x, name=name), ["a", "b", "c"], (16, 16, 3))
        files.save_model(model, tmp_path / f"{name}.keras")
        figures = E.export_model(tmp_path / f"{name}.keras", "onnx")
        assert figures["max_prob_diff"] <= E.MAX_PROB_DIFF
        import onnxruntime as ort

        assert [i.name for i in ort.InferenceSession(str(tmp_path / f"{name}.onnx")).get_inputs()] == ["image"]


def test_the_repeat_check_compares_calls_of_the_same_shape(monkeypatch, tmp_path):
    """An artifact's outputs may differ in the last bits between batch sizes
    (oneDNN float32 on an AVX2-only CPU: 8 vs 64 images); that is not
    randomness. One whose outputs change between identical calls is refused."""
    from kerasalex import export as E

    x = np.random.default_rng(0).integers(0, 256, (120, 16, 16, 3), dtype=np.uint8)
    base = np.random.default_rng(1).dirichlet(np.ones(10), 120).astype(np.float32)

    class ShapeDependent:  # deterministic per call shape, last-bit differences across shapes
        def __init__(self, *a):
            pass

        def ops(self):
            return []

        def predict(self, x, batch_size=E.BATCH):
            out = []
            for i in range(0, len(x), batch_size):
                n = len(x[i : i + batch_size])
                out.append(base[i : i + n] * np.float32(1 + 1e-6 * (n % 5)))
            return np.concatenate(out)

    class Random(ShapeDependent):
        calls = 0

        def predict(self, x, batch_size=E.BATCH):
            Random.calls += 1
            return super().predict(x, batch_size) * np.float32(1 + 1e-3 * Random.calls)

    monkeypatch.setattr(E, "Artifact", ShapeDependent)
    figures = E._check_artifact(tmp_path / "a", "onnx", x, base, None, False, tmp_path / "m.keras", "120 images")
    assert figures["max_prob_diff"] < 1e-5
    monkeypatch.setattr(E, "Artifact", Random)
    with pytest.raises(E.ExportError, match="gives different outputs for the same images"):
        E._check_artifact(tmp_path / "a", "onnx", x, base, None, False, tmp_path / "m.keras", "120 images")
