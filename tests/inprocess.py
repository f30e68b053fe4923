"""In-process daemons for tests: a real Daemon on a scripted simulated GPU with a fake clock, so
energy is checked against the simulator's exact integral. Shared by the daemon, ledger, cost,
report and CLI tests (the real-process helpers are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from profiler.config import Config
from profiler.cost.pricing import Pricing
from profiler.daemon.core import Daemon
from profiler.ingest.messages import Hello
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hello(run: str, pid: int, mono: float, devices=("0",), rank: int = 0, world: int = 1) -> Hello:
    """A hook's hello for ``run`` from ``pid`` at monotonic ``mono``, batch size 32."""
    fields = {k: "" for k in ("name", "project", "user", "framework", "framework_version", "hook",
                              "host", "clock")}  # fmt: skip
    fields.update(rank=rank, local_rank=rank, world_size=world, batch_size=32, total_steps=None,
                  devices=tuple(devices), mono=mono, wall=1.7e9 + mono)  # fmt: skip
    fields["name"] = run
    return Hello(run, pid, fields)


def make_daemon(tmp_path: Path, traces, count: int = 1, **sensor_args):
    """A daemon on ``count`` simulated A100s playing ``traces``, its ledger in ``tmp_path``;
    returns (daemon, simulator, clock)."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", count, clock=clock, traces=traces)
    sensor = NvmlSensor(sim, clock=clock, **sensor_args)
    d = Daemon(Config(home=tmp_path), gpu_sensor=sensor, clock=clock,
               wall=lambda: 1.7e9 + clock.now)  # fmt: skip
    d.open_ledger()
    return d, sim, clock


def advance(d: Daemon, clock: FakeClock, seconds: float, every: float = 0.1) -> None:
    """Move the clock ``seconds`` ahead, sampling every ``every`` seconds."""
    end = clock.now + seconds
    while clock.now < end - 1e-9:
        clock.now += every
        d.sample()


P4D_ON_DEMAND = 21.957642  # $/h for 8 GPUs (the catalog's figure, checked in test_pricing)


def pricing(kind="cloud", gph=P4D_ON_DEMAND / 8, kwh=0.0, pue=1.0, carbon=369.5, profile="x"):
    """A pricing in USD with the given figures (default: one GPU of an on-demand p4d)."""
    return Pricing(
        currency="USD", profile=profile, kind=kind, gpu_hour_price=gph, energy_price_kwh=kwh,
        pue=pue, carbon_g_per_kwh=carbon, carbon_source="test", as_of="2026-11-24", sources={},
    )  # fmt: skip
