"""A faithful re-implementation of the study's Keras scratch AlexNet code
(section 4 of the study): a subclassed model, host-side float32
normalization of the whole dataset, ``shuffle(1000).batch(30)``, SGD 0.001
momentum 0.9, float32. Used as the baseline by ``bench_train.py``.

    python benchmarks/study_keras_baseline.py --data-dir cifar-10-python.tar.gz --epochs 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True, help="cifar-10-python.tar.gz (python layout)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--images", type=int, default=None, help="train on the first N images")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args()

    import tensorflow as tf
    from tensorflow.keras import Model, layers

    from kerasalex.data import load_cifar_python

    # --- the study's cell 4.1, with the same arrays tf.keras.datasets.cifar10.load_data() returns
    d = load_cifar_python(args.data_dir, "cifar10")
    x_entren, y_entren = d.train.x, d.train.y.reshape(-1, 1)
    if args.images:
        x_entren, y_entren = x_entren[: args.images], y_entren[: args.images]
    x_entren = (x_entren.astype("float32") / 127.5) - 1.0
    lote = 30
    ds_entren = tf.data.Dataset.from_tensor_slices((x_entren, y_entren))
    ds_entren = ds_entren.shuffle(1000).batch(lote)

    # --- cell 4.2
    class AlexNet(Model):
        def __init__(self, num_classes=10):
            super().__init__()
            self.caracteristicas = tf.keras.Sequential([
                layers.Conv2D(96, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(3, strides=2, padding="valid"),
                layers.Conv2D(256, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(3, strides=2, padding="valid"),
                layers.Conv2D(384, 3, padding="same", activation="relu"),
                layers.Conv2D(384, 3, padding="same", activation="relu"),
                layers.Conv2D(256, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(3, strides=2, padding="valid"),
            ])
            self.clasificador = tf.keras.Sequential([
                layers.Flatten(),
                layers.Dense(4096, activation="relu"),
                layers.Dense(4096, activation="relu"),
                layers.Dense(num_classes),
            ])

        def call(self, x):
            return self.clasificador(self.caracteristicas(x))

    # --- cell 4.3
    modelo = AlexNet()
    modelo.compile(
        optimizer=tf.keras.optimizers.SGD(learning_rate=0.001, momentum=0.9),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    class Timer(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t0

    timer = Timer()
    hist = modelo.fit(ds_entren, epochs=args.epochs, callbacks=[timer], verbose=2)
    n = len(x_entren)
    out = {"images": n, "epoch_seconds": timer.seconds, "images_per_second": n / timer.seconds,
           "loss": float(hist.history["loss"][-1]), "accuracy": float(hist.history["accuracy"][-1])}
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
