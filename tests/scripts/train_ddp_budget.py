"""A two-rank DDP training on CPU (gloo) under torchrun with a budget that stops: each rank
trains until ``BudgetExceeded``, "checkpoints" (records the step), meets the other rank at a
barrier (a rank that did not stop would hang it) and writes rank-N.json."""

import argparse
import json
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hooks import BudgetExceeded
from hooks.pytorch import track

parser = argparse.ArgumentParser()
parser.add_argument("--budget", type=float, required=True)
parser.add_argument("--report-dir", required=True)
parser.add_argument("--max-steps", type=int, default=20000)
args = parser.parse_args()

dist.init_process_group("gloo")
handle = track(name="ddp-budget", batch_size=8, budget=args.budget, on_exceed="stop")
model = DistributedDataParallel(nn.Linear(16, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 16), torch.randn(8, 4)
stopped_at = None
step = 0
try:
    while step < args.max_steps:
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        time.sleep(0.01)
        opt.step()
        step += 1
except BudgetExceeded as e:
    step += 1
    stopped_at = e.step
dist.barrier()
report = {
    "rank": dist.get_rank(),
    "run_id": handle.run_id,
    "loop_steps": step,
    "stopped_at": stopped_at,
    "weight": model.module.weight.sum().item(),
}
with open(f"{args.report_dir}/rank-{report['rank']}.json", "w") as out:
    json.dump(report, out)
dist.destroy_process_group()
