"""A new user's first hour: every option, default and message means what a
user reads. Each test is one case of that fault kind (see the README's
"First hour" notes): --epochs for a two-stage model, --limit 0, what a
failed start leaves, what evaluate defaults to, what disk a run uses, the
start-up lines, stderr, Ctrl-C, cut errors, tables and plots."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kerasalex.cli import cli
from kerasalex.config import resolve_config, split_epochs
from tests.conftest import invoke_in, run_kerasalex, run_python, tiny_alexnet_registered, tiny_command

FAST = ["--dataset", "digits", "--image-size", "16", "--limit", "160", "--batch-size", "32", "--precision", "float32"]
NOISE = ("Could not find cuda drivers", "cuInit", "absl::InitializeLog", "cudart_stub")


invoke = invoke_in  # kerasalex ARGS in-process in cwd; checks the exit code


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 1-epoch digits run (the tiny AlexNet) with --save-best, published to saved_models/r.keras."""
    cwd = tmp_path_factory.mktemp("first_hour")
    with tiny_alexnet_registered():
        r = invoke(["train", "--arch", "alexnet", *FAST, "--epochs", "1", "--save-best", "--run-dir", "runs/r",
                    "-o", "saved_models/r.keras"], cwd)
    return cwd, cwd / "runs" / "r", r.output


# --------------------------------------------------------------------------
# Options and defaults
# --------------------------------------------------------------------------


def test_epochs_is_the_runs_total_for_a_two_stage_model():
    """vgg16's recipe is 10 head + 8 fine-tuning epochs; --epochs N means N in all."""
    def total(c):
        return c.epochs + c.fine_tune_epochs

    assert (resolve_config("vgg16").epochs, resolve_config("vgg16").fine_tune_epochs) == (10, 8)
    one = resolve_config("vgg16", epochs=1)
    assert (one.epochs, one.fine_tune_epochs) == (1, 0)
    assert split_epochs(9, 10, 8) == (5, 4) and split_epochs(18, 10, 8) == (10, 8)
    for n in range(1, 30):
        head, fine = split_epochs(n, 10, 8)
        assert head + fine == n and head >= 1 and fine >= 0
    both = resolve_config("vgg16", epochs=5, fine_tune_epochs=2)
    assert (both.epochs, both.fine_tune_epochs) == (3, 2)
    with pytest.raises(ValueError, match="must exceed --fine-tune-epochs. Received: epochs=2, fine_tune_epochs=2"):
        resolve_config("vgg16", epochs=2, fine_tune_epochs=2)
    # The study resolves every model's configuration the same way, so
    # `study --epochs 1` caps the fine-tuning stage too.
    study = resolve_config("vgg16", "default", dataset="digits", data_dir=None, epochs=1, limit=None,
                           image_size=None, batch_size=None, precision=None, seed=None, val_split=None)
    assert total(study) == 1
    assert resolve_config("alexnet", epochs=3).epochs == 3


def test_vgg16_trains_the_epochs_it_was_given_and_prints_the_plan(tmp_path, monkeypatch):
    from kerasalex.models import vgg16 as V

    monkeypatch.setattr(V, "build_vgg16_transfer", functools.partial(V.build_vgg16_transfer, input_size=32))
    r = invoke(["train", "--arch", "vgg16", "--dataset", "digits", "--limit", "48", "--epochs", "3",
                "--batch-size", "16", "--base-weights", "none", "--precision", "float32", "--image-size", "32",
                "--run-dir", "run", "-o", "m.keras"], tmp_path)
    assert "plan: 3 epoch(s) = 2 head + 1 fine-tuning" in r.output
    assert "Done: 3 epochs" in r.output
    rows = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_limit_zero_unsets_a_files_limit_and_one_is_refused(tmp_path):
    assert resolve_config("alexnet", hparams={"limit": 334}).limit == 334
    assert resolve_config("alexnet", hparams={"limit": 334}, limit=0).limit is None
    r = invoke(["train", *FAST[:-6], "--limit", "1"], tmp_path, expect=2)
    assert "0 (no limit) or at least 2" in r.output
    assert "0 = all" in " ".join(invoke(["train", "--help"], tmp_path).output.split())


