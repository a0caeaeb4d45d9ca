"""The ``kerasalex`` command line: a thin layer that parses options, builds the
configuration and calls one library function. Commands are imported lazily so
``kerasalex --help`` answers without importing TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import click

# name -> "module:attribute". One line per command.
COMMANDS = {
    "train": "kerasalex.commands.train:train",
    "evaluate": "kerasalex.commands.evaluate:evaluate",
    "predict": "kerasalex.commands.evaluate:predict",
    "models": "kerasalex.commands.evaluate:models_cmd",
    "study": "kerasalex.commands.study:study",
    "compare": "kerasalex.commands.study:compare",
    "port-weights": "kerasalex.commands.port:port_weights",
    "tune": "kerasalex.commands.tune:tune",
    "export": "kerasalex.commands.export:export",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used (Click docs,
    "Lazily Loading Subcommands")."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="kerasalex")
def cli():
    """Train, evaluate, tune and reuse AlexNet-family image classifiers (Keras 3).

    \b
    Quick start (offline, a few minutes on a CPU):
      kerasalex train --arch alexnet --dataset digits --epochs 10 --batch-size 32
      kerasalex evaluate saved_models/<run>.keras --dataset digits
    """


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # KERASALEX_LOW_MEMORY=1 trades speed for memory on CPUs: TensorFlow's
    # system allocator instead of oneDNN's pool, which keeps every buffer it
    # ever held, and one inter-op thread (kerasalex.training). Not the
    # default: the pool is the speed, and the defaults already meet the
    # 1.5 GB target (figures in the README's Benchmarks section).
    from kerasalex.config import low_memory_requested

    try:
        low_memory = low_memory_requested()
    except ValueError as e:
        click.ClickException(str(e)).show()
        return 1
    if low_memory:
        os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    # Let writes past `ulimit -f` fail with EFBIG (reported as a full disk)
    # instead of killing the process with SIGXFSZ mid-write.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from kerasalex.distribute import startup

    startup(argv)
    return cli.main(args=argv, prog_name="kerasalex")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
