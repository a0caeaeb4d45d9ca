"""Nothing lost, nothing run that should not be (issue #8).

Exact resume after SIGKILL, SIGTERM as ``docker stop`` sends it, kill-safe
writes, divergence, full disks, class mismatches. Training runs are the
scratch AlexNet's stack, tiny (conftest), on digits at 16 px, 120 images,
float32: real runs through the real CLI, in subprocesses where a signal or a
file-size limit needs a process of its own, else in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_tiny_kerasalex, tiny_cli_in, tiny_command

FAST = ["--arch", "alexnet", "--dataset", "digits", "--limit", "120", "--image-size", "16",
        "--batch-size", "32", "--precision", "float32"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temps(folder: Path) -> list[str]:
    from kerasalex.files import is_temp_file

    return sorted(p.name for p in Path(folder).iterdir() if is_temp_file(p)) if Path(folder).is_dir() else []


def history_epochs(run_dir: Path) -> list[int]:
    return [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())]


def weights_of(path: Path) -> list[np.ndarray]:
    from kerasalex import files

    return [np.asarray(w) for w in files.load_model(path).get_weights()]


# A prelude for conftest.run_tiny_kerasalex: kills its own process (SIGKILL:
# no handler, no cleanup) when epoch `kill_at` (0-based) begins, i.e. right
# after epoch `kill_at` - 1 was saved.
KILL_AT_EPOCH = """
import os, signal
from kerasalex import callbacks as C
real = C.EpochHistory.on_epoch_begin
def begin(self, epoch, logs=None):
    if epoch == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, epoch, logs)
C.EpochHistory.on_epoch_begin = begin
"""


# --------------------------------------------------------------------------
# 1. Exact resume
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed_pair(tmp_path_factory):
    """An uninterrupted 6-epoch run, and the same run SIGKILLed at the start of
    epoch 3 and resumed."""
    root = tmp_path_factory.mktemp("resume")
    args = ["train", *FAST, "--epochs", "6", "--deterministic"]
    a = tiny_cli_in(root, [*args, "--run-dir", "whole", "-o", "whole.keras"])
    assert a.exit_code == 0, a.output[-2000:]
    killed = run_tiny_kerasalex([*args, "--run-dir", "cut", "-o", "cut.keras"], cwd=root,
                                prelude=KILL_AT_EPOCH.format(kill_at=2))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = json.loads((root / "cut" / "resume" / "state.json").read_text())
    resumed = tiny_cli_in(root, ["train", "--resume", "--run-dir", "cut"])
    assert resumed.exit_code == 0, resumed.output[-2000:]
    return root, state, resumed


def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(resumed_pair):
    root, state, resumed = resumed_pair
    assert state["epochs_done"] == 2
    assert "resuming cut after epoch 2" in resumed.stdout
    whole, cut = weights_of(root / "whole" / "model.keras"), weights_of(root / "cut" / "model.keras")
    assert len(whole) == len(cut)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(whole, cut))
    print(f"\nexact resume: max |diff| = {diff:.3g} over {sum(w.size for w in whole):,} weights")
    assert diff <= 1e-6


def test_resumed_history_lists_each_epoch_once(resumed_pair):
    root, _, _ = resumed_pair
    assert history_epochs(root / "cut") == [1, 2, 3, 4, 5, 6]
    whole = json.loads((root / "whole" / "history.json").read_text())
    cut = json.loads((root / "cut" / "history.json").read_text())
    np.testing.assert_allclose([r["loss"] for r in cut], [r["loss"] for r in whole], rtol=1e-6)
    assert json.loads((root / "cut" / "config.json").read_text())["config"]["deterministic"] is True
    assert not (root / "cut" / "resume").exists()  # removed once the run finished
    assert temps(root / "cut") == []


def test_data_order_is_a_function_of_seed_and_epoch():
    from kerasalex.data import Split, epoch_order, train_stream

    assert np.array_equal(epoch_order(50, 3, 4), epoch_order(50, 3, 4))
    assert not np.array_equal(epoch_order(50, 3, 4), epoch_order(50, 3, 5))
    assert not np.array_equal(epoch_order(50, 3, 4), epoch_order(50, 4, 4))
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=-1)
    split = Split(x, np.zeros(10, np.int32))

    def labels(start):
        ds, steps = train_stream(split, 4, 2, seed=7, start_epoch=start, epochs=3)
        return [b[0][:, 0, 0, 0].numpy().tolist() for b in ds]

    # A stream started at epoch 1 replays exactly the batches of epochs 1-2.
    assert labels(1) == labels(0)[3:]


def test_seed_states_survive_a_process_that_numbered_layers_differently():
    """Keras names SeedGenerators by a process-wide counter and does not save
    their state; ours are keyed by layer, so a model built after others (as in
    a resuming process) gets them back."""
    from kerasalex import callbacks as C
    from kerasalex.models import training_model
    from kerasalex.models.alexnet import build_alexnet

    def trainer(augment):  # what train() fits: the model behind its augmentation front
        return training_model(build_alexnet(10, (16, 16, 3), dropout=0.5, seed=0), augment=augment, seed=0)

    first = trainer(True)
    for gen in C._seed_generators(first).values():
        gen.state.assign(np.array([5, 9], dtype=gen.state.dtype))
    saved = json.loads(json.dumps(C.seed_states(first)))
    assert set(saved) == {"augment_flip/0", "augment_translate/0", "fc1_dropout/0", "fc2_dropout/0"}
    second = trainer(True)
    assert [v.path for v in second.variables if "seed" in v.path] != [v.path for v in first.variables if "seed" in v.path]
    C.restore_seed_states(second, saved)
    assert C.seed_states(second) == saved
    other = trainer(False)
    with pytest.raises(ValueError, match="another model"):
        C.restore_seed_states(other, saved)


# --------------------------------------------------------------------------
# 2. SIGTERM (docker stop), and 7. a full disk while resuming
# --------------------------------------------------------------------------


# A prelude for the SIGTERM run: fc1/fc2 of 1,024 units (a resume state of
# about 8 MB, for the file-size limit below), and batches of at least 50 ms
# after the first epoch, so the signal lands inside epoch 2 of the tiny model.
BIG_ENOUGH_AND_SLOW = """
import time
import conftest
conftest.TINY_DENSE_UNITS = 1024
from kerasalex import callbacks as C
real = C.EpochHistory.on_train_batch_end
def end(self, batch, logs=None):
    if len(self.rows) >= 1:
        time.sleep(0.05)
    return real(self, batch, logs)
