"""kerasalex: AlexNet-family image classifiers in Keras 3 (TensorFlow backend).

Importing the package registers its Keras layers, so a saved ``.keras`` file
loads with ``keras.saving.load_model(path)`` (safe mode on) in any process::

    import keras, kerasalex
    model = keras.saving.load_model("saved_models/alexnet.keras")
"""

import os as _os

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

from kerasalex import preprocessing  # noqa: E402,F401  (registers layers)
from kerasalex import models  # noqa: E402,F401

__all__ = ["models", "preprocessing", "__version__"]
