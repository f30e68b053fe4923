"""Attribution error on a shared GPU: ours (idle energy shared equally, active energy by each
process's measured activity) against the equal split (what dcgm-exporter and Kepler-style
per-device or per-process-count splitting give a time-sliced GPU's holders).

Three runs hold one simulated A100 in load mode for the whole window: a busy one (load 0.7, with
a data-loader stall to 0.2 for 1.7 s in every 7.3), a half-busy one (0.3, every other 3.7 s 0.5)
and an idle one (a notebook holding the GPU: load 0). The load changes fall anywhere in NVML's 1 s
sample periods, so a period's mean utilization mixes two levels. Each run's process is a real
(sleeping) process whose load the simulator fixes, so the simulator knows each one's exact share:
its active energy plus a third of the idle energy (``exact_process_energy_j`` +
``exact_idle_energy_j`` / 3). The real daemon (``Daemon`` on ``NvmlSensor`` over the simulator)
runs in this process on a simulated clock, sampled at 10 Hz, per-process utilization read once a
second as from NVML. Per run: |ours - exact| / exact and |equal - exact| / exact, the equal split
being the device's energy / 3. Figure: the worst run's error (ours; the equal split as the
peer). Target <= 2 %.

What it does not say: in the simulator a process's share of the active power *is* its reported
SM utilization, so the figure measures our bookkeeping (the 1 s sample periods, the lag, the
integer percents, the idle/active split), not how well SM utilization tracks power on real
hardware (memory-bound kernels draw more per SM-percent than compute-bound ones).

Run: ``.venv/bin/python -m bench.attribution [--smoke] [--out FILE]``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/attribution.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, bench_main, pct, progress  # noqa: E402
from profiler.config import Config  # noqa: E402
from profiler.daemon.core import Daemon  # noqa: E402
from profiler.ingest.messages import Hello  # noqa: E402
from profiler.sensors.nvml import NvmlSensor  # noqa: E402
from profiler.sensors.simulated import SimulatedNVML  # noqa: E402

TARGET = 0.02
SECONDS = 120.0
SECONDS_SMOKE = 20.0
SAMPLE_S = 0.1
RUNS = (("busy", 0.7), ("half", 0.3), ("idle", 0.0))
STALL = (7.3, 1.7, 0.2)  # every 7.3 s the busy run stalls for 1.7 s at load 0.2
SWING = (3.7, 0.5)  # every other 3.7 s the half-busy run works at 0.5 instead of 0.3


class Clock:
    """Monotonic seconds moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hello(run: str, pid: int, mono: float) -> Hello:
    """A hook's hello for ``run`` from ``pid`` declaring GPU 0."""
    keys = ("project", "user", "framework", "framework_version", "hook", "host", "clock")
    fields: dict[str, Any] = dict.fromkeys(keys, "")
    fields.update(name=run, rank=0, local_rank=0, world_size=1, batch_size=32, total_steps=None,
                  devices=("0",), mono=mono, wall=1.7e9 + mono)  # fmt: skip
    return Hello(run, pid, fields)


def measure(smoke: bool = False) -> dict[str, Any]:
    seconds = SECONDS_SMOKE if smoke else SECONDS
    procs = [subprocess.Popen(["sleep", str(seconds + 600)]) for _ in RUNS]
    try:
        return _measure(seconds, [p.pid for p in procs])
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _measure(seconds: float, pids: list[int]) -> dict[str, Any]:
    clock = Clock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[None], seed=7)
    home = Path(tempfile.mkdtemp(prefix="profiler-bench-attribution-"))
    d = Daemon(Config(home=home), gpu_sensor=NvmlSensor(sim, clock=clock), clock=clock,
               wall=lambda: 1.7e9 + clock.now)  # fmt: skip
    d.open_ledger()
    loads = {pid: load for pid, (_name, load) in zip(pids, RUNS, strict=True)}
    for pid, load in loads.items():
        sim.set_process_load(pid, load)
    d.sample()
    for _ in range(10):
        clock.now += SAMPLE_S
        d.sample()
    t0 = clock.now
    for pid, (name, _load) in zip(pids, RUNS, strict=True):
        d.handle(hello(name, pid, t0))
    progress(f"attribution: 3 runs on one shared GPU, {seconds:.0f} s simulated")
    busy, half = pids[0], pids[1]
    period, stall_s, stall_load = STALL
    swing_s, swing_load = SWING
    steps = round(seconds / SAMPLE_S)
    for k in range(1, steps + 1):
        clock.now = t0 + k * SAMPLE_S
        stalled = (k * SAMPLE_S) % period >= period - stall_s
        sim.set_process_load(busy, stall_load if stalled else loads[busy])
        swung = int(k * SAMPLE_S / swing_s) % 2 == 1
        sim.set_process_load(half, swing_load if swung else loads[half])
        d.sample()
    d.attribute_all()  # up to the last sample: the runs' energy over [t0, t1]
    dev = next(iter(d.devices.values()))
    t1 = dev.attributed_to
    assert t1 is not None
    whole = sim.exact_energy_j(0, t0, t1)
    idle_share = sim.exact_idle_energy_j(0, t0, t1) / len(RUNS)
    runs: dict[str, dict[str, Any]] = {}
    for pid, (name, _load) in zip(pids, RUNS, strict=True):
        run = d.runs[name]
        exact = sim.exact_process_energy_j(0, pid, t0, t1) + idle_share
        ours = run.total_gpu_energy_j
        equal = whole / len(RUNS)
        runs[name] = {
            "exact_j": exact,
            "ours_j": ours,
            "equal_j": equal,
            "ours_error": abs(ours - exact) / exact,
            "equal_error": abs(equal - exact) / exact,
            "basis": run.attribution,
        }
        progress(f"  {name}: exact {exact:.0f} J, ours {ours:.0f} J, equal {equal:.0f} J")
    if d.ledger is not None:
        d.ledger.close()
    return {"seconds": seconds, "device_j": whole, "runs": runs}


def figures(result: dict[str, Any]) -> list[Figure]:
    runs = result["runs"]
    ours = max(r["ours_error"] for r in runs.values())
    equal = max(r["equal_error"] for r in runs.values())
    each = ", ".join(
        f"{name} {pct(r['ours_error'], 3)} vs {pct(r['equal_error'], 1)}"
        for name, r in runs.items()
    )
    return [
        Figure(
            "attribution_error_shared_gpu",
            "attribution error, shared GPU (busy/half/idle runs)",
            ours,
            "ratio",
            f"{pct(ours, 3)} (worst run)",
            f"<= {pct(TARGET, 0)}",
            ours <= TARGET,
            peer=f"equal split {pct(equal)}",
            note=(
                "per run, ours vs the equal split (dcgm-exporter/Kepler per-device or "
                f"per-process-count splitting): {each}; the idle run's error under the equal "
                "split is what a notebook holding a GPU is overbilled; in the simulator a "
                "process's power share is its SM utilization (bookkeeping error only)"
            ),
            extra={"runs": runs},
        )
    ]


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__ or "", measure, figures, argv)


if __name__ == "__main__":
    sys.exit(main())
