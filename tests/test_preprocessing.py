"""In-model preprocessing layers keep a plain ``model(x)`` in inference mode."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("front", ["resize", "resize_center_crop"])
def test_resizing_does_not_switch_later_layers_to_training_mode(front):
    """Keras 3.15's Resizing defaults to training=True; called without
    training=False it made a later BatchNormalization use batch statistics
    under model(x) (found by adding a BatchNormalization architecture by
    CONTRIBUTING.md's steps)."""
    import keras
    from keras import layers

    from kerasalex import preprocessing

    inputs = preprocessing.image_input()
    x = preprocessing.rescale_symmetric(inputs)
    x = preprocessing.resize(x, 16, 16) if front == "resize" else preprocessing.resize_center_crop(x, 18, 16)
    x = layers.Conv2D(4, 3)(x)
    x = layers.BatchNormalization()(x)
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x))
    images = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    np.testing.assert_allclose(model(images).numpy(), model(images, training=False).numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(model(images).numpy(), model(images, training=True).numpy())