C.EpochHistory.on_train_batch_end = end
"""


@pytest.fixture(scope="module")
def sigtermed(tmp_path_factory):
    """A 3-epoch run sent SIGTERM as soon as epoch 1 is saved."""
    root = tmp_path_factory.mktemp("sigterm")
    log_out, log_err = open(root / "stdout.txt", "w"), open(root / "stderr.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        tiny_command(["train", *FAST, "--epochs", "3", "--run-dir", "run", "-o", "out.keras"], BIG_ENOUGH_AND_SLOW),
        cwd=root, stdout=log_out, stderr=log_err, text=True,
    )
    state = root / "run" / "resume" / "state.json"
    deadline = time.monotonic() + 600
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before epoch 1 was saved"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)  # a hang guard, not a timing assertion
    seconds = time.monotonic() - sent
    log_out.close(), log_err.close()
    out, err = (root / "stdout.txt").read_text(), (root / "stderr.txt").read_text()
    print(f"\nSIGTERM -> exit: {seconds:.2f} s (docker stop waits 10 s)")
    return root, proc.returncode, out, err, seconds


def test_sigterm_stops_keeps_resume_state_and_says_how_to_resume(sigtermed):
    root, rc, out, err, seconds = sigtermed
    assert rc == 143, err[-2000:]
    assert "Interrupted: stopped by signal SIGTERM" in err
    assert "Resume with: kerasalex train --resume --run-dir run" in err
    assert "Traceback" not in err
    state = json.loads((root / "run" / "resume" / "state.json").read_text())
    assert state["epochs_done"] >= 1
    assert (root / "run" / "resume" / state["model"]).is_file()
    assert not (root / "run" / "summary.json").exists()
    assert not (root / "out.keras").exists()
    assert temps(root / "run") == temps(root / "run" / "resume") == []


def test_disk_full_while_resuming_leaves_the_resume_state_unchanged(sigtermed):
    """``ulimit -f``: the resume save of epoch 2 fails with EFBIG."""
    root = sigtermed[0]
    resume_dir = root / "run" / "resume"
    before = {p.name: sha256(p) for p in resume_dir.iterdir()}
    limit = 2 * 1024 * 1024  # config, history, plots fit; an 8 MB model does not

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(
        tiny_command(["train", "--resume", "--run-dir", "run"]),
        cwd=root, capture_output=True, text=True, timeout=600, preexec_fn=small_files,
    )
    assert r.returncode not in (0, 143), r.stderr[-2000:]
    assert "disk full" in r.stderr and "File too large" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert {p.name: sha256(p) for p in resume_dir.iterdir()} == before
    assert not (root / "run" / "summary.json").exists()


def test_resume_after_sigterm_and_full_disk_finishes_with_each_epoch_once(sigtermed):
    root = sigtermed[0]  # (after the full-disk attempt above, in file order)
    r = tiny_cli_in(root, ["train", "--resume", "--run-dir", "run"])
    assert r.exit_code == 0, r.output[-2000:]
    assert history_epochs(root / "run") == [1, 2, 3]
    assert (root / "out.keras").is_file()
    assert temps(root / "run") == []


def test_graceful_stop_outside_fit_raises_at_once_and_inside_waits_for_the_batch():
    from kerasalex.callbacks import GracefulStop, StopNow, TrainingInterrupted

    before = signal.getsignal(signal.SIGTERM)
    stop = GracefulStop(raise_outside_fit=True).install()
    try:
        with pytest.raises(StopNow, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here
        stop.received = None
        stop.on_train_begin()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.received == signal.SIGTERM  # flagged, not raised mid-batch
        with pytest.raises(TrainingInterrupted):
            stop.on_train_batch_end(0)
        with pytest.raises(TrainingInterrupted):  # a second signal does not wait
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_stop_signal_while_loading_is_not_mistaken_for_a_corrupt_file(tmp_path):
    """Outside fit the stop is a BaseException: ``except Exception`` in a loader
    (which turns errors into "corrupt or incomplete model file") lets it through."""
    from kerasalex import files
    from kerasalex.callbacks import GracefulStop, StopNow

    path = tmp_path / "m.keras"
    files.save_model(_digits_model(), path)
    stop = GracefulStop(raise_outside_fit=True).install()
    try:
        import keras

        real = keras.saving.load_model

        def load_then_signal(*args, **kwargs):
            model = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
            return model

        keras.saving.load_model = load_then_signal
        try:
            with pytest.raises(StopNow):
                files.load_model(path)
        finally:
            keras.saving.load_model = real
    finally:
        stop.uninstall()


def test_without_raise_outside_fit_a_signal_is_only_recorded():
    """The default (tune's stop): record, and let the caller check between trials."""
    from kerasalex.callbacks import GracefulStop

    stop = GracefulStop().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.received == signal.SIGTERM
    finally:
        stop.uninstall()


def test_exit_status_follows_the_signal_as_shells_do():
    """Ctrl-C -> 130, SIGTERM -> 143, also through the wrapped message train prints."""
    from kerasalex.callbacks import TrainingInterrupted
    from kerasalex.training import _interrupted_message

    assert TrainingInterrupted("stopped by signal SIGINT").exit_code == 130
    assert TrainingInterrupted("stopped by signal SIGTERM").exit_code == 143
    wrapped = _interrupted_message(TrainingInterrupted("stopped by signal SIGINT"), None)
    assert TrainingInterrupted(wrapped).exit_code == 130


# --------------------------------------------------------------------------
# 3. Kill-safe writes
# --------------------------------------------------------------------------


KILLS = 25  # `python benchmarks/kill_safe_writes.py` runs 50 (or more) and prints the figure


def test_writer_killed_at_random_moments_leaves_old_or_new_file(tmp_path):
    # A fresh process: the writers are forked from one that has run no TensorFlow op.
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "kill_safe_writes.py"), "--kills", str(KILLS), "--seed", "1234",
         "--dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=900,
    )
    f = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("{")))
    print("\n" + r.stdout.splitlines()[-1])
    assert f["problems"] == []
    assert f["unloadable"] == f["neither_old_nor_new"] == f["stray_temps"] == 0
    assert f["old"] + f["new"] == KILLS
    assert f["killed_mid_write"] >= KILLS // 4  # many kills did land inside a save
    assert r.returncode == 0


