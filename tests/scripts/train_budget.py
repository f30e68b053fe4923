"""A real torch training with a budget: ``track(budget=...)``; on BudgetExceeded it saves a
"checkpoint" (prints the step) and exits 0; prints how far it got. ``--starts FILE``: the wall
time (``time.time()``, the daemon's clock for budget events) each step began and the steps
completed, as JSON ``{"starts": [...], "completed": n}``. SIGINT (``profiler run``'s stop)
ends the loop at the next step boundary, as a training that handles it does; with
``--wait-signal`` the script then waits (up to 10 s) for that SIGINT before it exits, so a
signal sent while the interpreter shuts down cannot kill it (its exit status stays its own)."""

import argparse
import json
import signal
import time

interrupted: list[int] = []
signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from hooks import BudgetExceeded  # noqa: E402
from hooks.pytorch import track  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=100000)
parser.add_argument("--budget", type=float, default=None)
parser.add_argument("--on-exceed", default=None)
parser.add_argument("--step-sleep", type=float, default=0.01)
parser.add_argument("--max-seconds", type=float, default=60.0)
parser.add_argument("--starts", default=None)
parser.add_argument("--wait-signal", action="store_true")
args = parser.parse_args()

handle = track(name="budget", batch_size=8, budget=args.budget, on_exceed=args.on_exceed)
model = nn.Linear(16, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 16), torch.randn(8, 4)
deadline = time.monotonic() + args.max_seconds
step = 0
starts: list[float] = []
try:
    while step < args.steps and time.monotonic() < deadline and not interrupted:
        starts.append(time.time())
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        time.sleep(args.step_sleep)
        opt.step()
        step += 1
except BudgetExceeded as e:
    step += 1  # the step that raised had completed
    print(f"checkpoint step={step} exc_step={e.step} spent={e.spent} budget={e.budget}", flush=True)
if args.wait_signal:
    waited = time.monotonic() + 10
    while not interrupted and time.monotonic() < waited:
        time.sleep(0.01)
if args.starts:
    with open(args.starts, "w") as f:
        json.dump({"starts": starts, "completed": step}, f)
print(
    f"run_id={handle.run_id} steps={handle.steps} loop_steps={step} errors={handle.errors}",
    flush=True,
)
