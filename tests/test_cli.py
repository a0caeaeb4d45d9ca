"""The CLI end to end through Click's CliRunner: train on digits -> run folder
-> evaluate -> predict; resume; recipes; and the one-line bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import invoke_in, tiny_alexnet_registered

FAST = ["--dataset", "digits", "--image-size", "16", "--limit", "160", "--batch-size", "32", "--precision", "float32"]


invoke = invoke_in  # kerasalex ARGS in-process in cwd; checks the exit code


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run shared by the tests below: 2 epochs on digits (the tiny AlexNet)."""
    cwd = tmp_path_factory.mktemp("work")
    with tiny_alexnet_registered():
        r = invoke(["train", "--arch", "alexnet", *FAST, "--epochs", "2", "--run-dir", "runs/digits"], cwd)
    return cwd, cwd / "runs" / "digits", r.output


def test_help_lists_every_command_without_importing_tensorflow():
    from tests.conftest import run_python

    r = run_python(
        "import sys; sys.argv = ['kerasalex', '--help']\n"
        "from kerasalex.cli import cli\n"
        "cli.main(['--help'], standalone_mode=False); print('tf', 'tensorflow' in sys.modules)"
    )
    assert r.returncode == 0, r.stderr
    for cmd in ("train", "evaluate", "predict", "models"):
        assert cmd in r.stdout
    assert "tf False" in r.stdout


