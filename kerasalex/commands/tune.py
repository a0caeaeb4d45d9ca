"""``kerasalex tune``."""

from __future__ import annotations

import os
import sys

import click

from kerasalex.commands import user_errors
from kerasalex.config import PRECISIONS, RECIPES

_TUNERS = ("bayesian", "random", "hyperband")
_OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")


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
@click.option("--arch", default="alexnet", show_default=True, help="Architecture (see `kerasalex models`).")
@click.option("--tuner", type=click.Choice(_TUNERS), default="bayesian", show_default=True,
              help="Search algorithm: Gaussian-process Bayesian optimization, random search, or Hyperband.")
@click.option("--max-trials", type=click.IntRange(min=1), default=None,
              help="Trials in all (a rerun with more extends the search) [20; hyperband: its schedule].")
@click.option("--max-epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Epochs per trial (early stopping may end one sooner; hyperband: the longest round).")
@click.option("--objective", type=click.Choice(_OBJECTIVES), default="val_accuracy", show_default=True)
@click.option("--factor", type=click.IntRange(min=2), default=3, show_default=True, help="hyperband: reduction factor.")
@click.option("--executions-per-trial", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trainings per trial (other seeds), averaged.")
@click.option("--patience", type=click.IntRange(min=1), default=3, show_default=True,
              help="Early stopping: epochs without a better objective.")
@click.option("--search-space", type=click.Path(), default=None,
              help='JSON narrowing/widening the default space, e.g. {"lr": {"min": 1e-4, "max": 0.1, "sampling": "log"}, '
                   '"optimizer": {"values": ["sgd", "adamw"]}, "augment": {"fixed": true}}.')
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="default", show_default=True,
              help="Values of the options the search does not tune.")
@click.option("--dataset", default="cifar10", show_default=True,
              help="cifar10, cifar100, digits (bundled, offline), or a folder with one subfolder per class.")
@click.option("--data-dir", type=click.Path(), default=None, help="Local cifar-*-python.tar.gz or its extracted folder.")
@click.option("--limit", type=click.IntRange(min=2), default=None, help="Search on at most N training images.")
@click.option("--image-size", type=click.IntRange(min=1), default=None, help="Side images are fed at [architecture's].")
@click.option("--val-split", type=float, default=None, help="Fraction held out to score trials [0.1].")
@click.option("--seed", type=int, default=None, help="Random seed of every trial and of the search [0].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Keras dtype policy [recipe's].")
@click.option("--directory", type=click.Path(), default="tuning", show_default=True, help="Where searches live.")
@click.option("--name", default=None, help="The search's folder in --directory [<arch>-<dataset>-<tuner>].")
@click.option("--overwrite", is_flag=True, help="Delete an existing search of this name and start afresh.")
@click.option("--output", "-o", type=click.Path(), default=None,
              help="The retrained best model [saved_models/tune-<name>.keras].")
@click.option("--retrain/--no-retrain", default=True, show_default=True,
              help="Retrain the best trial on train+validation at the end.")
@click.option("--chief", metavar="HOST:PORT", default=None,
              help="Distributed: serve the search (the oracle) at HOST:PORT; workers run the trials.")
@click.option("--worker", metavar="HOST:PORT", default=None, help="Distributed: run trials for the chief at HOST:PORT.")
@click.option("--worker-id", default=None, help="Distributed: this worker's id, unique and kept across restarts.")
def tune(chief, worker, worker_id, overwrite, search_space, **options):
    """Search hyperparameters with keras-tuner; hand the best to `train`.

    Each trial builds the model with the same builder and trains it through
    the same loop as `train`, with early stopping on the objective. At the
    end: trials.csv/trials.md, best_hparams.json (for `train --hparams`) and
    the best trial retrained on train+validation as a .keras file.

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
        config = tuning.TuneConfig(search_space=space, search_space_file=search_space, **options)
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
