"""The HyperModel: one architecture of the model table per trial, built by
its own builder and trained by the same loop as ``train``."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import keras_tuner

from kerasalex import files
from kerasalex.config import TrainConfig, rules_off, run_length_rules, split_epochs
from kerasalex.tuning._common import objective_direction
from kerasalex.tuning.settings import OBJECTIVES
from kerasalex.tuning.space import define_hyperparameter


class KerasalexHyperModel(keras_tuner.HyperModel):
    """Builds and trains one architecture of the model table per trial.

    ``build(hp)`` calls the architecture's builder (``dropout`` is its
    argument), puts the augmentation front before it when ``augment``
    (:func:`kerasalex.models.training_model`) and compiles with
    :func:`kerasalex.training.compile_model`; ``fit`` trains through the same
    loop as ``train``, with early stopping on the objective.

    Args:
        base: the training options every trial starts from.
        space: the validated search space.
        data: the loaded data (train and validation splits).
        objective: the metric to optimize (e.g. ``val_accuracy``).
        max_epochs: epochs per trial (Hyperband sets its own per trial).
        patience: early-stopping patience, in epochs.
        verbose: Keras ``fit`` verbosity.
    """

    def __init__(self, base: TrainConfig, space: dict, data, objective: str = "val_accuracy",
                 max_epochs: int = 10, patience: int = 3, verbose: int | str = 2):
        super().__init__(name=base.arch, tunable=True)
        self.base = base
        self.space = space
        self.data = data
        self.objective = objective
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.verbose = verbose
        # Executions of one trial differ in their seed.
        self.seed_offset = 0

    def declare_hyperparameters(self, hp):
        for name, spec in self.space.items():
            define_hyperparameter(hp, name, spec)

    def trial_config(self, hp, epochs: int | None = None) -> TrainConfig:
        """The TrainConfig of a trial: the base options with ``hp``'s values;
        with ``epochs`` (the trial's), the recipe's run-length rules applied
        to them as ``train`` applies them to a run
        (:func:`kerasalex.config.run_length_rules`). A searched value counts
        as given, as in ``train --hparams``: its rule is off."""
        values = {name: define_hyperparameter(hp, name, spec) for name, spec in self.space.items()}
        config = self.base.replace(**values, **rules_off(values))
        if epochs is not None:
            # The rules see the trial's epochs; `epochs` itself stays the
            # base's (fit splits a two-stage trial's epochs by it).
            config = run_length_rules(config.replace(epochs=int(epochs)), len(self.data.train))[0].replace(epochs=config.epochs)
        return config

    @staticmethod
    def trial_epochs(hp, max_epochs: int) -> tuple[int, int]:
        """(epochs, initial_epoch) of a trial: Hyperband's, else (max_epochs, 0)."""
        values = hp.values
        return int(values.get("tuner/epochs", max_epochs)), int(values.get("tuner/initial_epoch", 0))

    def build(self, hp):
        from kerasalex.data import steps_per_epoch
        from kerasalex.training import build_training_model, compile_model

        epochs, initial = self.trial_epochs(hp, self.max_epochs)
        config = self.trial_config(hp, epochs)
        seed = config.seed + self.seed_offset
        keras.utils.set_random_seed(seed)
        # The same model as `train` builds (options, augmentation front).
        model = build_training_model(config, self.data, seed=seed)
        steps = steps_per_epoch(len(self.data.train), config.batch_size)
        # The schedule spans the epochs this trial runs (a Hyperband round
        # that continues a model starts a fresh optimizer).
        compile_model(model, config, steps, total_epochs=max(1, epochs - initial))
        return model

    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=(), trial_dir=None, **kwargs):
        """Trains ``model``; returns the metrics of its best epoch plus
        ``best_epoch`` (1-based, counting from the first epoch of the model)
        and ``epochs`` (epochs run)."""
        from kerasalex import callbacks as C
        from kerasalex.models import get_architecture
        from kerasalex.training import training_loop

        epochs = int(epochs or self.max_epochs)
        config = self.trial_config(hp, epochs).replace(seed=self.base.seed + self.seed_offset)
        if config.fine_tune_epochs:
            # A two-stage model (vgg16): the trial's epochs are its total, split as `train --epochs` splits them.
            head, fine = split_epochs(epochs, config.epochs, config.fine_tune_epochs)
            config = config.replace(epochs=head, fine_tune_epochs=fine)
        else:
            config = config.replace(epochs=epochs)
        history = C.EpochHistory(trial_dir, len(self.data.train), plot=False) if trial_dir else _Rows()
        early = keras.callbacks.EarlyStopping(
            monitor=self.objective, mode=objective_direction(self.objective), patience=self.patience,
        )
        cbs = [C.StopOnDivergence(), history, early, *callbacks]
        fit = training_loop(get_architecture(config.arch).loop)
        fit(model, config, self.data, cbs, self.verbose, int(initial_epoch))
        rows = [r for r in history.rows if r.get(self.objective) is not None and math.isfinite(r[self.objective])]
        if not rows:
            raise keras_tuner.errors.FailedTrialError(f"no epoch reported a finite {self.objective}")
        pick = min if objective_direction(self.objective) == "min" else max
        best = pick(rows, key=lambda r: r[self.objective])
        metrics = {k: float(best[k]) for k in OBJECTIVES if best.get(k) is not None}
        metrics["best_epoch"] = float(best["epoch"])
        metrics["epochs"] = float(len(history.rows))
        return metrics


class _Rows(keras.callbacks.Callback):
    """EpochHistory's rows without files (a trial with no folder)."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))})
        self.rows.append(row)


class BestWeights(keras.callbacks.Callback):
    """Saves the weights of the best epoch so far, atomically (Hyperband
    continues a trial's model in a later round from them)."""

    def __init__(self, path, objective: str):
        super().__init__()
        self.path = Path(path)
        self.objective = objective
        self.best: float | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.objective)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        better = self.best is None or (value < self.best if objective_direction(self.objective) == "min" else value > self.best)
        if better:
            self.best = value
            files.save_model(self.model, self.path)
