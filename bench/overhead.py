"""Hook overhead, measured side by side in one process against a running daemon.

Two measurements, each alternating blocks with and without the hook (the optimizer-step hooks of
``hooks.pytorch.track`` are attached and detached between blocks), so machine noise hits both
sides alike:

1. ``added_us_per_step``: a minimal ``optimizer.step()`` (one parameter, SGD), each step timed;
   the median step time with the hook minus the median without, in microseconds (the mean, which
   includes the hook's sends every 0.1 s, is printed too). Target <= 2 us.
2. ``slowdown``: a real CPU training step of about 10 ms (an MLP's forward, backward and step
   on one thread); median step time with the hook / without, minus 1. Target <= 0.5 %.

Run: ``.venv/bin/python bench/overhead.py`` (add ``--quick`` for a short run). It starts a daemon
on a private home with the simulated GPU, prints a table and writes
``bench/results/overhead-<date>.json``. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_ADDED_US = 2.0
TARGET_SLOWDOWN = 0.005


def start_daemon(home: Path) -> subprocess.Popen:
    env = dict(os.environ, PROFILER_HOME=str(home), PROFILER_METRICS_PORT="0",
               PROFILER_GPU="simulated:A100-SXM4-40GB:1")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "profiler", "daemon"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while not (home / "daemon.json").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("bench: the daemon did not start; run `profiler daemon` to see why")
        time.sleep(0.05)
    return proc


class Toggle:
    """Attach and detach a track() handle's steady-state hook (after the first step, the only
    hook it keeps, on the optimizer) between blocks."""

    def __init__(self, handle, optimizer) -> None:
        self.handle = handle
        self.optimizer = optimizer
        self.detach()

    def attach(self) -> None:
        self.handle._handles = [self.optimizer.register_step_post_hook(self.handle.fast_hook)]

    def detach(self) -> None:
        self.handle._remove_hooks()


def alternate(step: Callable[[], None], toggle: Toggle, blocks: int, per_block: int,
              progress: str) -> tuple[list[float], list[float]]:  # fmt: skip
    """Seconds of every step: (with hook, without), in blocks alternating ABBA."""
    clock = time.perf_counter
    with_hook: list[float] = []
    without: list[float] = []
    for b in range(blocks):
        order = (True, False) if b % 2 == 0 else (False, True)
        for hooked in order:
            if hooked:
                toggle.attach()
            out = with_hook if hooked else without
            for _ in range(per_block):
                t0 = clock()
                step()
                out.append(clock() - t0)
            if hooked:
                toggle.detach()
        if (b + 1) % max(1, blocks // 5) == 0:
            print(f"  {progress}: block {b + 1}/{blocks}", file=sys.stderr, flush=True)
    return with_hook, without


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer blocks (noisier)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON result")
    args = parser.parse_args()

    import torch
    from torch import nn

    from hooks.pytorch import track

    torch.set_num_threads(1)
    home = Path(tempfile.mkdtemp(prefix="profiler-bench-"))
    daemon = start_daemon(home)
    os.environ.update(PROFILER_HOME=str(home), PROFILER_RUN_ID="bench-overhead")
    try:
        handle = track(name="bench-overhead", batch_size=64)
        param = nn.Parameter(torch.zeros(1))
        param.grad = torch.zeros(1)
        tiny = torch.optim.SGD([param], lr=0.0)
        tiny.step()  # the first step switches the hook to its steady state
        toggle = Toggle(handle, tiny)
        micro_blocks = 20 if args.quick else 100
        print("micro: a minimal optimizer.step()", file=sys.stderr)
        micro_with, micro_without = alternate(tiny.step, toggle, micro_blocks, 1000, "micro")

        model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                              nn.Linear(1024, 10))  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        real_toggle = Toggle(handle, opt)
        x, y = torch.randn(64, 512), torch.randint(0, 10, (64,))
        loss_fn = nn.CrossEntropyLoss()

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        for _ in range(20):
            train_step()
        real_blocks = 20 if args.quick else 100
        print("real: an MLP training step on CPU", file=sys.stderr)
        real_with, real_without = alternate(train_step, real_toggle, real_blocks, 10, "real")
        toggle.attach()
        handle.stop()
        sent_steps = handle.steps
        dropped = handle.dropped_total
    finally:
        daemon.terminate()
        daemon.wait(20)

    added_us = (statistics.median(micro_with) - statistics.median(micro_without)) * 1e6
    real_ms_without = statistics.median(real_without) * 1e3
    slowdown = statistics.median(real_with) / statistics.median(real_without) - 1
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "micro_step_us_without": statistics.median(micro_without) * 1e6,
        "micro_step_us_with": statistics.median(micro_with) * 1e6,
        "added_us_per_step_mean": (statistics.mean(micro_with) - statistics.mean(micro_without))
        * 1e6,
        "added_us_per_step": added_us,
        "real_step_ms_without": real_ms_without,
        "real_step_ms_with": statistics.median(real_with) * 1e3,
        "slowdown": slowdown,
        "steps_sent": sent_steps,
        "steps_dropped": dropped,
        "targets": {"added_us_per_step": TARGET_ADDED_US, "slowdown": TARGET_SLOWDOWN},
    }
    ok_added = added_us <= TARGET_ADDED_US
    ok_slow = slowdown <= TARGET_SLOWDOWN
    print(f"{'measure':<34}{'without':>12}{'with':>12}{'delta':>12}  target")
    print(f"{'minimal optimizer.step() (us)':<34}{result['micro_step_us_without']:>12.2f}"
          f"{result['micro_step_us_with']:>12.2f}{added_us:>+12.2f}  <= {TARGET_ADDED_US} us "
          f"{'ok' if ok_added else 'MISSED'}")  # fmt: skip
    print(f"{'MLP training step (ms)':<34}{real_ms_without:>12.3f}"
          f"{result['real_step_ms_with']:>12.3f}{slowdown:>+12.2%}  <= {TARGET_SLOWDOWN:.1%} "
          f"{'ok' if ok_slow else 'MISSED'}")  # fmt: skip
    print(
        f"mean added per minimal step (includes sends): {result['added_us_per_step_mean']:+.2f} us"
    )
    print(f"steps sent {sent_steps}, dropped {dropped}")
    out = args.out or REPO / "bench" / "results" / f"overhead-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if ok_added and ok_slow else 1


if __name__ == "__main__":
    sys.exit(main())
