"""A tiny real torch training with no profiler line in it, for ``profiler run``: exactly
--steps optimizer steps, optionally fed by a DataLoader with --workers worker processes."""

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
parser.add_argument("--step-sleep", type=float, default=0.005)
parser.add_argument("--explicit", action="store_true", help="also call hooks.pytorch.track()")
args = parser.parse_args()

if args.explicit:
    from hooks.pytorch import track

    handle = track(name="explicit", batch_size=8)
torch.manual_seed(0)
model = nn.Linear(16, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
data = TensorDataset(torch.randn(64, 16), torch.randn(64, 4))
loader = DataLoader(data, batch_size=8, num_workers=args.workers)
step = 0
while step < args.steps:
    for x, y in loader:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        time.sleep(args.step_sleep)
        opt.step()
        step += 1
        if step == args.steps:
            break
print(f"plain: steps={step}", flush=True)
if args.explicit:
    print(f"explicit: run_id={handle.run_id} steps={handle.steps} errors={handle.errors}")
