"""kerasalex tune: search spaces, each tuner kind, best_hparams -> train,
resume after a kill, SIGTERM, damaged state files, a chief with two workers.

Everything runs the tiny AlexNet (conftest) on digits at 16 px with 150
training images, 1-epoch trials and a fixed batch size (few steps per epoch);
in-process, except where a signal or a second process is the point.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_alexnet_registered, tiny_command

TINY = ["--arch", "alexnet", "--dataset", "digits", "--limit", "150", "--image-size", "16",
        "--precision", "float32", "--max-epochs", "1"]
SPACE = {"batch_size": {"fixed": 128}}


def _space_file(folder: Path, space=None) -> Path:
    p = Path(folder) / "space.json"
    p.write_text(json.dumps(SPACE if space is None else space))
    return p


def _rows(project: Path) -> list[dict]:
    with open(project / "trials.csv") as f:
        return list(csv.DictReader(f))


def _trial(project: Path, tid: str) -> dict:
    return json.loads((project / f"trial_{tid}" / "trial.json").read_text())


def _popen(args, cwd, log: Path, env=None) -> subprocess.Popen:
    """``kerasalex ARGS`` with the tiny AlexNet in a process of its own."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen(
        tiny_command(args), cwd=cwd, env=e,
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )


def _wait_for(predicate, timeout: float, what: str, procs=()):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process exited (rc {p.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _completed(project: Path, tid: str) -> bool:
    try:
        return _trial(project, tid)["status"] == "COMPLETED"
    except (OSError, ValueError, KeyError):
        return False


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


# --------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "space, message",
    [
        ({"learning_rate": {"min": 0.1, "max": 1}}, "unknown hyperparameter 'learning_rate'"),
        ({"lr": {"min": "small", "max": 0.1}}, "lr: min must be a number"),
        ({"lr": {"min": 0.1, "max": 0.001}}, "lr: min must be <= max"),
        ({"lr": {"min": 0, "max": 0.1, "sampling": "log"}}, "lr: min must be > 0"),
        ({"dropout": {"min": 0.1, "max": 0.5, "sampling": "cubic"}}, "dropout: sampling must be one of"),
        ({"optimizer": {"values": ["sgd", "rmsprop"]}}, "optimizer: each value must be one of"),
        ({"batch_size": {"values": []}}, "batch_size: values must be a non-empty list"),
        ({"batch_size": {"min": 16.5, "max": 64}}, "batch_size: min must be an integer"),
        ({"augment": {"min": 0, "max": 1}}, "augment takes \"values\" or \"fixed\""),
        ({"augment": "yes"}, "augment must be an object"),
        ({"lr": {"min": 1e-3}}, "a range needs both min and max"),
        ({"lr": {"values": [0.1], "fixed": 0.1}}, "needs exactly one of"),
        ({"dropout": {"fixed": 1.0}}, "dropout: fixed must be < 1.0"),
        (["lr"], "must be a JSON object"),
    ],
)
def test_bad_search_space_names_file_and_key(tmp_path, space, message):
    from kerasalex.tuning import load_search_space

    path = _space_file(tmp_path, space)
    with pytest.raises(ValueError) as err:
        load_search_space(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_search_space_file_errors(tmp_path):
    from kerasalex.tuning import load_search_space

    with pytest.raises(ValueError, match="search space file not found"):
        load_search_space(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": {"min": 0.001,')
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_search_space(bad)


def test_default_space_names_are_train_options_and_files_override_it(tmp_path):
    import dataclasses

    import keras_tuner

    from kerasalex.config import TrainConfig
    from kerasalex.tuning import DEFAULT_SEARCH_SPACE, define_hyperparameter, load_search_space

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(DEFAULT_SEARCH_SPACE) <= fields
    assert set(DEFAULT_SEARCH_SPACE) == {"optimizer", "lr", "momentum", "weight_decay", "dropout",
                                          "label_smoothing", "batch_size", "augment"}
    space = load_search_space(_space_file(tmp_path, {
        "optimizer": {"values": ["sgd", "adamw"]}, "augment": {"fixed": True},
        "lr": {"min": 1e-3, "max": 1e-2, "sampling": "log"}, "nesterov": {"values": [True, False]},
    }))
    assert space["momentum"] == DEFAULT_SEARCH_SPACE["momentum"]  # untouched names keep the default
    hp = keras_tuner.HyperParameters()
    values = {name: define_hyperparameter(hp, name, spec) for name, spec in space.items()}
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds["augment"] == "Fixed" and values["augment"] is True
    assert kinds["nesterov"] == "Boolean" and kinds["optimizer"] == "Choice"
    assert kinds["batch_size"] == "Choice" and isinstance(values["batch_size"], int)
    lr = next(p for p in hp.space if p.name == "lr")
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-3, 1e-2, "log")
    TrainConfig(**values)  # every value is a valid train option


def test_cli_bad_search_space_is_one_line_error(invoke, tmp_path):
    path = _space_file(tmp_path, {"lr": {"min": 0.1, "max": 0.01}})
    r = invoke(["tune", *TINY, "--search-space", path], expect_ok=False)
    assert r.exit_code != 0
    assert "lr: min must be <= max" in r.output and "space.json" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "tuning").exists()


def test_mismatched_search_folder_is_refused(invoke, tmp_path):
    from kerasalex.tuning import TuneConfig, load_search_space

    space = _space_file(tmp_path)
    project = tmp_path / "tuning" / "s"
    project.mkdir(parents=True)
    other = TuneConfig(arch="alexnet-torch", dataset="digits", tuner="random", max_epochs=1, limit=150,
                       image_size=16, precision="float32", search_space=load_search_space(space), name="s")
    (project / "kerasalex_search.json").write_text(json.dumps({"settings": other.settings()}))
    r = invoke(["tune", *TINY, "--tuner", "random", "--name", "s", "--search-space", space], expect_ok=False)
    assert r.exit_code != 0
    assert "was created with arch='alexnet-torch'" not in r.output  # values are shown as JSON
    assert 'was created with arch="alexnet-torch"' in r.output and "--overwrite" in r.output
    # A keras-tuner folder of unknown origin is not mixed with either.
    shutil.rmtree(project)
    (project / "trial_0").mkdir(parents=True)
    (project / "oracle.json").write_text("{}")
    r = invoke(["tune", *TINY, "--tuner", "random", "--name", "s", "--search-space", space], expect_ok=False)
    assert r.exit_code != 0 and "without kerasalex_search.json" in r.output


# --------------------------------------------------------------------------
# A random search, its outputs, and what a rerun does with them
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_search(tmp_path_factory):
    """A finished 2-trial random search with the best model retrained."""
    from click.testing import CliRunner

    from kerasalex.cli import cli

    root = tmp_path_factory.mktemp("random_search")
    space = _space_file(root)
    args = ["tune", *TINY, "--tuner", "random", "--max-trials", "2", "--search-space", str(space)]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with tiny_alexnet_registered():
            r = CliRunner().invoke(cli, args, catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    return root, args, r.output


def test_random_search_outputs(random_search):
    from kerasalex import files

    root, _, output = random_search
    project = root / "tuning" / "alexnet-digits-random"
    rows = _rows(project)
    assert [r["trial"] for r in rows] == ["0", "1"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    for r in rows:
        assert 0.0 <= float(r["val_accuracy"]) <= 1.0
        assert float(r["epochs"]) == 1 and float(r["seconds"]) > 0 and r["optimizer"] in ("sgd", "adam", "adamw")
        assert r["batch_size"] == "128"
    assert "| trial | status | optimizer | lr |" in (project / "trials.md").read_text()
    hp = json.loads((project / "best_hparams.json").read_text())
    best = json.loads((project / "best_trial.json").read_text())
    # The searched hyperparameters only, not the search's budget.
    searched = {"optimizer", "lr", "momentum", "weight_decay", "dropout", "label_smoothing", "augment", "batch_size"}
    assert hp["arch"] == "alexnet" and hp["recipe"] == "default"
    assert set(hp) - {"arch", "recipe"} <= searched
    assert not {"epochs", "limit", "val_split", "image_size", "precision", "seed", "dataset"} & set(hp)
    assert ("momentum" in hp) == (hp["optimizer"] == "sgd")  # only SGD reads it
    # The retrain's budget: the trial's best epoch, on the training and
    # validation images the trials saw.
    assert best["retrain_options"]["epochs"] == 1 and best["retrain_options"]["val_split"] == 0.0
    assert best["retrain_options"]["limit"] == 150 + 17
    best_row = next(r for r in rows if r["trial"] == best["trial_id"])
    assert float(best_row["val_accuracy"]) == max(float(r["val_accuracy"]) for r in rows)
    for name in set(hp) - {"arch", "recipe"}:
        assert str(hp[name]) == best_row[name] or float(hp[name]) == pytest.approx(float(best_row[name]))
    for r in rows:
        assert (r["momentum"] == "") == (r["optimizer"] != "sgd")
    model = files.load_model(root / "saved_models" / "tune-alexnet-digits-random.keras")
    from kerasalex.models import get_image_shape

    assert get_image_shape(model) == (16, 16, 3) and model.output_shape == (None, 10)
    assert not any(l.name.startswith("augment") for l in model.layers)  # the inference model
    assert "Reproduce: kerasalex train --hparams" in output
    assert "precision float32 (as --precision asked)" in output


def test_best_hparams_round_trip_into_train(random_search, invoke, tiny_alexnet):
    """`train --hparams best_hparams.json` with the retrain's budget on the
    command line is the retrain; without it, the winner on all the data with
    the recipe's epochs and a validation split."""
    root, _, _ = random_search
    project = root / "tuning" / "alexnet-digits-random"
    budget = json.loads((project / "best_trial.json").read_text())["retrain_options"]
    invoke(["train", "--hparams", project / "best_hparams.json", "--dataset", "digits", "--image-size", "16",
            "--precision", "float32", "--epochs", budget["epochs"], "--val-split", "0", "--limit", budget["limit"],
            "--run-dir", "again", "--output", "again.keras"])
    ours = json.loads((project / "retrain" / "config.json").read_text())["config"]
    theirs = json.loads((Path("again") / "config.json").read_text())["config"]
    for key in ("run_dir", "output"):
        ours.pop(key), theirs.pop(key)
    assert theirs == ours
    assert theirs["val_split"] == 0.0 and theirs["limit"] == 167
    from kerasalex.config import load_hparams, resolve_config

    hp = load_hparams(project / "best_hparams.json")
    winner = resolve_config(hp.pop("arch"), hp.pop("recipe"), hparams=hp, dataset="digits")
    assert winner.limit is None and winner.val_split == 0.1 and winner.epochs == resolve_config("alexnet").epochs
    assert winner.lr == ours["lr"] and winner.optimizer == ours["optimizer"]


def test_rerun_keeps_trials_and_repairs_damaged_state(random_search, invoke, tmp_path, tiny_alexnet):
    root, args, _ = random_search
    src = root / "tuning" / "alexnet-digits-random"
    project = tmp_path / "tuning" / "alexnet-digits-random"
    shutil.copytree(src, project, ignore=shutil.ignore_patterns("retrain"))
    args = [a if a != str(root / "space.json") else str(_space_file(tmp_path)) for a in args]
    before = {t: (project / f"trial_{t}" / "trial.json").read_text() for t in ("0", "1")}

    # A finished search: the rerun runs nothing and leaves the trials alone.
    r = invoke([*args, "--no-retrain"])
    assert "Running Trial" not in r.output
    assert {t: (project / f"trial_{t}" / "trial.json").read_text() for t in ("0", "1")} == before

    # A truncated trial.json is restored from oracle.json's copy.
    text = before["1"]
    (project / "trial_1" / "trial.json").write_text(text[: len(text) // 2])
    r = invoke([*args, "--no-retrain"])
    assert "trial_1/trial.json is unreadable" in r.output and "restored it from" in r.output
    assert json.loads((project / "trial_1" / "trial.json").read_text()) == json.loads(before["1"])
    assert "Traceback" not in r.output

    # A truncated oracle.json is rebuilt from the trials; the search goes on
    # (here extended to 3 trials), the finished ones are not rerun.
    oracle = (project / "oracle.json").read_text()
    (project / "oracle.json").write_text(oracle[:100])
    r = invoke([*[a if a != "2" else "3" for a in args], "--no-retrain"])
    assert "oracle.json is unreadable" in r.output and "rebuilding" in r.output
    assert r.output.count("Running Trial") == 1
    rows = _rows(project)
    assert [x["trial"] for x in rows] == ["0", "1", "2"] and all(x["status"] == "COMPLETED" for x in rows)
    assert json.loads((project / "trial_0" / "trial.json").read_text()) == json.loads(before["0"])
    json.loads((project / "oracle.json").read_text())  # whole again


def test_other_settings_refused_then_overwrite_starts_afresh(random_search, invoke, tmp_path, tiny_alexnet):
    root, args, _ = random_search
    project = tmp_path / "tuning" / "alexnet-digits-random"
    shutil.copytree(root / "tuning" / "alexnet-digits-random", project, ignore=shutil.ignore_patterns("retrain"))
    wider = _space_file(tmp_path, {"batch_size": {"fixed": 128}, "lr": {"min": 1e-3, "max": 0.5, "sampling": "log"}})
    new_args = [a if a != str(root / "space.json") else str(wider) for a in args]
    new_args = [a if a != "2" else "1" for a in new_args] + ["--no-retrain"]
    r = invoke(new_args, expect_ok=False)
    assert r.exit_code != 0
    assert "was created with search_space.lr.max=0.1, this run asks for search_space.lr.max=0.5" in r.output and "--overwrite" in r.output
    assert (project / "trial_1").exists()
    r = invoke([*new_args, "--overwrite"])
    assert [x["trial"] for x in _rows(project)] == ["0"]
    assert not (project / "trial_1").exists()
    saved = json.loads((project / "kerasalex_search.json").read_text())["settings"]
    assert saved["search_space"]["lr"]["max"] == 0.5


# --------------------------------------------------------------------------
# The other tuner kinds
# --------------------------------------------------------------------------


def test_bayesian_search(invoke, tmp_path, tiny_alexnet):
    space = _space_file(tmp_path)
    invoke(["tune", *TINY, "--tuner", "bayesian", "--max-trials", "3", "--search-space", space, "--no-retrain"])
    project = tmp_path / "tuning" / "alexnet-digits-bayesian"
    rows = _rows(project)
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and all(r["status"] == "COMPLETED" for r in rows)
    state = json.loads((project / "oracle.json").read_text())
    assert state["num_initial_points"] == 2  # the third trial came from the Gaussian process
    assert (project / "best_hparams.json").exists() and not (tmp_path / "saved_models").exists()


def test_hyperband_continues_the_best_model(invoke, tmp_path, tiny_alexnet):
    space = _space_file(tmp_path)
    # max-epochs 3, factor 3: three 1-epoch trials, then the best one trained
    # on to epoch 3 from its checkpoint (capped at 4 trials).
    invoke(["tune", *TINY[:-1], "3", "--tuner", "hyperband", "--max-trials", "4", "--search-space", space,
            "--no-retrain"])
    project = tmp_path / "tuning" / "alexnet-digits-hyperband"
    rows = _rows(project)
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows)
    assert [int(r["tuner/epochs"]) for r in rows] == [1, 1, 1, 3]
    last = rows[3]
    first_round = {r["trial"]: float(r["val_accuracy"]) for r in rows[:3]}
    assert last["tuner/trial_id"] == max(first_round, key=first_round.get)
    assert float(last["epochs"]) <= 2  # epochs 2..3 only: it continued, not restarted
    history = json.loads((project / "trial_3" / "history.json").read_text())
    assert history[0]["epoch"] == 2
    assert (project / f"trial_{last['tuner/trial_id']}" / "checkpoint.weights.h5").exists()


# --------------------------------------------------------------------------
# Kill, SIGTERM, rerun
# --------------------------------------------------------------------------


def test_kill_then_sigterm_then_rerun_finishes_without_rerunning(tmp_path, invoke, tiny_alexnet):
    space = _space_file(tmp_path)
    args = ["tune", *TINY, "--tuner", "random", "--max-trials", "3", "--search-space", space, "--no-retrain"]
    project = tmp_path / "tuning" / "alexnet-digits-random"
    procs = []
    try:
        # 1. SIGKILL while trial 1 runs, after trial 0 finished.
        p = _popen(args, tmp_path, tmp_path / "run1.log")
        procs.append(p)
        # Trial 1 is created just after trial 0 is recorded: wait for its
        # file too, or the kill can land in between (seen once in CI).
        _wait_for(lambda: _completed(project, "0") and (project / "trial_1" / "trial.json").exists(),
                  240, "trial 0 to finish and trial 1 to start", [p])
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        done0 = (project / "trial_0" / "trial.json").read_text()
        assert (project / "trial_1").exists() and not _completed(project, "1")

        # 2. The rerun continues; SIGTERM in the middle of a trial stops it
        # cleanly with a non-zero exit and says how to resume.
        log = tmp_path / "run2.log"
        p = _popen(args, tmp_path, log)
        procs.append(p)
        _wait_for(lambda: "Running Trial" in log.read_text(), 240, "the rerun to start a trial", [p])
        time.sleep(1.0)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)
        seconds = time.monotonic() - t0
        out = log.read_text()
        assert rc == 143, out[-2000:]
        assert "Interrupted: stopped by signal SIGTERM" in out
        assert "rerun the same command" in out and "kerasalex tune --arch alexnet" in out
        print(f"SIGTERM -> exit in {seconds:.1f}s")
    finally:
        _kill_all(procs)

    # 3. The last rerun finishes: three trials in all, the finished ones
    # untouched and not run again.
    finished = [t for t in ("0", "1", "2") if _completed(project, t)]
    assert "0" in finished and len(finished) < 3
    r = invoke(args)
    assert "continuing the search" in r.output
    assert r.output.count("Running Trial") == 3 - len(finished)
    rows = _rows(project)
    assert [x["trial"] for x in rows] == ["0", "1", "2"] and all(x["status"] == "COMPLETED" for x in rows)
    assert (project / "trial_0" / "trial.json").read_text() == done0


# --------------------------------------------------------------------------
# One chief, two workers
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_on_loopback(tmp_path):
    space = _space_file(tmp_path)
    address = f"127.0.0.1:{_free_port()}"
    args = ["tune", *TINY, "--tuner", "random", "--max-trials", "4", "--search-space", space, "--no-retrain"]
    project = tmp_path / "tuning" / "alexnet-digits-random"
    procs = []
    try:
        chief = _popen([*args, "--chief", address], tmp_path, tmp_path / "chief.log")
        procs.append(chief)
        _wait_for(lambda: "serving the search" in (tmp_path / "chief.log").read_text(), 240, "the chief to serve", [chief])
        workers = [
            _popen([*args, "--worker", address, "--worker-id", f"worker{i}"], tmp_path, tmp_path / f"worker{i}.log")
            for i in range(2)
        ]
        procs += workers
        rc = chief.wait(timeout=480)
        chief_out = (tmp_path / "chief.log").read_text()
        assert rc == 0, chief_out[-3000:]
        for w in workers:
            w.wait(timeout=120)
        outs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
        assert [w.returncode for w in workers] == [0, 0], [o[-2000:] for o in outs]
    finally:
        _kill_all(procs)

    rows = _rows(project)
    ids = [r["trial"] for r in rows]
    assert ids == ["0", "1", "2", "3"] and all(r["status"] == "COMPLETED" for r in rows)
    # Every trial ran exactly once, on one of the workers; none on the chief.
    ran = []
    for i, out in enumerate(outs):
        mine = [line.split()[2] for line in out.splitlines() if line.startswith("[kerasalex] trial ") and f"completed on worker{i}" in line]
        ran += mine
        assert f"worker worker{i} finished" in out
    assert sorted(ran) == ids
    assert "[kerasalex] trial " not in chief_out
    best = json.loads((project / "best_trial.json").read_text())
    assert best["trial_id"] in ids and (project / "best_hparams.json").exists()


def test_a_search_that_exhausts_its_space_says_why(tmp_path):
    """Two combinations and --max-trials 4: the search stops after 2 and says
    the space was exhausted (issue 14)."""
    from conftest import tiny_cli_in

    from kerasalex.tuning import space_size

    space = {"optimizer": {"fixed": "sgd"}, "lr": {"values": [0.01, 0.02]}, "momentum": {"fixed": 0.9},
             "weight_decay": {"fixed": 0.0}, "dropout": {"fixed": 0.0}, "label_smoothing": {"fixed": 0.0},
             "batch_size": {"fixed": 128}, "augment": {"fixed": False}}
    r = tiny_cli_in(tmp_path, ["tune", *TINY, "--tuner", "random", "--max-trials", "4", "--search-space",
                               _space_file(tmp_path, space), "--directory", tmp_path / "t"])
    assert r.exit_code == 0, r.output[-4000:]
    out = r.output
    assert "the search ended after 2 of 4 trials: all 2 combination(s) of the search space were tried" in out

    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.Choice("a", [1, 2, 3])
    hp.Boolean("b")
    hp.Int("c", 1, 4)
    hp.Float("d", 0.1, 0.3, step=0.1)
    assert space_size(hp) == 3 * 2 * 4 * 3
    hp.Float("e", 0.1, 0.2)
    assert space_size(hp) is None
