"""One declaration per option: `train`, `tune` and `study` take the same
option table (kerasalex.options), checked against TrainConfig, and every
command line kerasalex prints or records is rendered from it and parses back
to the same values."""

from __future__ import annotations

import dataclasses
import shlex

import click
import pytest
from click.testing import CliRunner

from kerasalex import options as O
from kerasalex.cli import cli
from kerasalex.config import TrainConfig

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def _command(name: str) -> click.Command:
    ctx = click.Context(cli)
    return cli.get_command(ctx, name)


def _params(name: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in _command(name).params}


def test_every_train_config_field_is_an_option_or_says_why_not():
    assert set(O.TRAIN_OPTIONS) <= set(FIELDS)
    assert set(O.NOT_OPTIONS) <= set(FIELDS)
    assert not set(O.TRAIN_OPTIONS) & set(O.NOT_OPTIONS)
    missing = [f for f in FIELDS if f not in O.TRAIN_OPTIONS and f not in O.NOT_OPTIONS]
    assert not missing, f"TrainConfig fields with no option and no reason in NOT_OPTIONS: {missing}"
    assert all(O.NOT_OPTIONS.values()) and all(O.NOT_IN_TUNE.values()) and all(O.NOT_IN_STUDY.values())
    # Each option's flag is the field's name, so values and flags map one to one.
    for name, option in O.TRAIN_OPTIONS.items():
        assert option.flags[0] == "--" + name.replace("_", "-"), name


@pytest.mark.parametrize("command, not_here", [("train", {}), ("tune", O.NOT_IN_TUNE), ("study", O.NOT_IN_STUDY)])
def test_every_train_option_reaches_tune_and_study(command, not_here):
    params = _params(command)
    assert set(not_here) <= set(O.TRAIN_OPTIONS)
    for name, option in O.TRAIN_OPTIONS.items():
        if name in not_here:
            assert name not in params, f"{command} takes --{name} although NOT_IN_{command.upper()} says why not"
            continue
        assert name in params, f"`kerasalex {command}` lacks the train option {option.flags[0]}"
        p = params[name]
        assert p.opts[0] == option.flags[0] and type(p.type) is type(_params("train")[name].type), name
        # Unset options stay None, so the recipe's and the registry's values win.
        if name not in ("arch", "recipe", "dataset"):
            assert p.default is None, f"{command} {option.flags[0]} defaults to {p.default!r}, not None"


