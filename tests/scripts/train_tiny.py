"""A tiny real torch training with the one-line hook; exactly --steps optimizer steps."""

import argparse
import time

import torch
from torch import nn

from hooks.pytorch import track

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--name", default="tiny")
parser.add_argument("--step-sleep", type=float, default=0.005)
parser.add_argument("--fail-at", type=int, default=0)
args = parser.parse_args()

handle = track(name=args.name, batch_size=8, total_steps=args.steps)
model = nn.Linear(16, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 16), torch.randn(8, 4)
for step in range(1, args.steps + 1):
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    time.sleep(args.step_sleep)
    opt.step()
    if step == args.fail_at:
        raise RuntimeError("planned failure")
print(f"run_id={handle.run_id} steps={handle.steps} errors={handle.errors}", flush=True)
