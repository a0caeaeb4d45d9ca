"""Every private keras-tuner name (and TensorFlow's gradient registry) that
:mod:`kerasalex.tuning` relies on, in one place, for keras-tuner
:data:`SUPPORTED` only (pinned in ``pyproject.toml``).

keras-tuner's public API has no hook for what the search needs: atomic state
files and their repair, a trial loop that frees memory, a chief that polls
faster than 20 s and stops cleanly. So the package overrides or calls the
private methods listed in :data:`PRIVATE_METHODS`, imports the
``keras_tuner.src`` modules below, and prunes TensorFlow's gradient registry
between trials. ``tests/test_keras_tuner_internals.py`` checks each of them
against the installed versions and fails naming the one that changed.

Importing this module checks the installed keras-tuner version.
"""

from __future__ import annotations

import contextlib

import keras_tuner
from keras_tuner.src.distribute import utils as _dist_utils
from keras_tuner.src.engine import trial as _trial_module

# The keras-tuner versions these internals were read from: [low, high).
SUPPORTED = ("1.4.8", "1.4.9")


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def check_version(version: str | None = None) -> None:
    """Raises ImportError when keras-tuner ``version`` (the installed one by
    default) is outside :data:`SUPPORTED`."""
    version = version or keras_tuner.__version__
    low, high = SUPPORTED
    if not _version_tuple(low) <= _version_tuple(version) < _version_tuple(high):
        raise ImportError(
            f"kerasalex.tuning relies on private keras-tuner internals read from keras-tuner>={low},<{high}; "
            f"installed: keras-tuner {version}. Install a supported version: pip install 'keras-tuner>={low},<{high}'"
        )


check_version()

# --- names from keras_tuner.src ----------------------------------------------

Trial = _trial_module.Trial
TrialStatus = _trial_module.TrialStatus


def has_chief_oracle() -> bool:
    """Whether the KERASTUNER_* environment asks for distributed mode."""
    return _dist_utils.has_chief_oracle()


def is_chief_oracle() -> bool:
    """Whether this process is the distributed search's chief."""
    return _dist_utils.is_chief_oracle()


def oracle_servicer(oracle):
    """keras-tuner's gRPC servicer of ``oracle`` and the function that adds it
    to a ``grpc.server``: ``(servicer, add_to_server)``."""
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    servicer = oracle_chief.OracleServicer(oracle)
    return servicer, protos.get_service_grpc().add_OracleServicer_to_server


def chief_may_exit(oracle) -> bool:
    """keras-tuner's test of whether the chief may stop serving ``oracle``."""
    from keras_tuner.src.distribute import oracle_chief

    return oracle_chief.exit_chief(oracle)


def retry_queue(oracle) -> list:
    """The ids of the trials ``oracle`` will run again."""
    return oracle._retry_queue


# --- private methods the package overrides or calls ---------------------------

# (class, method) -> its parameters, as read from keras-tuner 1.4.8.
PRIVATE_METHODS: dict[tuple[str, str], tuple[str, ...]] = {
    ("Oracle", "_get_oracle_fname"): ("self",),
    ("Oracle", "_save_trial"): ("self", "trial"),
    ("Oracle", "_get_trial_dir"): ("self", "trial_id"),
    ("Oracle", "_compute_values_hash"): ("self", "values"),
    ("Tuner", "_populate_initial_space"): ("self",),
    ("Tuner", "_is_worker"): ("self",),
    ("Tuner", "_get_tuner_fname"): ("self",),
    ("Tuner", "_try_build"): ("self", "hp"),
    ("Tuner", "_get_checkpoint_fname"): ("self", "trial_id"),
    ("Tuner", "_get_build_config_fname"): ("self", "trial_id"),
    ("Tuner", "_try_run_and_update_trial"): ("self", "trial", "*fit_args", "**fit_kwargs"),
    ("Tuner", "_run_and_update_trial"): ("self", "trial", "*fit_args", "**fit_kwargs"),
    ("Hyperband", "_build_hypermodel"): ("self", "hp"),
}

# Private attributes of an oracle the package reads or sets.
PRIVATE_ORACLE_ATTRIBUTES = ("_retry_queue", "_project_dir")

# The keys of Oracle.get_state() the repair of a damaged oracle.json writes.
ORACLE_STATE_KEYS = (
    "ongoing_trials", "start_order", "end_order", "run_times", "retry_queue", "tried_so_far",
    "id_to_hash", "seed_state", "display",
)


# --- TensorFlow's gradient registry ------------------------------------------


def _gradient_registry() -> dict | None:
    try:
        from tensorflow.python.framework import ops

        return ops._gradient_registry._registry
    except (ImportError, AttributeError):  # another TensorFlow layout: nothing to do
        return None


@contextlib.contextmanager
def forget_traced_gradients():
    """Drops the gradient functions TensorFlow registered while the block ran.

    ``tf.custom_gradient`` traced inside a ``tf.function`` (Keras's optimizer
    step does so through tf.distribute's ``all_reduce``) registers its
    gradient in TensorFlow's global gradient registry for good; that entry's
    closure holds the traced train step and, through it, every variable of
    the model and its optimizer: about one model's worth of memory leaked per
    trial. Once the model is gone, nothing can ask for those gradients again.
    """
    registry = _gradient_registry()
    before = set(registry) if registry is not None else set()
    try:
        yield
    finally:
        if registry is not None:
            for key in [k for k in list(registry) if k not in before and str(k).startswith("CustomGradient-")]:
                registry.pop(key, None)
