"""tf.distribute: ``--distribute none|mirrored|multi-worker``.

The training runs are subprocesses (logical CPU devices and the collective
runtime must be set up before TensorFlow initializes) training a tiny model,
registered for the run, on 200 digits.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# Registers the tiny architecture below, then runs the real command line.
DRIVER = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from kerasalex.models import ARCHITECTURES, Architecture
ARCHITECTURES["tiny"] = Architecture("tiny", "test_distribute:build_tiny", "a tiny test model", image_size=16, min_image_size=8)
from kerasalex.cli import main
sys.exit(main(sys.argv[1:]))
"""
TRAIN = ["train", "--arch", "tiny", "--dataset", "digits", "--limit", "200", "--epochs", "2", "--batch-size", "30",
         "--precision", "float32", "--image-size", "16"]


def build_tiny(num_classes=10, input_shape=(16, 16, 3), class_names=None, augment=False, dropout=0.0, seed=None):
    """A 17k-parameter convnet with kerasalex's input/output conventions."""
    import keras
    from keras import layers

    from kerasalex import preprocessing

    inputs = preprocessing.image_input(input_shape)
    x = preprocessing.augment(inputs, augment, seed)
    x = preprocessing.rescale_symmetric(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(x)
    x = layers.MaxPooling2D(2, name="block1_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="fc1_dropout")(x)
    x = layers.Dense(32, activation="relu", name="fc1")(x)
    logits = layers.Dense(num_classes, name="predictions", dtype="float32")(x)
    return keras.Model(inputs, preprocessing.class_names_head(logits, class_names, num_classes), name="tiny")


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "KERASALEX_CPU_DEVICES", "KERASALEX_WORKER_DUMP")}
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", TMPDIR=str(scratch), CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


def _kerasalex(args, cwd, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _weights(path: Path):
    import keras

    import kerasalex.preprocessing  # noqa: F401  (registers the layers)

    return keras.saving.load_model(path, compile=False).get_weights()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# TF_CONFIG, chief, options (no TensorFlow)
# --------------------------------------------------------------------------


def _tf_config(monkeypatch, cluster, ttype, index):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": ttype, "index": index}}))


def test_is_chief(monkeypatch):
    from kerasalex.distribute import is_chief

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief() and is_chief("multi-worker")
    workers = {"worker": ["a:1", "b:1"]}
    _tf_config(monkeypatch, workers, "worker", 0)
    assert is_chief("multi-worker")
    _tf_config(monkeypatch, workers, "worker", 1)
    assert not is_chief("multi-worker") and not is_chief()
    # One process owns its outputs whatever TF_CONFIG says.
    assert is_chief("none") and is_chief("mirrored")
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    _tf_config(monkeypatch, with_chief, "worker", 0)
    assert not is_chief("multi-worker")
    _tf_config(monkeypatch, with_chief, "chief", 0)
    assert is_chief("multi-worker")


@pytest.mark.parametrize(
    "raw, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
        ('{"cluster": {"worker": ["a:1"]}}', "needs a 'task'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "is not in the cluster"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "x"}}', "must be an integer"),
        ('{"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "ps", "index": 0}}', "'chief' or 'worker'"),
    ],
)
def test_bad_tf_config_is_one_clear_error(monkeypatch, raw, message):
    from kerasalex.distribute import make_strategy

    if raw is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ValueError, match=message):
        make_strategy("multi-worker")


def test_bad_options(monkeypatch):
    from kerasalex.distribute import configure_cpu_devices, describe_strategy, make_strategy

    with pytest.raises(ValueError, match="distribute must be one of"):
        make_strategy("ring")
    for bad in ("two", "0", "-1"):
        with pytest.raises(ValueError, match="KERASALEX_CPU_DEVICES must be a positive integer"):
            configure_cpu_devices(bad)
    assert configure_cpu_devices("1") == 1

    class Fake:
        num_replicas_in_sync = 4

    with pytest.raises(ValueError, match="global batch and must be at least the 4 replicas"):
        describe_strategy(Fake(), 3)
    assert "global batch 128 = 32 per replica" in describe_strategy(Fake(), 128)


def test_worker_output_path(monkeypatch, tmp_path):
    from kerasalex.distribute import worker_output_path

    monkeypatch.delenv("KERASALEX_WORKER_DUMP", raising=False)
    assert worker_output_path(tmp_path) == tmp_path / "final.keras"
    _tf_config(monkeypatch, {"worker": ["a:1", "b:1"]}, "worker", 1)
    monkeypatch.setenv("KERASALEX_WORKER_DUMP", str(tmp_path / "dump"))
    assert worker_output_path(tmp_path) == tmp_path / "dump" / "worker-1.keras"


