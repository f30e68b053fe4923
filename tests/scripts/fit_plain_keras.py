"""A tiny Keras 3 training with no profiler line in it, for ``profiler run --hooks``: --fits
calls of fit(), each of --epochs epochs of 256 / --batch-size batches; --explicit passes its own
EnergyCallback (the automatic one must then add none)."""

import argparse

import keras
import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--fits", type=int, default=1)
parser.add_argument("--explicit", action="store_true")
args = parser.parse_args()

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x @ rng.normal(size=(8, 1))).astype("float32")
model = keras.Sequential([keras.Input(shape=(8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
callbacks = []
if args.explicit:
    from hooks.keras import EnergyCallback

    callbacks.append(EnergyCallback(batch_size=args.batch_size))
for _ in range(args.fits):
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, callbacks=callbacks)
print(f"fits={args.fits} batches={args.fits * args.epochs * (256 // args.batch_size)}", flush=True)
