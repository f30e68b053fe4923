"""The demo's training script: a small MLP on synthetic data, with ONE added line (the track call).

Run by ``profiler demo`` in its own process; this is the only profiler module that imports torch,
and the daemon never imports it.
"""

from __future__ import annotations

import argparse
import sys
import time

try:
    import torch
    from torch import nn
except ImportError as e:  # one line, not a traceback (`profiler demo` checks this first)
    sys.exit(f"profiler demo: cannot import torch ({e}); install it: `pip install torch`")

from hooks.pytorch import track  # the one added line is below, at the start of main()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    track(name="demo-mlp", batch_size=64)  # <- the one line that profiles this training

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 10))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = torch.randn(4096, 256)
    labels = (inputs[:, :10].argmax(dim=1) + (inputs[:, 10] > 0).long()) % 10
    loss_fn = nn.CrossEntropyLoss()

    start = time.monotonic()
    next_report = start + 5.0
    step = 0
    while time.monotonic() - start < args.seconds:
        i = (step * 64) % 4096
        x, y = inputs[i : i + 64], labels[i : i + 64]
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        step += 1
        if time.monotonic() >= next_report:
            elapsed = time.monotonic() - start
            print(f"  training: {elapsed:4.0f}/{args.seconds:.0f} s  step {step:6d}  "
                  f"loss {loss.item():.3f}", flush=True)  # fmt: skip
            next_report += 5.0


if __name__ == "__main__":
    main()
