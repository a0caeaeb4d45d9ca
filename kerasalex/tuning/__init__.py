"""The keras-tuner search: a HyperModel over the model table, resumable and
distributable, that hands its best hyperparameters back to ``train``.

``build(hp)`` calls the same builder ``train`` uses and ``fit`` trains through
the same loop (:func:`kerasalex.training.fit_standard` or the architecture's
own), with hyperparameter names equal to the :class:`~kerasalex.config.TrainConfig`
fields they set (``lr``, ``optimizer``, ``batch_size``, ``augment``, ...).
A search lives in ``<directory>/<name>/`` (keras-tuner's project folder):

    kerasalex_search.json   the settings that define the search (a rerun with
                            other settings is refused)
    oracle.json             the oracle's state, with a copy of every trial
    trial_<id>/trial.json   each trial (hyperparameters, metrics, status)
    trial_<id>/history.*    the trial's per-epoch history
    trials.csv, trials.md   the table of trials
    best_hparams.json       the best trial's train options (``train --hparams``)
    retrain/                the run that retrained the best trial on train+val

Every state file is written atomically (:mod:`kerasalex.files`). Rerunning the
same command continues the search: finished trials are kept, an interrupted
trial is run again. A damaged ``trial.json`` is restored from the copy in
``oracle.json``; a damaged ``oracle.json`` is rebuilt from the trial files
(Hyperband then restarts its bracket schedule; finished trials stay).

The package, by concern: :mod:`~kerasalex.tuning.space` (the search-space
schema), :mod:`~kerasalex.tuning.settings` (:class:`TuneConfig`, the settings
file, the commands that rerun a search), :mod:`~kerasalex.tuning.hypermodel`,
:mod:`~kerasalex.tuning.oracles` (state files and their repair),
:mod:`~kerasalex.tuning.tuners` (the trial loop and the distributed chief),
:mod:`~kerasalex.tuning.results` (trial tables, best trial),
:mod:`~kerasalex.tuning.retrain`, :mod:`~kerasalex.tuning.run` (the search
from end to end) and :mod:`~kerasalex.tuning.memory`. Every private
keras-tuner name is in :mod:`~kerasalex.tuning._keras_tuner_internals`.
"""

from __future__ import annotations

from kerasalex.tuning import _keras_tuner_internals  # noqa: F401  (checks the keras-tuner version first)
from kerasalex.tuning.hypermodel import KerasalexHyperModel
from kerasalex.tuning.memory import forget_traced_gradients, free_memory, memory_mb, quiet_trial_retracing, reset_peak_memory
from kerasalex.tuning.oracles import BayesianOracle, HyperbandOracle, RandomOracle, make_oracle
from kerasalex.tuning.results import (
    best_hparams, best_trial, exhausted_note, retrain_options, trial_rows, trial_table_markdown, write_trial_table,
)
from kerasalex.tuning.retrain import retrain
from kerasalex.tuning.run import SearchResult, role, search
from kerasalex.tuning.settings import (
    OBJECTIVES, SETTINGS_FILE, TUNERS, TuneConfig, check_settings, command_line, train_command,
)
from kerasalex.tuning.space import (
    DEFAULT_SEARCH_SPACE, SAMPLINGS, SGD_ONLY, TUNABLE, define_hyperparameter, load_search_space, space_size,
    validate_search_space,
)
from kerasalex.tuning.tuners import HyperbandTuner, SearchTuner, serve_oracle

__all__ = [
    "BayesianOracle", "DEFAULT_SEARCH_SPACE", "HyperbandOracle", "HyperbandTuner", "KerasalexHyperModel",
    "OBJECTIVES", "RandomOracle", "SAMPLINGS", "SETTINGS_FILE", "SGD_ONLY", "SearchResult", "SearchTuner",
    "TUNABLE", "TUNERS", "TuneConfig", "best_hparams", "best_trial", "check_settings", "command_line",
    "define_hyperparameter", "exhausted_note", "forget_traced_gradients", "free_memory", "load_search_space",
    "make_oracle", "memory_mb", "quiet_trial_retracing", "reset_peak_memory", "retrain", "retrain_options", "role",
    "search", "serve_oracle", "space_size", "train_command", "trial_rows", "trial_table_markdown",
    "validate_search_space", "write_trial_table",
]