def test_stale_temps_are_swept_but_a_live_writers_temp_is_not(tmp_path):
    from kerasalex import files

    stale = tmp_path / ".history.json.tmp-dead"
    stale.write_text("torn")
    with files.atomic_path(tmp_path / "a.json") as tmp:  # a write sweeps first...
        assert not stale.exists()
        stale.write_text("torn")
        tmp.write_text("{}")
        assert files.remove_stale_temps(tmp_path) == 0  # ...and while it is live, nobody sweeps
        assert tmp.exists() and stale.exists()
    assert files.remove_stale_temps(tmp_path) == 1
    assert temps(tmp_path) == []
    assert json.loads((tmp_path / "a.json").read_text()) == {}


# --------------------------------------------------------------------------
# 6. Divergence
# --------------------------------------------------------------------------


def test_huge_learning_rate_stops_with_a_clear_message_and_saves_nothing(tmp_path):
    r = tiny_cli_in(tmp_path, ["train", *FAST, "--epochs", "2", "--lr", "1e6", "--schedule", "constant",
            "--run-dir", "run", "-o", "out.keras"])
    assert r.exit_code == 1, r.output[-2000:]
    assert "training diverged (loss became nan at batch" in r.stderr and "lower --lr" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "resume").exists()
    assert not (tmp_path / "run" / "best.keras").exists()
    assert not (tmp_path / "run" / "history.json").exists()
    assert not (tmp_path / "out.keras").exists()


