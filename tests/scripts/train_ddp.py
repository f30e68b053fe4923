"""A two-process DistributedDataParallel training on CPU (gloo) under torchrun, with track()."""

import argparse
import json

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hooks.pytorch import track

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--report-dir", required=True, help="each rank writes rank-N.json here")
args = parser.parse_args()

dist.init_process_group("gloo")
handle = track(name="ddp-tiny", batch_size=8, total_steps=args.steps)
model = DistributedDataParallel(nn.Linear(16, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
torch.manual_seed(dist.get_rank())
x, y = torch.randn(8, 16), torch.randn(8, 4)
for _ in range(args.steps):
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()
dist.barrier()
handle.stop()
report = {"rank": dist.get_rank(), "run_id": handle.run_id, "steps": handle.steps}
with open(f"{args.report_dir}/rank-{report['rank']}.json", "w") as out:
    json.dump(report, out)
dist.destroy_process_group()