@pytest.mark.parametrize("command", ["train", "tune", "study"])
def test_help_of_each_command(command):
    r = CliRunner().invoke(cli, [command, "--help"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for option in O.command_options(command).values():
        assert option.flags[0] in r.output


def test_help_of_train_tune_study_imports_no_tensorflow():
    from conftest import run_python

    r = run_python(
        "import sys; sys.argv = ['kerasalex', 'train', '--help']\n"
        "from kerasalex.cli import cli\n"
        "for c in ('train', 'tune', 'study'):\n"
        "    try:\n        cli.main([c, '--help'], standalone_mode=False)\n"
        "    except SystemExit:\n        pass\n"
        "print('tf', 'tensorflow' in sys.modules, 'keras_tuner' in sys.modules)"
    )
    assert r.returncode == 0, r.stderr
    assert "--max-trials" in r.stdout and "--alexnet-weights" in r.stdout and "tf False False" in r.stdout


def test_study_weights_options_come_from_the_registry():
    from kerasalex.models import ARCHITECTURES

    params = _params("study")
    flagged = [a for a in ARCHITECTURES.values() if a.study_weights_flag]
    assert flagged
    for a in flagged:
        p = params[a.study_weights_flag.replace("-", "_")]
        assert p.opts == [f"--{a.study_weights_flag}"] and p.default is None
    assert params["models"].default == ",".join(a.name for a in ARCHITECTURES.values() if a.study_label)


def _parse(command: str, line: str) -> dict:
    args = shlex.split(line)
    assert args[:2] == ["kerasalex", command]
    return _command(command).make_context(command, args[2:]).params


@pytest.mark.parametrize("command, values", [
    ("train", {"arch": "vgg16", "dataset": "my photos", "lr": 0.05, "augment": False, "freeze_base": True,
               "save_best": True, "limit": 0, "hparams": "best.json", "output": "m.keras"}),
    ("tune", {"arch": "alexnet", "tuner": "hyperband", "max_epochs": 3, "retrain": False, "overwrite": True,
              "weights": "w.h5", "label_smoothing": 0.0, "deterministic": True, "seed": 7}),
    ("study", {"recipe": "study", "dataset": "digits", "epochs": 1, "models": "alexnet", "alexnet_weights": "a b.h5",
               "ema_momentum": 0.99, "seed": None, "output_dir": "s"}),
])
def test_command_line_parses_back_to_the_same_values(command, values):
    line = O.command_line(command, values)
    parsed = _parse(command, line)
    for name, value in values.items():
        assert parsed[name] == value, (name, line)


def test_command_line_leaves_out_defaults_unless_kept_and_refuses_unknown_names():
    assert O.command_line("tune", {"arch": "alexnet", "tuner": "bayesian", "retrain": True}) == "kerasalex tune"
    assert O.command_line("tune", {"arch": "alexnet", "retrain": True}, keep=["arch"]) == "kerasalex tune --arch alexnet"
    with pytest.raises(ValueError, match="`kerasalex study` has no option for 'run_dir'"):
        O.command_line("study", {"run_dir": "r"})
    with pytest.raises(ValueError, match="command must be one of"):
        O.command_options("export")


def test_a_new_train_option_reaches_tune_and_study_with_no_other_edit(monkeypatch):
    """Declaring `warmup_epochs` in the table (it is a recipe-only field
    today) is all it takes: tune and study take it, tune fixes it in every
    trial, study pins it, and the commands they print carry it."""
    monkeypatch.setitem(O.TRAIN_OPTIONS, "warmup_epochs", O._opt("--warmup-epochs", type=float, default=None, help="w"))
    monkeypatch.delitem(O.NOT_OPTIONS, "warmup_epochs")
    for command in ("tune", "study"):
        fresh = O.decorate(command)(click.command()(lambda **kw: kw))
        assert "warmup_epochs" in {p.name for p in fresh.params}

    from kerasalex import study, tuning

    config = tuning.TuneConfig(dataset="digits", train_options={"warmup_epochs": 0.5})
    assert config.base_config().warmup_epochs == 0.5
    assert config.settings()["train_options"] == {"warmup_epochs": 0.5}
    searched = tuning.TuneConfig(dataset="digits", search_space={"warmup_epochs": {"min": 0.0, "max": 2.0}},
                                 train_options={"warmup_epochs": 1.5})
    assert searched.space()["warmup_epochs"] == {"fixed": 1.5}  # given: no longer searched
    assert "--warmup-epochs 0.5" in tuning.command_line(config)

    train_options, weights = study._split_options({"warmup_epochs": 0.5, "alexnet_weights": None})
    settings = study._settings("default", "digits", train_options)
    assert settings["warmup_epochs"] == 0.5 and weights == {}
    assert "--warmup-epochs 0.5" in study.study_command(settings, ["alexnet"], "s")


def test_tune_cli_fixes_a_train_option_in_every_trial(monkeypatch, tmp_path):
    """`tune --lr 0.05 --jit-compile off`: the search's TuneConfig carries them
    (lr, in the space, becomes fixed) and its resume command repeats them."""
    from kerasalex import tuning

    seen = {}

    def fake_search(config, **kwargs):
        seen["config"] = config
        raise ValueError("captured")

    monkeypatch.setattr(tuning, "search", fake_search)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["tune", "--dataset", "digits", "--lr", "0.05", "--jit-compile", "off", "--limit", "150"],
                           catch_exceptions=False)
    assert r.exit_code == 1 and "captured" in r.output
    config = seen["config"]
    assert config.train_options == {"lr": 0.05, "jit_compile": "off"} and config.limit == 150
    assert config.space()["lr"] == {"fixed": 0.05} and config.base_config().jit_compile == "off"
    parsed = _parse("tune", tuning.command_line(config))
    assert (parsed["lr"], parsed["jit_compile"], parsed["limit"], parsed["dataset"]) == (0.05, "off", 150, "digits")


def test_study_cli_passes_every_train_option_to_run_study(monkeypatch, tmp_path):
    import kerasalex.study

    seen = {}

    def fake_study(**kwargs):
        seen.update(kwargs)
        raise ValueError("captured")

    monkeypatch.setattr(kerasalex.study, "run_study", fake_study)
    r = CliRunner().invoke(cli, ["study", "--dataset", "digits", "--lr", "0.01", "--no-augment", "--vgg-weights", "none",
                                 "--models", "alexnet,vgg16"], catch_exceptions=False)
    assert r.exit_code == 1 and "captured" in r.output
    assert seen["lr"] == 0.01 and seen["augment"] is False and seen["vgg_weights"] == "none"
    assert seen["models"] == ["alexnet", "vgg16"] and seen["epochs"] is None
    with pytest.raises(ValueError, match="a study does not take run_dir"):
        kerasalex.study._split_options({"run_dir": "r"})
    with pytest.raises(ValueError, match="unknown study option 'learning_rate'"):
        kerasalex.study._split_options({"learning_rate": 0.1})