def test_resume_names_the_options_it_ignores(tmp_path):
    r = invoke(["train", "--resume", "--run-dir", "gone", "--epochs", "50", "--lr", "0.1", "-o", "x.keras"], tmp_path,
               expect=1)
    assert "--resume continues the run with its own saved options; ignored: --epochs, --lr" in r.output
    assert "--output" not in r.output.splitlines()[0]


def test_done_line_without_a_validation_split_says_so(tmp_path, tiny_alexnet):
    r = invoke(["train", "--arch", "alexnet", *FAST[:-4], "--limit", "64", "--batch-size", "32", "--precision",
                "float32", "--epochs", "1", "--val-split", "0", "--run-dir", "run", "-o", "m.keras"], tmp_path)
    done = next(line for line in r.output.splitlines() if line.startswith("Done:"))
    assert "no validation" in done and "--val-split 0" in done and "nan" not in done


def test_a_failed_start_leaves_no_run_folder(tmp_path, monkeypatch):
    """A typo in --dataset and an offline CIFAR download: one clear line, no
    empty runs/<arch>-<dataset>-<time>/ behind."""
    r = invoke(["train", "--dataset", "digitz", "--epochs", "1"], tmp_path, expect=1)
    assert "digitz" in r.output
    assert not (tmp_path / "runs").exists()

    import keras

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: "
                        "None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    (tmp_path / "keep").mkdir()
    r = invoke(["train", "--epochs", "1", "--run-dir", "keep/deeper/run"], tmp_path, expect=1)
    line = r.output.strip().splitlines()[-1]
    assert "could not download cifar10" in line and "Temporary failure in name resolution" in line
    assert "--data-dir" in line
    assert (tmp_path / "keep").is_dir() and not (tmp_path / "keep" / "deeper").exists()


def test_only_the_final_model_is_kept_unless_save_best(run, tmp_path, tiny_alexnet):
    cwd, run_dir, output = run
    assert (run_dir / "best.keras").is_file()  # --save-best asked for it
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_model"] == "runs/r/best.keras"
    invoke(["train", "--arch", "alexnet", *FAST[:-4], "--limit", "64", "--batch-size", "32", "--precision", "float32",
            "--epochs", "1", "--run-dir", "plain", "-o", "plain.keras"], tmp_path)
    assert (tmp_path / "plain" / "model.keras").is_file() and not (tmp_path / "plain" / "best.keras").exists()
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert {"studies/", "comparison/", "runs/", "tuning/"} <= set(ignored)


