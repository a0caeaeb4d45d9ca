"""kerasalex: AlexNet-family image classifiers in Keras 3 (TensorFlow backend).

The ``.keras`` files it writes hold stock Keras layers only: they load with
``keras.saving.load_model(path)`` (safe mode on) in any process, with or
without kerasalex installed; the class names are in the archive::

    import json, zipfile, keras
    model = keras.saving.load_model("saved_models/alexnet.keras")
    names = json.loads(zipfile.ZipFile("saved_models/alexnet.keras").read("metadata.json"))["kerasalex"]["class_names"]

Importing the package registers the layers of files written by earlier
versions (``ClassNames``, ``ChannelReverse``) and the ``FusedSGD`` optimizer
of resume states.
"""

import importlib as _importlib
import os as _os
import sys as _sys

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
__all__ = ["models", "preprocessing", "__version__"]


def __getattr__(name):
    if name in ("models", "preprocessing"):
        return _importlib.import_module(f"kerasalex.{name}")
    raise AttributeError(f"module 'kerasalex' has no attribute {name!r}")


def _started_as_cli() -> bool:
    argv0 = _os.path.basename(_sys.argv[0]) if _sys.argv else ""
    return argv0 in ("kerasalex", "-m") or argv0 == "__main__.py" and "kerasalex" in _sys.argv[0]


# The model table (no TensorFlow import) installs what kerasalex.files needs
# to check and write model files, so every process has it.
from kerasalex import models  # noqa: E402,F401

def _in_worker_process() -> bool:
    """One of the first decode's worker processes (started with
    ``KERASALEX_DECODE_WORKER=1``, see :func:`kerasalex.data.folders.decode_files`):
    it decodes images and never loads a model, so it skips TensorFlow's
    start-up (5 s and ~300 MB each)."""
    return _os.environ.get("KERASALEX_DECODE_WORKER") == "1"


# The command line imports TensorFlow only inside the commands that need it
# (so `kerasalex --help` is instant); everyone else gets the layers registered
# on `import kerasalex`.
if not _started_as_cli() and not _in_worker_process():
    from kerasalex import preprocessing  # noqa: E402,F401  (registers layers)
    from kerasalex import optimizers  # noqa: E402,F401  (registers FusedSGD)
