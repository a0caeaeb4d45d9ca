"""keras-tuner's tuners with kerasalex's trial loop (memory freed after every
execution; trial metrics with epochs, seconds and memory; interruption that
keeps the trial for a rerun) and the chief of a distributed search."""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras_tuner

from kerasalex import files
from kerasalex.tuning import _keras_tuner_internals as internals
from kerasalex.tuning._common import say, warn
from kerasalex.tuning._keras_tuner_internals import TrialStatus, forget_traced_gradients
from kerasalex.tuning.hypermodel import BestWeights
from kerasalex.tuning.memory import free_memory, memory_mb, reset_peak_memory


class StopCheck:
    """Raises TrainingInterrupted between trials once a stop signal arrived."""

    def __init__(self, stop):
        self.stop = stop

    def __call__(self):
        from kerasalex.callbacks import TrainingInterrupted
        import signal

        if self.stop is not None and self.stop.received is not None:
            raise TrainingInterrupted(f"stopped by signal {signal.Signals(self.stop.received).name}")


class _KerasalexTuner:
    """Mixin for keras-tuner tuners: our own trial loop (memory freed after
    every execution, trial metrics with epochs, seconds and memory), atomic
    state files, interruption that keeps the trial for a rerun, and a chief
    that exits as soon as the last worker is done."""

    def __init__(self, oracle, hypermodel, stop=None, keep_checkpoints=False, **kwargs):
        self.stop = stop
        self.keep_checkpoints = keep_checkpoints
        self.trials_run: list[str] = []
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    # --- state -------------------------------------------------------------

    def _populate_initial_space(self):
        # Our space has no conditional entries: declaring it is enough, no
        # model needs building to discover it.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def reload(self):
        if not self._is_worker():
            self.oracle.reload()
            self._populate_initial_space()
        # The tuner's own state is empty ({}), so a damaged file loses nothing.

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        files.atomic_write_json(self._get_tuner_fname(), self.get_state())

    # --- the loop ----------------------------------------------------------

    def search(self, *fit_args, **fit_kwargs):
        if internals.is_chief_oracle():
            self.oracle.verbose = fit_kwargs.get("verbose", 1)
            self.save()
            serve_oracle(self.oracle, StopCheck(self.stop))
            return
        return super().search(*fit_args, **fit_kwargs)

    def pre_create_trial(self):
        StopCheck(self.stop)()

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        epochs, initial = self.hypermodel.trial_epochs(hp, self.hypermodel.max_epochs)
        t0 = time.perf_counter()
        reset_peak_memory()
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        best_weights = BestWeights(self._get_checkpoint_fname(trial.trial_id), self.hypermodel.objective) if self.keep_checkpoints else None
        results = []
        for execution in range(self.executions_per_trial):
            StopCheck(self.stop)()
            self.hypermodel.seed_offset = execution
            run_dir = trial_dir if self.executions_per_trial == 1 else trial_dir / f"execution{execution}"
            with forget_traced_gradients():
                model = self._try_build(hp)
                if execution == 0 and self.keep_checkpoints:
                    files.atomic_write_json(self._get_build_config_fname(trial.trial_id), model.get_build_config())
                try:
                    results.append(
                        self.hypermodel.fit(
                            hp, model, epochs=epochs, initial_epoch=initial,
                            callbacks=[c for c in (best_weights, self.stop) if c is not None], trial_dir=run_dir,
                        )
                    )
                finally:
                    # The shared callbacks must not keep the model alive.
                    for c in (best_weights, self.stop):
                        if c is not None:
                            c.set_model(None)
                    del model
            free_memory()
        seconds = time.perf_counter() - t0
        mem = memory_mb()
        for r in results:
            r["seconds"] = round(seconds, 2)
            if mem["rss"] is not None:
                r["rss_mb"] = round(mem["rss"], 1)
                r["peak_rss_mb"] = round(mem["hwm"], 1)
        return results

    def _try_run_and_update_trial(self, trial, *fit_args, **fit_kwargs):
        from kerasalex.callbacks import TrainingDiverged, TrainingInterrupted

        import traceback

        try:
            self._run_and_update_trial(trial, *fit_args, **fit_kwargs)
            trial.status = TrialStatus.COMPLETED
            return
        except (TrainingInterrupted, KeyboardInterrupt, keras_tuner.errors.FatalError):
            # Leave the trial "running" in the oracle: a rerun runs it again.
            raise
        except TrainingDiverged as exc:
            trial.status = TrialStatus.FAILED
            trial.message = f"diverged: {exc}"
        except keras_tuner.errors.FailedTrialError as exc:
            trial.status = TrialStatus.FAILED
            trial.message = str(exc)
        except Exception as exc:
            trial.status = TrialStatus.INVALID
            trial.message = traceback.format_exc()
            warn(f"trial {trial.trial_id} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.trials_run.append(trial.trial_id)
        say(f"trial {trial.trial_id} {trial.status.lower()} on {self.tuner_id}"
             + (f": {trial.message.strip().splitlines()[-1]}" if trial.message else ""))


class SearchTuner(_KerasalexTuner, keras_tuner.Tuner):
    """Random search or Bayesian optimization over a :class:`KerasalexHyperModel`."""


class HyperbandTuner(_KerasalexTuner, keras_tuner.Hyperband):
    """Hyperband over a :class:`KerasalexHyperModel` (later rounds continue a
    trial's model from its best-epoch weights)."""

    def _build_hypermodel(self, hp):
        import warnings

        # The checkpoint holds the previous round's optimizer variables too;
        # a continued round starts a fresh optimizer, as keras-tuner intends.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return super()._build_hypermodel(hp)


# --------------------------------------------------------------------------
# The chief (distributed search)
# --------------------------------------------------------------------------


def serve_oracle(oracle, check_stop=None, poll_seconds: float = 0.5) -> None:
    """Serves ``oracle`` to the workers over gRPC until the search is over.

    keras-tuner's own server, with a shorter poll (it sleeps 20 s between
    checks), a stop check, and a clean shutdown.

    Raises:
        ValueError: the address in KERASTUNER_ORACLE_IP/PORT cannot be bound.
    """
    from concurrent import futures

    import grpc

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer, add_to_server = internals.oracle_servicer(oracle)
    add_to_server(servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ValueError(f"--chief {address}: cannot listen there ({exc})") from None
    if not port:
        raise ValueError(f"--chief {address}: cannot listen there (address in use or not on this machine)")
    server.start()
    say(f"chief: serving the search at {address}; start workers with --worker {address} --worker-id ID")
    try:
        while True:
            if check_stop is not None:
                check_stop()
            if servicer.stop_triggered and internals.chief_may_exit(oracle):
                break
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=2)