def test_cli_multi_worker_without_tf_config_fails_cleanly(invoke, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = invoke(["train", "--dataset", "digits", "--limit", "20", "--epochs", "1", "--distribute", "multi-worker"],
                    expect_ok=False)
    assert result.exit_code != 0
    assert "TF_CONFIG" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "saved_models").exists()


def test_cli_vgg16_under_multi_worker_is_refused_in_one_line(invoke, tmp_path):
    result = invoke(["train", "--arch", "vgg16", "--base-weights", "none", "--dataset", "digits", "--limit", "20",
                     "--epochs", "1", "--distribute", "multi-worker"], expect_ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: --arch vgg16 does not train under --distribute multi-worker yet (its cached-feature head stage "
        "fails under the strategy); use --distribute mirrored on one machine")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "saved_models").exists()


def test_startup_line_says_whether_a_gpu_is_visible(tmp_path):
    env = _env(tmp_path, KERASALEX_SHOW_DEVICE="1")
    shown = subprocess.run([sys.executable, "-m", "kerasalex", "models"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "[kerasalex] no GPU visible, training runs on the CPU" in shown.stderr
    helped = subprocess.run([sys.executable, "-m", "kerasalex", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "GPU visible" not in helped.stderr


# --------------------------------------------------------------------------
# Precision and XLA per device
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cc, expected", [((9, 0), "mixed_bfloat16"), ((8, 0), "mixed_bfloat16"), ((7, 5), "mixed_float16"),
                     ((7, 0), "mixed_float16"), ((6, 1), "float32"), (None, "float32")],
)
def test_auto_precision_per_gpu(monkeypatch, cc, expected):
    import tensorflow as tf

    from kerasalex import training

    monkeypatch.setattr(training, "gpu_devices", lambda: ["GPU:0"])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: {"compute_capability": cc})
    assert training.resolve_precision("auto") == expected
    assert training.resolve_precision("float32") == "float32"


def test_auto_precision_on_cpus(monkeypatch):
    from kerasalex import training

    monkeypatch.setattr(training, "gpu_devices", lambda: [])
    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert training.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2"})
    assert training.resolve_precision("auto") == "float32"


@pytest.mark.parametrize(
    "precision, jit, augment, jit_used, loss_scale",
    [
        ("mixed_float16", "auto", False, None, True),  # auto: XLA on GPUs only; fp16 gets loss scaling
        ("mixed_bfloat16", "on", False, True, False),
        ("float32", "on", True, False, False),  # RandomTranslation has no XLA kernel: Keras turns it off
        ("float32", "off", False, False, False),
    ],
)
def test_compile_resolves_jit_and_loss_scaling(precision, jit, augment, jit_used, loss_scale):
    import warnings

    import keras

    from kerasalex.config import resolve_config
    from kerasalex.training import compile_model, set_precision

    before = keras.mixed_precision.global_policy()
    try:
        set_precision(precision)
        model = build_tiny(augment=augment, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile_model(model, resolve_config("alexnet", precision=precision, jit_compile=jit, augment=augment), 10)
        if jit_used is None:
            import tensorflow as tf

            jit_used = bool(tf.config.list_physical_devices("GPU"))
        assert model.jit_compile is jit_used
        assert (type(model.optimizer).__name__ == "LossScaleOptimizer") is loss_scale
        assert model.dtype_policy.name == precision and model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(before)


# --------------------------------------------------------------------------
# Training: mirrored over two logical CPUs, two workers on 127.0.0.1
# --------------------------------------------------------------------------


def test_mirrored_two_cpu_replicas_match_one_device(tmp_path):
    """Two replicas over a global batch of 30 take the same steps as one
    device over the same 30 images (no dropout/augmentation, whose random
    draws differ per replica); validation's first batch (23 images) splits
    unevenly, 12/11."""
    import numpy as np

    env = _env(tmp_path, KERASALEX_CPU_DEVICES="2", TF_ENABLE_ONEDNN_OPTS="0")
    common = TRAIN + ["--no-augment", "--dropout", "0"]
    runs, stdout = {}, {}
    for mode in ("mirrored", "none"):
        out = tmp_path / f"{mode}.keras"
        r = _kerasalex(common + ["--distribute", mode, "--run-dir", tmp_path / "runs" / mode, "--output", out], tmp_path, env)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        runs[mode], stdout[mode] = out, r.stdout
    assert "MirroredStrategy: 2 replica(s) in sync on 1 worker(s); global batch 30 = 15 per replica" in stdout["mirrored"]
    assert "replica(s)" not in stdout["none"]
    history = json.loads((tmp_path / "runs" / "mirrored" / "history.json").read_text())
    assert len(history) == 2 and all(np.isfinite(h["val_accuracy"]) for h in history)
    for a, b in zip(_weights(runs["mirrored"]), _weights(runs["none"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_mirrored_default_recipe_trains_and_saves_once(tmp_path):
    """Augmentation + dropout (SeedGenerator state under a strategy), the
    custom callbacks, best/resume checkpoints."""
    env = _env(tmp_path, KERASALEX_CPU_DEVICES="2", TF_ENABLE_ONEDNN_OPTS="0")
    r = _kerasalex(TRAIN + ["--distribute", "mirrored", "--dropout", "0.5", "--run-dir", "runs/m"], tmp_path, env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "MirroredStrategy: 2 replica(s)" in r.stdout
    run = tmp_path / "runs" / "m"
    assert {"model.keras", "summary.json", "history.json", "config.json"} <= {p.name for p in run.iterdir()}
    assert [p.name for p in (tmp_path / "saved_models").iterdir()] == ["m.keras"]
    assert len(_weights(tmp_path / "saved_models" / "m.keras")) == 6


def _image_folder(root: Path, classes: int = 10, per_class: int = 20) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("source", ["digits", "folder"])
def test_multi_worker_two_processes(tmp_path, source):
    """Two workers on 127.0.0.1: both finish, only the chief writes the run
    folder and the model, the workers end with the same weights, and the
    non-chief's scratch folder is gone. Each worker gathers only its half of
    every batch; from an image folder (kept on disk by default under
    multi-worker) it also reads only that half from the decode cache."""
    import re

    import numpy as np

    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    dump = tmp_path / "dump"
    args = TRAIN + ["--distribute", "multi-worker", "--augment", "--dropout", "0.5", "--run-dir", "runs/mw",
                    "--output", "saved_models/mw.keras"]
    if source == "folder":
        args[args.index("digits")] = str(_image_folder(tmp_path / "images"))
        args.remove("--limit")
        args.remove("200")
    procs, logs = [], []
    t0 = time.perf_counter()
    try:
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            env = _env(tmp_path, TF_CONFIG=tf_config, KERASALEX_WORKER_DUMP=str(dump),
                       KERASALEX_CACHE_DIR=str(tmp_path / "cache"))
            log = open(tmp_path / f"worker{index}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, args)], cwd=tmp_path, env=env,
                                          stdout=log, stderr=subprocess.STDOUT, text=True))
        deadline = time.monotonic() + 240
        for p in procs:
            p.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    seconds = time.perf_counter() - t0
    out = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in out)
    print(f"\nmulti-worker: 2 workers x 2 epochs of 200 digits in {seconds:.1f}s (wall, both processes)")
    assert all("CollectiveAllReduceStrategy: 2 replica(s) in sync on 2 worker(s)" in o for o in out)
    # Each worker gathers its 15 of every global batch of 30 (both epochs)
    # and its half of each validation batch; the two halves make the whole.
    pattern = (r"this worker gathered (\d+) training images over 2 epoch\(s\) of (\d+) and (\d+) validation images "
               r"over as many validation passes of (\d+)(?:; (\d+) images \(training and validation\) read from the "
               r"decode cache)?")
    found = [re.search(pattern, o) for o in out]
    assert all(found), "\n\n".join(o[-3000:] for o in out)
    n_train, n_val = int(found[0].group(2)), int(found[0].group(4))
    assert (n_train, n_val) == ((200, 23) if source == "digits" else (180, 20))
    assert [int(m.group(1)) for m in found] == [n_train, n_train]  # 2 epochs x half of each batch
    assert sum(int(m.group(3)) for m in found) == 2 * n_val
    for m in found:
        if source == "folder":  # read from disk: its part of the batches and of the validation passes, no more
            assert int(m.group(5)) == int(m.group(1)) + int(m.group(3))
        else:
            assert m.group(5) is None

    # The chief's outputs, once.
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["mw"]
    assert [p.name for p in (tmp_path / "saved_models").iterdir()] == ["mw.keras"]
    assert (tmp_path / "runs" / "mw" / "summary.json").exists()
    assert len(json.loads((tmp_path / "runs" / "mw" / "history.json").read_text())) == 2
    # The other worker kept nothing but the model it was asked to dump.
    assert [p.name for p in dump.iterdir()] == ["worker-1.keras"]
    assert list((tmp_path / "tmp").glob("kerasalex-worker-*")) == []
    for a, b in zip(_weights(tmp_path / "saved_models" / "mw.keras"), _weights(dump / "worker-1.keras")):
        np.testing.assert_array_equal(a, b)
