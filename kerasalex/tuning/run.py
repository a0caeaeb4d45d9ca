"""The search from end to end: check the folder, load the data, run the
tuner (or serve it, or work for it), then write the reports and retrain the
best trial."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

from kerasalex import files
from kerasalex.config import TrainConfig
from kerasalex.tuning import _keras_tuner_internals as internals
from kerasalex.tuning._common import say
from kerasalex.tuning.hypermodel import KerasalexHyperModel
from kerasalex.tuning.memory import free_memory, quiet_trial_retracing
from kerasalex.tuning.oracles import make_oracle
from kerasalex.tuning.results import (
    best_hparams, best_trial, exhausted_note, retrain_options, trial_metrics, trial_rows, write_trial_table,
)
from kerasalex.tuning.retrain import retrain
from kerasalex.tuning.settings import TuneConfig, check_settings, command_line, train_command
from kerasalex.tuning.tuners import HyperbandTuner, SearchTuner, StopCheck


@dataclasses.dataclass
class SearchResult:
    """What a search produced (on the chief / a single process)."""

    project_dir: Path
    trials: list[dict]
    best: dict | None
    hparams_path: Path | None
    model_path: Path | None
    role: str


def role() -> str:
    """``chief``, ``worker`` or ``single``, from the KERASTUNER_* environment."""
    if not internals.has_chief_oracle():
        return "single"
    return "chief" if internals.is_chief_oracle() else "worker"


def search(config: TuneConfig, overwrite: bool = False, stop=None, verbose: int | str = "auto") -> SearchResult:
    """Runs (or continues) a search, then writes the table, ``best_hparams.json``
    and the best model retrained on train+validation.

    In distributed mode (KERASTUNER_ORACLE_IP/PORT/TUNER_ID set, see
    ``kerasalex tune --help``) the chief serves the oracle and writes the
    outputs; a worker runs trials until the chief has none left.

    Args:
        config: the search options.
        overwrite: delete an existing search of the same name first.
        stop: a :class:`kerasalex.callbacks.GracefulStop`, installed by the
            caller, that ends the search at the next batch on SIGTERM/SIGINT.
        verbose: Keras ``fit`` verbosity ("auto": a bar on a terminal).

    Returns:
        A :class:`SearchResult`.

    Raises:
        ValueError: bad options, data, search space, or a search folder made
            with other settings.
        TrainingInterrupted: a stop signal arrived; the search state is saved
            and rerunning the same command continues it.
    """
    from kerasalex.models import get_architecture

    who = role()
    get_architecture(config.arch)
    base = config.base_config()
    space = config.space()
    project = _open_project(config, who, overwrite)
    if config.objective.startswith("val_") and not base.val_split:
        raise ValueError(f"objective {config.objective} needs a validation split; pass --val-split > 0 or --objective {config.objective[4:]}")
    data = _prepare(config, base, space, project)
    StopCheck(stop)()

    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    hypermodel = KerasalexHyperModel(base, space, data, config.objective, config.max_epochs, config.patience, verbose)
    _say_trial_rules(base, space, len(data.train), config.max_epochs)
    tuner = _make_tuner(config, hypermodel, project, who, stop)
    with quiet_trial_retracing():
        tuner.search(verbose=1 if verbose else 0)
    free_memory()

    if who == "worker":
        say(f"worker {os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')} finished: ran trial(s) {', '.join(tuner.trials_run) or 'none'}")
        return SearchResult(project, [], None, None, None, who)
    return _finish(config, tuner, hypermodel, data, project, stop, who)


def _say_trial_rules(base: TrainConfig, space: dict, train_images: int, max_epochs: int) -> None:
    """One line: the recipe's run-length rules as a trial of ``max_epochs``
    epochs gets them (each trial applies them to its own epochs; a searched
    name's rule is off)."""
    from kerasalex.config import rules_off, run_length_rules

    augment_searched = "augment" in space and "fixed" not in space["augment"]
    config = base.replace(epochs=int(max_epochs), **rules_off(dict.fromkeys(space)))
    notes = run_length_rules(config.replace(augment=True) if augment_searched else config, train_images)[2]
    if augment_searched:
        notes = [f"{n} (for trials that augment)" if n.startswith("augmentation:") else n for n in notes]
    if notes:
        say(f"trials of {max_epochs} epoch{'' if max_epochs == 1 else 's'} apply train's run-length rules (each trial to its own epochs): " + "; ".join(notes))


def _open_project(config: TuneConfig, who: str, overwrite: bool) -> Path:
    """The search folder, emptied on ``overwrite`` (never by a worker), with
    its settings checked (and written by the chief or a single process)."""
    project = config.project_dir
    if who == "worker":
        overwrite = False  # never delete the chief's search from a worker
    if overwrite and project.exists():
        shutil.rmtree(project)
    if who != "worker":
        project.mkdir(parents=True, exist_ok=True)
        files.remove_stale_temps(project)
    check_settings(project, config.settings(), write=who != "worker")
    return project


def _prepare(config: TuneConfig, base: TrainConfig, space: dict, project: Path):
    """Sets the dtype policy and loads the data, saying what it found."""
    from kerasalex.training import explain_precision, prepare_data, resolve_precision, set_precision

    precision = resolve_precision(base.precision)
    set_precision(precision)
    searched = {name for name, spec in space.items() if "fixed" not in spec}
    say(explain_precision(base.precision, precision, base.arch, None if "batch_size" in searched else base.batch_size))
    data = prepare_data(base)  # the same data path as train
    say(
        f"{data.name}: {len(data.train)} training / {len(data.val) if data.val is not None else 0} validation images "
        f"{data.image_shape}, {data.num_classes} classes; searching {config.tuner} in {project}"
    )
    return data


def _make_tuner(config: TuneConfig, hypermodel: KerasalexHyperModel, project: Path, who: str, stop):
    """The tuner of ``config.tuner`` over ``hypermodel``, reloaded from ``project``."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    oracle_file = project / "oracle.json"
    tuner_file = project / f"{tuner_id}.json"
    if who != "worker" and oracle_file.exists() and not tuner_file.exists():
        # keras-tuner reloads only when this tuner's own file exists; a search
        # started by another role (or killed early) still has to be reloaded.
        files.atomic_write_json(tuner_file, {})
    cls = HyperbandTuner if config.tuner == "hyperband" else SearchTuner
    tuner = cls(
        oracle=make_oracle(config, len(hypermodel.space)), hypermodel=hypermodel, stop=stop,
        keep_checkpoints=config.tuner == "hyperband", directory=str(config.directory),
        project_name=config.project_name, overwrite=False, executions_per_trial=int(config.executions_per_trial),
    )
    if who != "worker":
        done = sum(1 for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED"))
        if done:
            rerun = len(internals.retry_queue(tuner.oracle))
            say(f"continuing the search in {project}: {done} trial(s) finished, {rerun} to rerun")
    return tuner


def _finish(config: TuneConfig, tuner, hypermodel, data, project: Path, stop, who: str) -> SearchResult:
    """Writes the trial table, ``best_hparams.json`` and ``best_trial.json``,
    then retrains the best trial (``config.retrain``)."""
    ended = exhausted_note(tuner.oracle, config.trials_limit)
    if ended:
        say(ended)
    trials = trial_rows(tuner.oracle, hypermodel.space, hypermodel.base.optimizer)
    write_trial_table(project, trials, config.objective)
    best = best_trial(tuner.oracle)
    if best is None:
        raise ValueError(f"no trial of the search in {project} completed; see {project / 'trials.md'}")
    hparams = best_hparams(config, hypermodel, best, data)
    budget = retrain_options(config, best, data)
    hparams_path = project / "best_hparams.json"
    files.atomic_write_json(hparams_path, hparams)
    files.atomic_write_json(project / "best_trial.json", {
        "trial_id": best.trial_id, "objective": config.objective, "score": best.score,
        "metrics": trial_metrics(best), "hparams": str(hparams_path), "retrain_options": budget,
        "train_command": train_command(config, hparams_path), "tune_command": command_line(config),
    })
    model_path = None
    if config.retrain:
        StopCheck(stop)()
        model_path = retrain(config, hparams, project, budget)
    best_row = next(r for r in trials if r["trial"] == best.trial_id)
    return SearchResult(project, trials, best_row, hparams_path, model_path, who)
