"""A real CUDA training with the one-line hook, reading NVML's energy counter independently.

For the GPU check (bench/gpu_check.sh). Prints one JSON line with the independent counter
readings (mJ) and monotonic times taken around the tracked span.
"""

import argparse
import json
import time

import pynvml
import torch
from torch import nn

from hooks.pytorch import track

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=20.0)
parser.add_argument("--width", type=int, default=8192)
args = parser.parse_args()

pynvml.nvmlInit()
handle_nvml = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
device = torch.device("cuda")
model = nn.Sequential(nn.Linear(args.width, args.width), nn.ReLU(), nn.Linear(args.width, 1024))
model = model.to(device)
opt = torch.optim.SGD(model.parameters(), lr=1e-4)
x = torch.randn(2048, args.width, device=device)
y = torch.randn(2048, 1024, device=device)
torch.cuda.synchronize()

e0, t0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle_nvml), time.monotonic()
tracker = track(name="gpu-check", batch_size=2048)
steps = 0
while time.monotonic() - t0 < args.seconds:
    opt.zero_grad(set_to_none=True)
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    steps += 1
    if steps % 50 == 0:
        torch.cuda.synchronize()  # the script's own pacing, not the hook's
torch.cuda.synchronize()
tracker.stop()
e1, t1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle_nvml), time.monotonic()
print(json.dumps({"run_id": tracker.run_id, "steps": steps, "mj0": e0, "mj1": e1, "t0": t0,
                  "t1": t1, "hook_errors": tracker.errors}), flush=True)  # fmt: skip
