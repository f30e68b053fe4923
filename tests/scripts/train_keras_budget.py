"""Keras 3 (backend from KERAS_BACKEND) with ``EnergyCallback(budget=..., on_exceed="stop")`` and
a checkpoint callback after it: fit() ends early at the daemon's stop; the checkpoint callback's
``on_train_end`` still runs and prints the batches done."""

import argparse
import time

import keras
import numpy as np

from hooks.keras import EnergyCallback

parser = argparse.ArgumentParser()
parser.add_argument("--budget", type=float, required=True)
parser.add_argument("--epochs", type=int, default=1000)
args = parser.parse_args()


class Checkpoint(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        time.sleep(0.01)

    def on_train_end(self, logs=None):
        print(f"checkpoint batches={self.batches}", flush=True)


rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x @ rng.normal(size=(8, 1))).astype("float32")
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
energy = EnergyCallback(name="keras-budget", batch_size=32, budget=args.budget, on_exceed="stop")
checkpoint = Checkpoint()
model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0, callbacks=[energy, checkpoint])
print(
    f"run_id={energy.run_id} steps={energy.steps} budget_stopped={energy.budget_stopped}",
    flush=True,
)
