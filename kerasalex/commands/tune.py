"""``kerasalex tune``."""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from kerasalex.commands import user_errors
from kerasalex.options import decorate


def _address(flag: str, value: str) -> tuple[str, str]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT (e.g. 127.0.0.1:8000). Received: {value!r}", param_hint=flag)
    return host.strip("[]"), port


def configure_distributed(chief: str | None, worker: str | None, worker_id: str | None) -> str:
    """Sets keras-tuner's KERASTUNER_* variables from --chief/--worker (before
    keras_tuner is imported) and returns the role: single, chief or worker."""
    if chief and worker:
        raise click.UsageError("--chief and --worker exclude each other: a process is the chief or a worker")
    if worker_id and not worker:
        raise click.UsageError("--worker-id needs --worker HOST:PORT")
    if chief:
        host, port = _address("--chief", chief)
        os.environ.update(KERASTUNER_TUNER_ID="chief", KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port)
    elif worker:
        host, port = _address("--worker", worker)
        wid = worker_id or os.environ.get("KERASTUNER_TUNER_ID")
        if not wid:
            raise click.UsageError("--worker needs --worker-id ID (unique per worker, kept across restarts)")
        if "chief" in wid:
            raise click.BadParameter(f"a worker id must not contain 'chief'. Received: {wid!r}", param_hint="--worker-id")
        os.environ.update(KERASTUNER_TUNER_ID=wid, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port)
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise click.UsageError(f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not; set all three or none")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


@click.command()
@decorate("tune")
def tune(chief, worker, worker_id, overwrite, search_space, **options):
    """Search hyperparameters with keras-tuner; hand the best to `train`.

    Each trial builds the model with the same builder and trains it through
    the same loop as `train`, with the recipe's run-length rules applied to
    its own epochs (a searched name's rule is off), and early stopping on
    the objective. At the
    end: trials.csv/trials.md, best_hparams.json (for `train --hparams`) and
    the best trial retrained on train+validation as a .keras file.

    Every `train` option is taken too: given, it is fixed in every trial (a
    name the search space holds is then not searched) and in the retrain.

    Interrupted (Ctrl-C, kill), the same command continues the search:
    finished trials are kept, the interrupted one runs again.

    \b
    Several workers (keras-tuner's distributed mode; or set KERASTUNER_TUNER_ID,
    KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT yourself). Same options on all:
      kerasalex tune --arch alexnet --chief chief-host:8000 &
      kerasalex tune --arch alexnet --worker chief-host:8000 --worker-id gpu0 &
      kerasalex tune --arch alexnet --worker chief-host:8000 --worker-id gpu1
    Hyperband workers need the search folder on a shared filesystem.

    \b
    Examples:
      kerasalex tune --arch alexnet --dataset digits --max-trials 5 --max-epochs 3
      kerasalex tune --arch alexnet --tuner hyperband --max-epochs 27
      kerasalex train --hparams tuning/alexnet-cifar10-bayesian/best_hparams.json --dataset cifar10
    """
    with user_errors():
        role = configure_distributed(chief, worker, worker_id)
        # keras_tuner reads the KERASTUNER_* variables: import it only now.
        from kerasalex import tuning
        from kerasalex.callbacks import GracefulStop, TrainingDiverged, TrainingInterrupted

        space = tuning.load_search_space(search_space)
        own = {f.name for f in dataclasses.fields(tuning.TuneConfig)}
        fixed = {k: v for k, v in options.items() if k not in own and v is not None}
        config = tuning.TuneConfig(search_space=space, search_space_file=search_space, train_options=fixed or None,
                                   **{k: v for k, v in options.items() if k in own})
        stop = GracefulStop().install()
        try:
            result = tuning.search(config, overwrite=overwrite, stop=stop)
        except TrainingInterrupted as exc:
            signum = stop.received
            if role == "worker":
                how = f"restart this worker with --worker-id {os.environ.get('KERASTUNER_TUNER_ID')} to run its trial again"
            else:
                how = f"rerun the same command (without --overwrite) to continue it:\n  {tuning.command_line(config)}"
            click.echo(f"Interrupted: {exc}. The search state is saved in {config.project_dir}; {how}", err=True)
            sys.exit(128 + int(signum) if signum else 130)
        except TrainingDiverged as exc:
            raise click.ClickException(str(exc)) from None
        except RuntimeError as exc:
            # keras-tuner stops a search after too many failed trials.
            lines = [l for l in str(exc).strip().splitlines() if l.strip()]
            raise click.ClickException(
                f"search stopped: {lines[0] if lines else type(exc).__name__}"
                + (f" (last error: {lines[-1].strip()})" if len(lines) > 1 else "")
                + f"; see {config.project_dir}"
            ) from None
        finally:
            stop.uninstall()
    if result.role == "worker":
        return
    click.echo("")
    click.echo(tuning.trial_table_markdown(result.trials, config.objective).rstrip())
    b = result.best
    click.echo(
        f"\nBest trial {b['trial']}: {config.objective} {b['score']:.4f} after {int(b['best_epoch'] or 0)} epoch(s). "
        f"Table: {result.project_dir / 'trials.md'}"
    )
    click.echo(f"Best hyperparameters: {result.hparams_path}")
    if result.model_path is not None:
        click.echo(f"Best model (retrained on train+validation): {result.model_path}")
    click.echo(f"Reproduce: {tuning.train_command(config, result.hparams_path)}")
