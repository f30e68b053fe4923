"""A loop without an optimizer (evaluation), timed with StepTimer; the last loss is NaN."""

import argparse

import torch
from torch import nn

from hooks.pytorch import StepTimer

parser = argparse.ArgumentParser()
parser.add_argument("--batches", type=int, default=25)
args = parser.parse_args()

model = nn.Linear(16, 4)
data = torch.randn(16 * args.batches - 5, 16)  # the last batch is 5 samples short
timer = StepTimer(name="eval-loop", batch_size=16)
with torch.no_grad():
    for i, batch in enumerate(data.split(16)):
        with timer.step(samples=len(batch)) as step:
            loss = model(batch).pow(2).mean()
            step.loss = loss if i < args.batches - 1 else loss * float("nan")
timer.stop()
print(f"run_id={timer.run_id} steps={timer.steps} errors={timer.errors}", flush=True)
