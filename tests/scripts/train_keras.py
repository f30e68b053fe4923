"""A tiny real Keras training with the one-line callback.

Keras 3 on the backend named by ``KERAS_BACKEND``, or legacy tf_keras with ``--legacy`` (which
sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported). Prints one ``run ...`` line per fit
and a ``done`` line, for the test to compare with what the daemon recorded.
"""

import argparse
import os

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--legacy", action="store_true", help="tf_keras (Keras 2) via tf.keras")
parser.add_argument("--samples", type=int, default=256)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--steps-per-execution", type=int, default=1)
parser.add_argument("--fits", type=int, default=1, help="fit() calls with one callback")
parser.add_argument("--inf-at-batch", type=int, default=-1, help="batch whose inputs are inf")
parser.add_argument("--fail-at-batch", type=int, default=-1, help="raise after this batch")
parser.add_argument("--validation", action="store_true")
parser.add_argument("--name", default="tiny-keras")
args = parser.parse_args()

if args.legacy:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    keras = tf.keras
else:
    import keras

from hooks.keras import EnergyCallback  # noqa: E402 - after the framework is chosen

rng = np.random.default_rng(0)
x = rng.normal(size=(args.samples, 8)).astype("float32")
y = (x @ rng.normal(size=(8, 1))).astype("float32")
if args.inf_at_batch >= 0:
    start = args.inf_at_batch * args.batch_size
    x[start : start + args.batch_size] = np.inf


class FailAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == args.fail_at_batch:
            raise RuntimeError("planned failure")


model = keras.Sequential([keras.Input(shape=(8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.01),
    loss="mse",
    steps_per_execution=args.steps_per_execution,
)
callback = EnergyCallback(name=args.name, batch_size=args.batch_size)
callbacks = [callback] + ([FailAt()] if args.fail_at_batch >= 0 else [])
for _ in range(args.fits):
    history = model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
        validation_data=(x[:64], y[:64]) if args.validation else None,
    )
    print(
        f"run {callback.run_id} steps={callback.steps} errors={callback.errors}"
        f" loss={history.history['loss'][-1]!r}",
        flush=True,
    )
iterations = int(np.asarray(model.optimizer.iterations))
print(f"done iterations={iterations}", flush=True)
