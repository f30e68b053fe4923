"""The same small model in PyTorch or in Keras on TensorFlow, each with its one-line hook.

An MLP 8 -> 64 -> 1 trained with SGD on mean squared error: 256 samples, batches of 32, 2 epochs
(16 optimizer steps, 512 samples).
"""

import argparse
import os

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--framework", choices=["torch", "keras"], required=True)
parser.add_argument("--name", default="same-mlp")
args = parser.parse_args()

SAMPLES, BATCH, EPOCHS = 256, 32, 2
rng = np.random.default_rng(0)
x = rng.normal(size=(SAMPLES, 8)).astype("float32")
y = (x @ rng.normal(size=(8, 1))).astype("float32")

if args.framework == "torch":
    import torch
    from torch import nn

    from hooks.pytorch import track

    handle = track(name=args.name, batch_size=BATCH, total_steps=EPOCHS * SAMPLES // BATCH)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(EPOCHS):
        for i in range(0, SAMPLES, BATCH):
            opt.zero_grad()
            nn.functional.mse_loss(model(xt[i : i + BATCH]), yt[i : i + BATCH]).backward()
            opt.step()
    handle.stop()
    steps = handle.steps
else:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from hooks.keras import EnergyCallback

    model = keras.Sequential(
        [keras.Input(shape=(8,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
    callback = EnergyCallback(name=args.name, batch_size=BATCH)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=False, callbacks=[callback])
    steps = callback.steps
print(f"framework={args.framework} steps={steps}", flush=True)