def _tiny_float_model():
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def _callbacks(run_dir, best=None):
    from kerasalex import callbacks as C

    return [C.StopOnDivergence(), C.EpochHistory(run_dir, 32, C.read_history(run_dir), plot=False),
            C.ResumeState(run_dir), C.BestCheckpoint(run_dir / "best.keras", monitor="loss", mode="min", best=best)]


def _saved(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): sha256(p) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_nan_input_stops_at_its_batch_and_leaves_the_last_good_state(tmp_path):
    import keras

    from kerasalex.callbacks import TrainingDiverged

    model = _tiny_float_model()
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    y = np.zeros((32, 3), np.float32)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=_callbacks(tmp_path))
    before = _saved(tmp_path)
    assert "resume/state.json" in before and "best.keras" in before
    x[17, 2] = np.nan  # in batch 3 of 4
    batches = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            batches.append(batch)

    with pytest.raises(TrainingDiverged, match="at batch 3"):
        model.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, shuffle=False, verbose=0,
                  callbacks=[Count(), *_callbacks(tmp_path, best=0.0)])
    assert batches == [0, 1, 2]  # stopped within the batch that saw the NaN
    assert _saved(tmp_path) == before


def test_non_finite_weights_at_epoch_end_are_never_saved(tmp_path):
    """The last batch's loss is computed before its update: a finite loss can
    still leave NaN weights, which the epoch-end check catches before any save."""
    import keras

    from kerasalex.callbacks import TrainingDiverged

    model = _tiny_float_model()
    x, y = np.ones((16, 4), np.float32), np.zeros((16, 3), np.float32)

    class BreakLastUpdate(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.get_layer("d").kernel.assign(np.full((4, 3), np.inf, np.float32))

    with pytest.raises(TrainingDiverged, match="non-finite"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[BreakLastUpdate(), *_callbacks(tmp_path)])
    assert not (tmp_path / "resume").exists() and not (tmp_path / "best.keras").exists()


# --------------------------------------------------------------------------
# 7. Full disk (ENOSPC from /dev/full; EFBIG from ulimit -f is above)
# --------------------------------------------------------------------------


def _writes_go_to_dev_full(monkeypatch, name: str):
    """Every write of a temporary file for ``name`` lands in /dev/full (ENOSPC)."""
    from kerasalex import files

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and files.is_temp_file(path) and Path(path).name.startswith(f".{name}"):
            return open("/dev/full", mode, *args, **kwargs)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", fake_open, raising=False)


def test_history_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    from kerasalex import callbacks as C
    from kerasalex import files

    C.write_history(tmp_path, [{"epoch": 1, "loss": 1.0}])
    before = sha256(tmp_path / "history.json")
    _writes_go_to_dev_full(monkeypatch, "history.json")
    with pytest.raises(files.DiskFullError, match="disk full while writing .*history.json .*No space left"):
        C.write_history(tmp_path, [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}])
    assert sha256(tmp_path / "history.json") == before
    assert temps(tmp_path) == []


