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
        cmd = getattr(importlib.import_module(module), attr)
        if (ctx.obj or {}).get("quiet_tensorflow") and name in TF_COMMANDS:
            # Import TensorFlow quietly once the options parsed (a usage
            # error still answers at once), before the command body runs.
            import copy

            cmd = copy.copy(cmd)
            body = type(cmd).invoke

            def invoke(sub_ctx, _cmd=cmd):
                if name != "compare" or sub_ctx.params.get("evaluate_missing"):
                    import_tensorflow_quietly()
                return body(_cmd, sub_ctx)

            cmd.invoke = invoke
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="kerasalex")
def cli():
    """Train, evaluate, tune and reuse AlexNet-family image classifiers (Keras 3).

    \b
    Quick start (offline; training: 116 s of CPU time in bfloat16, 97.8% test
    accuracy, measured on 2 vCPUs of an AMD EPYC with AVX512-BF16; see the README):
      kerasalex train --arch alexnet --dataset digits --epochs 5 --run-dir runs/digits
      kerasalex evaluate saved_models/digits.keras      # on its own dataset, into runs/digits/
      kerasalex compare runs/
    """


# Commands that import TensorFlow (compare only with --evaluate).
TF_COMMANDS = ("train", "evaluate", "predict", "study", "tune", "port-weights", "compare", "export")

# What TensorFlow prints on stderr while it loads, before its log level is in
# force (absl logging is not initialized yet, so TF_CPP_MIN_LOG_LEVEL cannot
# hide it): on a CPU-only machine, CUDA's absence twice and a cuInit error.
TF_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "oneDNN custom operations are on",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
)


def import_tensorflow_quietly() -> list[str]:
    """Imports TensorFlow and lists its GPUs with stderr (file descriptor 2)
    captured, then writes back every captured line but TensorFlow's start-up
    chatter (:data:`TF_STARTUP_NOISE`): real errors still reach the user.

    Returns:
        The lines that were held back.
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    held: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        except Exception:
            pass  # the command imports it again and reports what is wrong
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
            if any(noise in line for noise in TF_STARTUP_NOISE):
                held.append(line.rstrip("\n"))
            else:
                os.write(2, line.encode())
    return held


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line for a user, without the source line that raised them."""
    kind = "" if category is UserWarning else f"{category.__name__}: "
    print(f"warning: {kind}{message}", file=file or sys.stderr, flush=True)


def main(argv=None):
    user_log_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
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
    import warnings

    warnings.showwarning = _show_warning
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt  # Python's own behaviour, remembered

    if threading_main():
        signal.signal(signal.SIGINT, on_sigint)
    try:
        return cli.main(args=argv, prog_name="kerasalex", obj={"quiet_tensorflow": user_log_level not in ("0", "1")})
    except SystemExit as exc:
        if interrupted and not (isinstance(exc.code, int) and exc.code > 128):
            exc.code = 128 + signal.SIGINT  # Click says "Aborted!" and exits 1; the shell's convention is 130
        if isinstance(exc.code, int) and exc.code > 128:
            # Stopped by a signal (Ctrl-C: 130): every file is written and the
            # resume hint printed, so leave now. The interpreter's final
            # garbage collection of TensorFlow's objects (the interrupted
            # fit's model, optimizer and dataset iterators) took 5-28 s after
            # the hint; it frees nothing the operating system would not.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
