"""keras-tuner's oracles with kerasalex's state handling: every state file
written atomically, a copy of every trial kept in ``oracle.json``, and a
reload that repairs damaged files instead of crashing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import keras_tuner

from kerasalex import files
from kerasalex.tuning._common import trial_sort_key, warn
from kerasalex.tuning._keras_tuner_internals import Trial, TrialStatus

if TYPE_CHECKING:
    from kerasalex.tuning.settings import TuneConfig


class _SafeOracle:
    """Mixin for keras-tuner oracles: state written atomically, a copy of
    every trial kept in ``oracle.json``, and a reload that repairs damaged
    files instead of crashing."""

    def save(self):
        files.atomic_write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        files.atomic_write_json(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", trial.get_state())

    def get_state(self):
        state = super().get_state()
        state["kerasalex_trials"] = {tid: t.get_state() for tid, t in self.trials.items()}
        return state

    def reload(self):
        project = Path(self._project_dir)
        oracle_file = project / "oracle.json"
        state = _read_oracle_state(oracle_file)
        self._reload_trials(project, (state or {}).get("kerasalex_trials") or {}, oracle_file)
        if state is not None:
            known = set(self.trials)
            state["ongoing_trials"] = {k: v for k, v in state.get("ongoing_trials", {}).items() if v in known}
            for key in ("start_order", "end_order", "retry_queue"):
                state[key] = [t for t in state.get(key, []) if t in known]
            try:
                self.set_state(state)
            except (KeyError, TypeError, ValueError) as exc:
                warn(f"{oracle_file} does not hold a search state this version reads ({type(exc).__name__}: {exc}); rebuilding it from the trial files")
                state = None
        if state is None:
            self._rebuild_state()
            self.save()
        self._requeue_unfinished()

    def _reload_trials(self, project: Path, copies: dict, oracle_file: Path) -> None:
        """Loads every ``trial_*/trial.json``; a damaged or missing one comes
        back from its copy in ``oracle.json`` (else counts as failed)."""
        for tdir in sorted(project.glob("trial_*")):
            tid = tdir.name[len("trial_"):]
            f = tdir / "trial.json"
            trial = None
            if f.exists():
                try:
                    trial = Trial.load(str(f))
                except Exception as exc:  # truncated JSON, missing keys, bad values
                    if tid in copies:
                        warn(f"{f} is unreadable ({type(exc).__name__}); restored it from {oracle_file}")
                    else:
                        warn(f"{f} is unreadable ({type(exc).__name__}) and has no copy; trial {tid} is counted as failed")
                        trial = Trial(
                            keras_tuner.HyperParameters(), trial_id=tid, status=TrialStatus.FAILED,
                            message=f"{f} was unreadable; its result is lost",
                        )
            if trial is None and tid in copies:
                trial = Trial.from_state(copies[tid])
                self._save_trial(trial)
            if trial is not None:
                self.trials[trial.trial_id] = trial
        for tid, copy in copies.items():
            if tid not in self.trials:
                trial = Trial.from_state(copy)
                self.trials[tid] = trial
                self._save_trial(trial)

    def _requeue_unfinished(self) -> None:
        """Trials that were running when the search stopped run again."""
        for _, trial in self.ongoing_trials.items():
            if trial.trial_id not in self._retry_queue:
                self._retry_queue.append(trial.trial_id)
        self.ongoing_trials = {}
        ended = set(self.end_order)
        for tid, trial in sorted(self.trials.items(), key=lambda kv: trial_sort_key(kv[0]), reverse=True):
            if tid not in ended and tid not in self._retry_queue and trial.status != TrialStatus.COMPLETED:
                self._retry_queue.append(tid)

    def _rebuild_state(self):
        ids = sorted(self.trials, key=trial_sort_key)
        done = (TrialStatus.COMPLETED, TrialStatus.FAILED)
        ended = [t for t in ids if self.trials[t].status in done]
        hashes = {t: self._compute_values_hash(self.trials[t].hyperparameters.values) for t in ids}
        # A fresh state (this oracle's own fields at their start values, e.g.
        # Hyperband's brackets), with what the trial files tell.
        state = self.get_state()
        state.update(
            ongoing_trials={}, start_order=ids, end_order=ended, run_times={t: 1 for t in ended},
            retry_queue=[t for t in reversed(ids) if t not in ended], tried_so_far=sorted(set(hashes.values())),
            id_to_hash=hashes, seed_state=int(self.seed) + 1000 * len(ids),
            display={"search_start": None, "trial_start": {}, "trial_number": {}},
        )
        self.set_state(state)


def _read_oracle_state(oracle_file: Path) -> dict | None:
    """``oracle.json``'s state, or None (with a warning) when it is unreadable."""
    try:
        state = json.loads(oracle_file.read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        warn(f"{oracle_file} is unreadable ({exc}); rebuilding the search state from the trial files")
        return None
    return state


class RandomOracle(_SafeOracle, keras_tuner.oracles.RandomSearchOracle):
    """keras-tuner's random search with kerasalex's state handling."""


class BayesianOracle(_SafeOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    """keras-tuner's Gaussian-process Bayesian optimization with kerasalex's state handling."""

    def populate_space(self, trial_id):
        import warnings

        # A few noisy points often put a length scale at its bound; scikit-learn
        # warns each time, which says nothing to the user.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
            return super().populate_space(trial_id)


class HyperbandOracle(_SafeOracle, keras_tuner.oracles.HyperbandOracle):
    """keras-tuner's Hyperband with kerasalex's state handling."""


def make_oracle(config: "TuneConfig", num_hyperparameters: int):
    """The oracle for ``config.tuner``."""
    common = dict(objective=config.objective, seed=(config.seed or 0) + 1, max_consecutive_failed_trials=5)
    if config.tuner == "random":
        return RandomOracle(max_trials=config.trials_limit, **common)
    if config.tuner == "bayesian":
        trials = config.trials_limit
        # keras-tuner's default (3 random points per dimension) leaves no
        # trial to the Gaussian process in a short search: use a third of it.
        initial = max(2, min(3 * num_hyperparameters, math.ceil(trials / 3)))
        return BayesianOracle(max_trials=trials, num_initial_points=initial, **common)
    oracle = HyperbandOracle(max_epochs=config.max_epochs, factor=config.factor, **common)
    oracle.max_trials = config.trials_limit
    return oracle
