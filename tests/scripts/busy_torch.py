"""A busy CPU-bound torch training loop with the one-line hook, for SECONDS; prints its steps.

Usage: ``busy_torch.py SECONDS NAME RUN_ID``.
"""

import os
import sys
import time

import torch

from hooks.pytorch import track

torch.set_num_threads(1)
handle = track(sys.argv[2], run_id=sys.argv[3], batch_size=8)  # the one added line
w = torch.randn(64, 64, requires_grad=True)
opt = torch.optim.SGD([w], lr=1e-3)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    loss = (torch.randn(8, 64) @ w).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
handle.stop()
print(f"steps={handle.steps}", flush=True)
os._exit(0)  # no interpreter teardown after the run's end (its CPU would load the GPU)