def test_a_run_prints_its_precision_and_why(run, monkeypatch):
    from kerasalex import training as T

    _, _, output = run
    assert "precision float32 (as --precision asked)" in output
    monkeypatch.setattr(T, "gpu_devices", lambda: [])
    monkeypatch.setattr(T, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    line = T.explain_precision("auto", T.resolve_precision("auto"), "alexnet")
    assert line.startswith("precision float32 (auto: this CPU has no bfloat16 units")
    assert "expect ~137 images/s" in line and "benchmarks/bench_gpu.py" in line and "(AVX512-BF16)" in line
    # float32 without AVX-512 (an AVX2-only CPU): the figure measured on one, not the AVX-512 machine's
    monkeypatch.setattr(T, "cpu_flags", lambda: {"avx2", "fma"})
    line = T.explain_precision("auto", T.resolve_precision("auto"), "alexnet")
    from kerasalex.models import ARCHITECTURES

    speed, _ = ARCHITECTURES["alexnet"].cpu_images_per_second["float32:avx2"]
    assert f"expect ~{speed:.0f} images/s" in line and "(AVX2, no AVX-512)" in line
    assert speed < 137
    monkeypatch.setattr(T, "cpu_flags", lambda: {"avx512_bf16"})
    line = T.explain_precision("auto", T.resolve_precision("auto"), "alexnet")
    assert line.startswith("precision mixed_bfloat16 (auto: this CPU has bfloat16 units, avx512_bf16)")
    assert "expect ~226 images/s" in line and "fewer at" not in line
    # The figure is batch 128's: a smaller batch (the default recipe's 64) is told to expect fewer.
    line = T.explain_precision("auto", T.resolve_precision("auto"), "alexnet", batch_size=64)
    assert line.endswith("at batch 128 and 32 px (measured on 2 vCPUs of an AMD EPYC (AVX512-BF16): the README's "
                         "30-epoch batch-128 CIFAR-10 run), fewer at a smaller batch (64: 6-13% fewer, benchmarks/bench_batch_speed.py)")
    assert "fewer at" not in T.explain_precision("auto", T.resolve_precision("auto"), "alexnet", batch_size=128)
    # A CPU with AMX tile units (Intel Xeon): bfloat16 there is the AMX machine's figure, not the AMD one's
    monkeypatch.setattr(T, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    assert T.cpu_figure_key("mixed_bfloat16") == "mixed_bfloat16:amx" and T.cpu_figure_key("float32") == "float32"
    line = T.explain_precision("auto", T.resolve_precision("auto"), "alexnet", batch_size=64)
    assert line.startswith("precision mixed_bfloat16 (auto: this CPU has bfloat16 units, avx512_bf16 + amx_bf16)")
    amx, _ = ARCHITECTURES["alexnet"].cpu_images_per_second["mixed_bfloat16:amx"]
    assert f"expect ~{amx:.0f} images/s" in line and "(measured on 2 vCPUs of an Intel Xeon (AMX-BF16)" in line
    assert amx > 226 and line.endswith('(64: ~20% fewer, paired runs, README "Benchmarks")')
    for key in ARCHITECTURES["alexnet"].cpu_images_per_second:  # every figure names its machine
        assert T.measured_on(key).startswith("2 vCPUs of an ")
    assert "expect" not in T.explain_precision("auto", "float32", "vgg16")  # no figure measured: none quoted


# --------------------------------------------------------------------------
# evaluate: the model's own dataset, its run folder
# --------------------------------------------------------------------------


def test_evaluate_a_published_copy_uses_its_dataset_and_run_folder(run):
    cwd, run_dir, _ = run
    r = invoke(["evaluate", "saved_models/r.keras", "--limit", "50"], cwd)
    assert "dataset: digits (the model's own" in r.output
    assert "training's val_loss included label smoothing 0.1" in r.output
    assert (run_dir / "evaluation.json").is_file()
    assert not (cwd / "saved_models" / "r-eval").exists()
    text = (run_dir / "evaluation.json").read_text()
    report = json.loads(text)
    assert report["test_images"] == 50
    assert all(isinstance(c["support"], int) for c in report["per_class"].values())
    assert sum(c["support"] for c in report["per_class"].values()) == 50
    # `compare runs/` now finds the evaluation.
    r = invoke(["compare", "runs", "-o", "cmp"], cwd)
    assert "Not evaluated" not in r.output and "missing" not in r.output


def test_evaluate_without_dataset_on_a_model_that_does_not_say(run, tmp_path):
    cwd, run_dir, _ = run
    bare = tmp_path / "bare.keras"
    with zipfile.ZipFile(run_dir / "model.keras") as src, zipfile.ZipFile(bare, "w") as dst:
        for item in src.infolist():  # what kerasalex recorded goes, Keras's own files stay
            data = src.read(item)
            if item.filename == "kerasalex.json":
                continue
            if item.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("kerasalex", None)
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    from kerasalex import files

    assert files.read_model_metadata(bare) == {}
    r = invoke(["evaluate", bare], tmp_path, expect=2)
    assert "does not say which dataset it was trained on" in r.output and "--dataset" in r.output
    r = invoke(["evaluate", tmp_path / "nothing.keras"], tmp_path, expect=1)
    assert "nothing.keras" in r.output and "does not say" not in r.output


# --------------------------------------------------------------------------
# stderr, Ctrl-C, errors
# --------------------------------------------------------------------------


def test_tensorflow_startup_chatter_is_held_back_and_real_errors_kept(tmp_path):
    """A stand-in `tensorflow` writes TensorFlow's CPU-only start-up lines and a
    real error to file descriptor 2 while it loads."""
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n')\n"
        "os.write(2, b'E0000 real_failure.cc:1] the disk is on fire\\n')\n"
        "class config:\n"
        "    @staticmethod\n"
        "    def list_physical_devices(kind):\n"
        "        os.write(2, b'E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n')\n"
        "        return []\n"
    )
    code = "import sys; sys.argv = ['kerasalex']\nfrom kerasalex.cli import import_tensorflow_quietly as q; print(len(q()))"
    r = run_python(code, env={"PYTHONPATH": str(tmp_path / "fake")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"
    assert "the disk is on fire" in r.stderr
    for noise in NOISE:
        assert noise not in r.stderr


def test_cli_stderr_has_only_what_the_user_must_read(tmp_path):
    """The real CLI on this CPU-only machine: the error line, no TensorFlow chatter."""
    r = run_kerasalex(["evaluate", "nothing.keras"], cwd=tmp_path, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": None})
    assert r.returncode == 1
    assert "nothing.keras" in r.stderr
    for noise in NOISE:
        assert noise not in r.stderr, r.stderr


def test_warnings_show_as_one_line_without_the_source_line():
    code = (
        "import sys, warnings; sys.argv = ['kerasalex']\nfrom kerasalex.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "warnings.warn('skipped 1 corrupt image file(s) in x: x/a.png (cannot identify image file)', stacklevel=1)\n"
    )
    r = run_python(code)
    assert "warning: skipped 1 corrupt image file(s) in x: x/a.png" in r.stderr
    assert "UserWarning" not in r.stderr and "warnings.warn(" not in r.stderr and "<string>" not in r.stderr


# Batches of at least 20 ms: the tiny AlexNet's epoch outlasts the second
# the test waits before pressing Ctrl-C.
SLOW_BATCHES = """
import time
from kerasalex import callbacks as C
real = C.EpochHistory.on_train_batch_end
def end(self, batch, logs=None):
    time.sleep(0.02)
    return real(self, batch, logs)
C.EpochHistory.on_train_batch_end = end
"""


def test_ctrl_c_exits_right_after_the_resume_hint(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        tiny_command(["train", "--arch", "alexnet", "--dataset", "digits", "--image-size", "16", "--batch-size", "8",
                      "--precision", "float32", "--epochs", "3", "--run-dir", "run", "-o", "m.keras"], SLOW_BATCHES),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    hint = None
    try:
        for line in proc.stdout:
            if line.startswith("Epoch 1/") and hint is None:
                time.sleep(1.0)
                proc.send_signal(signal.SIGINT)
            if line.startswith("Interrupted:"):
                hint = time.perf_counter()
                assert "Resume with: kerasalex train --resume --run-dir run" in line
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    seconds = time.perf_counter() - hint
    print(f"\nCtrl-C: exit {seconds:.2f} s after the resume hint")
    assert rc == 130
    assert seconds < 2.0


def test_ctrl_c_in_any_command_exits_130_at_once():
    """Outside training (evaluate, predict, a data download) Ctrl-C ends the
    command at once with the shell's 130, not Click's "Aborted!" exit 1."""
    code = (
        "import os, signal, sys, time, types; sys.argv = ['kerasalex']\n"
        "import click\nimport kerasalex.cli as c\n"
        "@click.command()\ndef slow():\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n"
        "m = types.ModuleType('fakecmd'); m.slow = slow; sys.modules['fakecmd'] = m\n"
        "c.COMMANDS['slow'] = 'fakecmd:slow'\n"
        "c.main(['slow'])\n"
    )
    t0 = time.perf_counter()
    r = run_python(code, timeout=60)
    assert r.returncode == 130, r.stderr[-2000:]
    assert time.perf_counter() - t0 < 25
    assert "Aborted!" in r.stderr and "Traceback" not in r.stderr


def test_error_lines_are_never_cut_inside_a_word(monkeypatch):
    import keras

    from kerasalex.files import error_line
    from kerasalex.models import vgg16 as V

    url = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + V.WEIGHTS_FILE
    msg = f"URL fetch failure on {url}: None -- [Errno -2] Name or service not known"
    assert error_line(Exception(msg)) == msg  # short enough: whole
    for limit in (40, 60, 80, 120):
        short = error_line(Exception(msg), limit)
        assert len(short) <= limit and short.endswith("service not known")
        if limit >= 80:
            assert short.endswith("[Errno -2] Name or service not known")
        assert all(w in msg.split(" ") for w in short.replace(" ... ", " ").replace("... ", "").split(" "))

    def offline(*a, **k):
        raise Exception(msg)

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(ValueError) as caught:
        V.build_vgg16_transfer(10, base_weights="imagenet", input_size=32, input_shape=(32, 32, 3))
    assert "[Errno -2] Name or service not known)" in str(caught.value)


# --------------------------------------------------------------------------
# Tables and plots
# --------------------------------------------------------------------------


def test_trial_table_shows_momentum_only_for_sgd_trials():
    import keras_tuner

    from kerasalex.tuning import trial_rows, trial_table_markdown

    trials = {}
    for tid, optimizer in (("0", "sgd"), ("1", "adam")):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("optimizer", optimizer)
        hp.Fixed("momentum", 0.93)
        trials[tid] = keras_tuner.engine.trial.Trial(hp, trial_id=tid, status="COMPLETED")
    oracle = type("Oracle", (), {"trials": trials})()
    rows = trial_rows(oracle, {"optimizer": {}, "momentum": {}})
    assert rows[0]["momentum"] == 0.93 and rows[1]["momentum"] is None
    table = trial_table_markdown(rows, "val_accuracy").splitlines()
    assert table[2].startswith("| 0 | COMPLETED | sgd | 0.93 |")
    assert table[3].startswith("| 1 | COMPLETED | adam |  |")
    # Without `optimizer` in the space, the recipe's optimizer decides.
    hp = keras_tuner.HyperParameters()
    hp.Fixed("momentum", 0.93)
    alone = type("Oracle", (), {"trials": {"0": keras_tuner.engine.trial.Trial(hp, trial_id="0", status="COMPLETED")}})()
    assert trial_rows(alone, {"momentum": {}}, optimizer="adamw")[0]["momentum"] is None
    assert trial_rows(alone, {"momentum": {}}, optimizer="sgd")[0]["momentum"] == 0.93


def test_accuracy_axis_spans_zero_to_one(tmp_path, monkeypatch):
    from kerasalex import reports

    seen = {}

    def keep(fig, path, dpi=110):
        import matplotlib.pyplot as plt

        seen["ylim"] = fig.axes[1].get_ylim()
        plt.close(fig)
        return path

    monkeypatch.setattr(reports, "save_figure", keep)
    rows = [{"epoch": 1, "loss": 2.3, "accuracy": 0.07, "val_loss": 2.3, "val_accuracy": 0.08},
            {"epoch": 2, "loss": 2.2, "accuracy": 0.10, "val_loss": 2.2, "val_accuracy": 0.09}]
    reports.plot_learning_curves(rows, tmp_path / "c.png")
    low, high = seen["ylim"]
    assert low <= 0.0 and high >= 1.0 and high - low < 1.1


def test_tune_and_study_drop_only_the_per_model_retracing_warning(caplog):
    import logging

    import tensorflow as tf

    from kerasalex.tuning import quiet_trial_retracing

    logger = tf.get_logger()
    text = ("5 out of the last 13 calls to <function TensorFlowTrainer._make_function.<locals>.multi_step_on_iterator> "
            "triggered tf.function retracing. Tracing is expensive")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        with quiet_trial_retracing():
            logger.warning(text)
            logger.warning("a real problem")
        logger.warning(text)  # outside a search it is TensorFlow's business again
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a real problem", text]

    # The study command runs its models under the same filter.
    import kerasalex.study

    def fake_study(**kwargs):
        logger.warning(text)
        logger.warning("another real problem")
        raise ValueError("stop here")

    caplog.clear()
    old = kerasalex.study.run_study
    kerasalex.study.run_study = fake_study
    try:
        with caplog.at_level(logging.WARNING, logger="tensorflow"):
            r = CliRunner().invoke(cli, ["study", "--dataset", "digits"], catch_exceptions=False)
    finally:
        kerasalex.study.run_study = old
    assert r.exit_code == 1 and "stop here" in r.output
    assert [r.getMessage() for r in caplog.records] == ["another real problem"]