def test_full_disk_through_the_cli_is_one_line_and_non_zero(tmp_path, monkeypatch, invoke):
    from kerasalex import files

    model_path = tmp_path / "m.keras"
    files.save_model(_digits_model(), model_path)
    invoke(["evaluate", model_path, "--dataset", "digits", "--limit", "20", "--output-dir", "ev"])
    before = sha256(tmp_path / "ev" / "evaluation.json")
    _writes_go_to_dev_full(monkeypatch, "evaluation.json")
    r = invoke(["evaluate", model_path, "--dataset", "digits", "--limit", "30", "--output-dir", "ev"], expect_ok=False)
    assert r.exit_code == 1
    assert "disk full while writing" in r.output and "evaluation.json" in r.output
    assert sha256(tmp_path / "ev" / "evaluation.json") == before
    assert temps(tmp_path / "ev") == []


# --------------------------------------------------------------------------
# 9. Class mismatch
# --------------------------------------------------------------------------


def _digits_model(classes=None, size=16):
    import keras

    from kerasalex import preprocessing

    classes = list(classes or [str(i) for i in range(10)])
    inputs = preprocessing.image_input((size, size, 3))
    x = preprocessing.rescale_symmetric(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(len(classes), name="predictions")(x)
    return keras.Model(inputs, preprocessing.class_names_head(x, classes, len(classes)), name="tiny")


def _image_folder(root: Path, classes) -> Path:
    from PIL import Image

    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (16, 16), (40 * i, 10 * k, 0)).save(root / c / f"{k}.png")
    return root


def test_evaluate_refuses_other_classes_before_any_batch(tmp_path, monkeypatch, invoke):
    from kerasalex import evaluation, files

    model_path = tmp_path / "m.keras"
    files.save_model(_digits_model(["cat", "dog", "cow"]), model_path)
    folder = _image_folder(tmp_path / "pets", ["cat", "dog"])

    def no_batches(*args, **kwargs):
        raise AssertionError("a batch ran")

    monkeypatch.setattr(evaluation, "predict_logits", no_batches)
    r = invoke(["evaluate", model_path, "--dataset", folder, "--output-dir", "ev"], expect_ok=False)
    assert r.exit_code == 1
    assert "trained on classes ['cat', 'dog', 'cow']" in r.output and "['cat', 'dog']" in r.output
    assert not (tmp_path / "ev").exists()


def test_resume_refuses_data_with_other_classes_before_any_batch(tmp_path, monkeypatch):
    """Continuing training (fine-tuning a saved model) on other classes is refused."""
    import keras

    from kerasalex import callbacks as C
    from kerasalex import training
    from kerasalex.config import TrainConfig

    folder = _image_folder(tmp_path / "pets", ["cat", "dog"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = TrainConfig(dataset=str(folder), image_size=16, epochs=3, batch_size=2, run_dir=str(run_dir))
    training.write_run_config(run_dir, config, {})
    model = _digits_model(["cat", "cow"])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    C.save_resume_state(model, run_dir / "resume", 1)
    C.write_history(run_dir, [{"epoch": 1, "loss": 1.0}])
    before = _saved(run_dir)

    def no_fit(*args, **kwargs):
        raise AssertionError("training ran")

    monkeypatch.setattr(training, "fit_standard", no_fit)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"classes \['cat', 'cow'\] differ from the data's \['cat', 'dog'\]"):
        training.train(TrainConfig(run_dir=str(run_dir)), resume=True, verbose=0)
    assert _saved(run_dir) == before
