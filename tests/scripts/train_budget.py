"""A real torch training with a budget: ``track(budget=...)``; on BudgetExceeded it saves a
"checkpoint" (prints the step) and exits 0; prints how far it got."""

import argparse
import time

import torch
from torch import nn

from hooks import BudgetExceeded
from hooks.pytorch import track

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=100000)
parser.add_argument("--budget", type=float, default=None)
parser.add_argument("--on-exceed", default=None)
parser.add_argument("--step-sleep", type=float, default=0.01)
parser.add_argument("--max-seconds", type=float, default=60.0)
args = parser.parse_args()

handle = track(name="budget", batch_size=8, budget=args.budget, on_exceed=args.on_exceed)
model = nn.Linear(16, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 16), torch.randn(8, 4)
deadline = time.monotonic() + args.max_seconds
step = 0
try:
    while step < args.steps and time.monotonic() < deadline:
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        time.sleep(args.step_sleep)
        opt.step()
        step += 1
except BudgetExceeded as e:
    step += 1  # the step that raised had completed
    print(f"checkpoint step={step} exc_step={e.step} spent={e.spent} budget={e.budget}", flush=True)
print(
    f"run_id={handle.run_id} steps={handle.steps} loop_steps={step} errors={handle.errors}",
    flush=True,
)