def test_low_memory_mode_picks_the_system_allocator_and_only_when_asked():
    """oneDNN's pool allocator (TensorFlow's default, the fast one) stays unless
    KERASALEX_LOW_MEMORY=1 asks for the system allocator, set before
    TensorFlow is imported; a user's own TF_ONEDNN_USE_SYSTEM_ALLOCATOR holds;
    a bad value is one clear error."""
    from tests.conftest import run_python

    code = (
        "import os, sys; sys.argv = ['kerasalex', '--help']\n"
        "from kerasalex.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print('value', os.environ.get('TF_ONEDNN_USE_SYSTEM_ALLOCATOR'), 'tensorflow' in sys.modules)"
    )
    base = {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": None, "KERASALEX_LOW_MEMORY": None}
    assert "value None False" in run_python(code, env=base).stdout
    assert "value 1 False" in run_python(code, env={**base, "KERASALEX_LOW_MEMORY": "1"}).stdout
    assert "value 0 False" in run_python(
        code, env={"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "0", "KERASALEX_LOW_MEMORY": "1"}).stdout
    bad = run_python(code, env={**base, "KERASALEX_LOW_MEMORY": "lots"})
    assert "KERASALEX_LOW_MEMORY must be 1 or 0" in bad.stdout + bad.stderr
    assert "value None" in bad.stdout


def test_train_writes_the_run_folder(trained):
    cwd, run, output = trained
    assert "Done: 2 epochs" in output
    for name in ("config.json", "history.json", "history.csv", "learning_curves.png", "model.keras", "summary.json"):
        assert (run / name).is_file(), name
    assert not (run / "best.keras").exists()  # only with --save-best
    assert not (run / "resume").exists()  # a finished run leaves no resume state
    assert (cwd / "saved_models" / "digits.keras").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["arch"] == "alexnet" and cfg["config"]["epochs"] == 2 and cfg["config"]["recipe"] == "default"
    assert cfg["resolved"]["precision"] == "float32"
    assert cfg["resolved"]["train_images"] == 160
    assert cfg["resolved"]["class_names"] == [str(i) for i in range(10)]
    from kerasalex.files import load_model

    assert cfg["resolved"]["parameters"] == load_model(run / "model.keras").count_params()
    assert {"tensorflow", "keras", "numpy"} <= set(cfg["versions"])
    assert "cpu" in cfg["device"]


def test_history_has_one_row_per_epoch_with_timings(trained):
    _, run, _ = trained
    rows = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds", "train_seconds", "images_per_second"):
            assert r[key] is not None and np.isfinite(r[key]), key
    csv_lines = (run / "history.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy,learning_rate,epoch_seconds,train_seconds,images_per_second")
    assert len(csv_lines) == 3
    # the learning-rate schedule: warm-up then cosine, recorded per epoch
    assert rows[0]["learning_rate"] != rows[1]["learning_rate"]
    png = Image.open(run / "learning_curves.png")
    assert png.format == "PNG" and png.size[0] > 600


def test_evaluate_writes_report_and_confusion_matrix(trained):
    cwd, run, _ = trained
    r = invoke(["evaluate", run / "model.keras", "--dataset", "digits"], cwd)
    assert "precision    recall  f1-score   support" in r.output
    assert "Test accuracy:" in r.output
    report = json.loads((run / "evaluation.json").read_text())
    assert report["test_images"] == 360
    assert 0.0 <= report["test_accuracy"] <= 1.0
    assert set(report["per_class"]) == {str(i) for i in range(10)}
    assert np.array(report["confusion_matrix"]).sum() == 360
    # 4 digits, as the study
    assert "0." in (run / "classification_report.txt").read_text()
    assert Image.open(run / "confusion_matrix.png").format == "PNG"
    assert Image.open(run / "test_predictions.png").format == "PNG"


def test_evaluate_a_copied_model_reports_beside_it(trained, tmp_path):
    """A published copy reports into its run folder (its kerasalex.json names
    it); a model whose run folder is gone, beside itself."""
    import shutil

    cwd, run, _ = trained
    r = invoke(["evaluate", "saved_models/digits.keras", "--dataset", "digits", "--limit", "50"], cwd)
    assert "(a stratified sample of 50 of 360 images" in r.output
    assert json.loads((run / "evaluation.json").read_text())["test_images"] == 50
    assert not (cwd / "saved_models" / "digits-eval").exists()
    shutil.copy(cwd / "saved_models" / "digits.keras", tmp_path / "elsewhere.keras")
    moved = tmp_path / "moved-run"
    shutil.move(run, moved)
    try:
        r = invoke(["evaluate", tmp_path / "elsewhere.keras", "--limit", "40"], cwd)
    finally:
        shutil.move(moved, run)
    assert (tmp_path / "elsewhere-eval" / "evaluation.json").is_file()


def test_predict_top_k_and_plot(trained, tmp_path):
    cwd, run, _ = trained
    img = tmp_path / "seven.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(img)
    gray = tmp_path / "gray.png"
    Image.new("L", (8, 8), 200).save(gray)
    r = invoke(["predict", run / "model.keras", img, gray, "--top-k", "3", "--plot", tmp_path / "p.png"], cwd)
    lines = [l for l in r.output.splitlines() if l.startswith(str(tmp_path))]
    assert len(lines) == 2
    assert lines[0].count("%") == 3
    assert Image.open(tmp_path / "p.png").format == "PNG"
    r = invoke(["predict", run / "model.keras", img, "--json", "--top-k", "2"], cwd)
    out = json.loads(r.output)
    assert len(out[0]["top"]) == 2
    probs = [t["probability"] for t in out[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_a_raw_8x8_digit_png_is_read_as_training_read_digits(trained, tmp_path):
    """digits are upscaled nearest-neighbour for training; the model records
    it and predict applies it to an 8x8 PNG (not bilinear)."""
    from sklearn.datasets import load_digits

    from kerasalex.files import read_model_metadata

    cwd, run, _ = trained
    pre = read_model_metadata(run / "model.keras")["preprocessing"]
    assert (pre["interpolation"], pre["resize"], pre["image_size"]) == ("nearest", "squash", 16)
    raw = np.clip(np.round(load_digits().images[0] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    Image.fromarray(raw, "L").save(tmp_path / "raw8.png")
    Image.fromarray(np.repeat(np.repeat(raw, 2, 0), 2, 1), "L").save(tmp_path / "blocks16.png")  # training's 16 px image
    r = invoke(["predict", run / "model.keras", tmp_path / "raw8.png", tmp_path / "blocks16.png", "--json"], cwd)
    out = json.loads(r.output)
    assert out[0]["top"] == out[1]["top"]


def test_recipe_study_is_the_studys(tmp_path):
    from kerasalex.config import resolve_config

    c = resolve_config("alexnet", "study")
    assert (c.optimizer, c.lr, c.momentum, c.batch_size, c.epochs, c.augment, c.dropout) == ("sgd", 0.001, 0.9, 30, 20, False, 0.0)
    assert (c.schedule, c.weight_decay, c.label_smoothing, c.nesterov) == ("constant", 0.0, 0.0, False)
    # an option given on the command line wins over the recipe; unset ones do not
    c = resolve_config("alexnet", "study", epochs=3, lr=None)
    assert c.epochs == 3 and c.lr == 0.001


def test_train_study_recipe_records_resolved_options(tmp_path, tiny_alexnet):
    out = invoke(["train", "--recipe", "study", *FAST, "--limit", "60", "--epochs", "1", "--run-dir", "r"], tmp_path).output
    assert "Done: 1 epoch in " in out  # not "1 epochs"
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert cfg["batch_size"] == 32  # given
    assert cfg["lr"] == 0.001 and cfg["augment"] is False and cfg["recipe"] == "study"


def test_hparams_file_feeds_train(tmp_path, tiny_alexnet):
    (tmp_path / "best.json").write_text(json.dumps({"arch": "alexnet", "lr": 0.003, "optimizer": "adam", "dropout": 0.25}))
    invoke(["train", *FAST, "--limit", "60", "--epochs", "1", "--hparams", "best.json", "--run-dir", "h"], tmp_path)
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())["config"]
    assert (cfg["lr"], cfg["optimizer"], cfg["dropout"]) == (0.003, "adam", 0.25)


def test_hparams_file_dataset_holds_unless_the_command_line_names_one(tmp_path, tiny_alexnet):
    hp = {"arch": "alexnet", "dataset": "digits", "image_size": 16, "limit": 40, "batch_size": 20,
          "epochs": 1, "precision": "float32"}
    (tmp_path / "best.json").write_text(json.dumps(hp))
    invoke(["train", "--hparams", "best.json", "--run-dir", "f", "-o", "f.keras"], tmp_path)
    assert json.loads((tmp_path / "f" / "config.json").read_text())["config"]["dataset"] == "digits"
    # An explicit --dataset wins over the file (a missing folder: refused before training).
    r = invoke(["train", "--hparams", "best.json", "--dataset", "no-such-folder", "--run-dir", "g"], tmp_path, expect=None)
    assert r.exit_code != 0 and "no-such-folder" in r.output


def test_resume_continues_from_the_last_finished_epoch(tmp_path, monkeypatch, tiny_alexnet):
    from kerasalex import callbacks

    real = callbacks.GracefulStop.on_epoch_end

    def die_after_first_epoch(self, epoch, logs=None):
        if epoch == 0:
            self.received = 15  # as if SIGTERM arrived during epoch 1
        return real(self, epoch, logs)

    monkeypatch.setattr(callbacks.GracefulStop, "on_epoch_end", die_after_first_epoch)
    r = invoke(["train", *FAST, "--limit", "64", "--epochs", "3", "--run-dir", "run"], tmp_path, expect=143)
    assert "Resume with: kerasalex train --resume --run-dir run" in r.output
    state = json.loads((tmp_path / "run" / "resume" / "state.json").read_text())
    assert state["epochs_done"] == 1
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "saved_models").exists()
    monkeypatch.setattr(callbacks.GracefulStop, "on_epoch_end", real)

    r = invoke(["train", "--resume", "--run-dir", "run"], tmp_path)
    assert "resuming run after epoch 1" in r.output
    rows = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert (tmp_path / "saved_models" / "run.keras").is_file()
    # finished: resuming again is refused with a clear line
    r = invoke(["train", "--resume", "--run-dir", "run"], tmp_path, expect=1)
    assert "already finished" in r.output


def test_run_folder_is_never_overwritten(trained):
    cwd, _, _ = trained
    r = invoke(["train", *FAST, "--run-dir", "runs/digits"], cwd, expect=1)
    assert "already holds a run" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "no/such/folder"], "neither a known name"),
        (["train", "--arch", "resnet", "--dataset", "digits"], "unknown architecture 'resnet'"),
        (["train", "--dataset", "cifar10", "--data-dir", "missing.tar.gz"], "--data-dir not found"),
        (["train", "--dataset", "digits", "--val-split", "1.5"], "val_split must be in [0, 1)"),
        (["train", "--dataset", "digits", "--hparams", "nope.json"], "hyperparameter file not found"),
        (["train", "--resume"], "no unfinished run"),
        (["evaluate", "missing.keras", "--dataset", "digits"], "model file not found: missing.keras"),
        (["predict", "missing.keras", "x.png"], "model file not found"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    r = invoke(args, tmp_path, expect=None)
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output
    assert len([l for l in r.output.strip().splitlines() if l.startswith("Error")]) == 1


def test_evaluate_refuses_a_file_that_is_not_a_model(tmp_path):
    (tmp_path / "fake.keras").write_bytes(b"hello")
    r = invoke(["evaluate", "fake.keras", "--dataset", "digits"], tmp_path, expect=1)
    assert "corrupt or incomplete model file" in r.output


def test_evaluate_refuses_other_classes_before_any_batch(trained, tmp_path):
    cwd, run, _ = trained
    for c in ("cat", "dog"):
        (tmp_path / "pets" / c).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "pets" / c / "a.png")
    r = invoke(["evaluate", run / "model.keras", "--dataset", tmp_path / "pets"], cwd, expect=1)
    assert "trained on classes" in r.output and "['cat', 'dog']" in r.output
    assert not (tmp_path / "pets" / "evaluation.json").exists()


def test_predict_refuses_a_corrupt_image(trained, tmp_path):
    cwd, run, _ = trained
    (tmp_path / "bad.png").write_text("not an image")
    r = invoke(["predict", run / "model.keras", tmp_path / "bad.png"], cwd, expect=1)
    assert "not a readable image" in r.output


def test_python_dash_m_entry_point(tmp_path):
    from tests.conftest import run_kerasalex

    r = run_kerasalex(["models"], cwd=tmp_path)
    assert r.returncode == 0 and "alexnet" in r.stdout


def test_low_memory_cpu_training_runs_one_op_at_a_time(tmp_path):
    """By default TensorFlow keeps its inter-op threads and oneDNN pool (speed);
    KERASALEX_LOW_MEMORY=1 on a CPU-only machine limits inter-op threads to 1
    and uses the system allocator, both recorded in config.json;
    TF_NUM_INTEROP_THREADS, when set, is left to TensorFlow."""
    from tests.conftest import run_tiny_kerasalex

    args = ["train", *FAST, "--limit", "40", "--batch-size", "20", "--epochs", "1"]
    env = {"TF_NUM_INTEROP_THREADS": None, "CUDA_VISIBLE_DEVICES": "-1",
           "KERASALEX_LOW_MEMORY": None, "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": None}
    for name, extra, threads, allocator in (
        ("default", {}, 0, "pool"),
        ("low", {"KERASALEX_LOW_MEMORY": "1"}, 1, "system"),
        ("told", {"KERASALEX_LOW_MEMORY": "1", "TF_NUM_INTEROP_THREADS": "2"}, 0, "system"),
    ):
        r = run_tiny_kerasalex([*args, "--run-dir", name, "-o", f"{name}.keras"], cwd=tmp_path, env={**env, **extra})
        assert r.returncode == 0, r.stderr[-2000:]
        resolved = json.loads((tmp_path / name / "config.json").read_text())["resolved"]
        assert (resolved["inter_op_threads"], resolved["onednn_allocator"]) == (threads, allocator), name


@pytest.mark.slow
@pytest.mark.realdata
def test_real_cifar10_jpegs_train_briefly_and_beat_chance(tmp_path, monkeypatch):
    """Trains on a slice of the shared CIFAR-10 JPEGs and evaluates on *other* images of it."""
    from tests.conftest import cifar_jpeg_dir

    src = cifar_jpeg_dir()
    if src is None:
        pytest.skip("set KERASALEX_CIFAR10_JPEG to the extracted shared CIFAR-10 train folder")
    monkeypatch.setenv("KERASALEX_CACHE_DIR", str(tmp_path / "cache"))
    for c in sorted(p.name for p in src.iterdir() if p.is_dir()):
        files = sorted((src / c).glob("*.jpg"))
        for split, chunk in (("train", files[:300]), ("test", files[-100:])):
            (tmp_path / "cifar" / split / c).mkdir(parents=True)
            for f in chunk:
                (tmp_path / "cifar" / split / c / f.name).symlink_to(f)
    invoke(["train", "--dataset", tmp_path / "cifar", "--epochs", "6", "--optimizer", "adam", "--lr", "3e-4",
            "--no-augment", "--dropout", "0", "--label-smoothing", "0", "--schedule", "constant", "--batch-size", "64",
            "--run-dir", "real"], tmp_path)
    invoke(["evaluate", "real/model.keras", "--dataset", tmp_path / "cifar"], tmp_path)
    acc = json.loads((tmp_path / "real" / "evaluation.json").read_text())["test_accuracy"]
    assert acc > 0.25, acc  # chance is 0.10


def test_evaluate_a_folder_without_test_split_uses_the_held_out_slice(tmp_path, tiny_alexnet):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "ds" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "ds" / c / f"{i}.png")
    invoke(["train", "--dataset", "ds", "--image-size", "16", "--epochs", "1", "--batch-size", "8",
            "--val-split", "0.2", "--precision", "float32", "--run-dir", "r"], tmp_path)
    r = invoke(["evaluate", "r/model.keras", "--dataset", "ds"], tmp_path)
    assert "held-out validation slice (val_split=0.2)" in r.output
    assert "Held-out accuracy:" in r.output and "Test accuracy" not in r.output
    report = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    assert report["split"] == "val" and report["test_images"] == 4  # 20% of 20, never trained on
