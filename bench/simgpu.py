"""The simulated GPU as the benchmarks share it: scripted traces anchored at a common monotonic
time, and a ``pynvml`` stand-in complete enough for peers (CodeCarbon, Zeus) to read it.

CLOCK_MONOTONIC is system-wide on Linux, so every process that builds a :class:`PeerNVML` with the
same trace and the same anchor ``t0_s`` (monotonic seconds) sees the same power at the same
moment, and any process can compute the ground truth with ``exact_energy_j``.

Traces are lists of ``(duration_s, watts)`` phases (see :mod:`profiler.sensors.simulated`).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml

from bench.common import DaemonProc, start_daemon
from profiler.sensors.simulated import SimulatedHandle, SimulatedNVML

Phase = tuple[float, float]
MODEL = "A100-SXM4-40GB"
IDLE_W = 55.0  # the A100-SXM4-40GB model's idle watts
LIMIT_W = 400.0  # its power limit, watts


class AnchoredClock:
    """Monotonic seconds, except that the first reading is ``t0_s``.

    ``SimulatedNVML`` starts its scripted traces at its clock's first reading, so building one
    with this clock anchors the trace at ``t0_s``. A ``t0_s`` in the future is allowed: until
    then the device draws the first phase's power and its counter stays at 0 (ask for exact
    energies only after ``t0_s``)."""

    def __init__(self, t0_s: float) -> None:
        self._first: float | None = t0_s
        self.last = t0_s  # the latest reading, seconds

    def __call__(self) -> float:
        if self._first is not None:
            t, self._first = self._first, None
            return t
        self.last = time.monotonic()
        return self.last


class PeerNVML(SimulatedNVML):
    """:class:`SimulatedNVML` plus the ``pynvml`` calls that peers make and the profiler does not
    (temperature, compute mode, graphics processes, architecture, C2C mode), and the module's
    constants and classes through attribute fallback, so it can stand in for ``sys.modules
    ["pynvml"]``. Unknown ``nvml*`` functions raise ``NVMLError_NotSupported``.

    Every energy-counter and power read is logged in :attr:`reads` as ``(monotonic seconds,
    kind)`` so a benchmark knows exactly which window a peer measured.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[float, str]] = []
        self._reads_lock = threading.Lock()

    def _log(self, kind: str) -> None:
        """Log a read at the clock reading the simulator just used (held under its lock)."""
        t = getattr(self._clock, "last", None)
        with self._reads_lock:
            self.reads.append((time.monotonic() if t is None else t, kind))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: SimulatedHandle) -> int:
        """Energy counter in mJ (logged)."""
        with self._lock:
            value = super().nvmlDeviceGetTotalEnergyConsumption(handle)
            self._log("energy")
        return value

    def nvmlDeviceGetPowerUsage(self, handle: SimulatedHandle) -> int:
        """Power in mW (logged)."""
        with self._lock:
            value = super().nvmlDeviceGetPowerUsage(handle)
            self._log("power")
        return value

    def nvmlDeviceGetTemperature(self, handle: SimulatedHandle, sensor: int) -> int:
        """Degrees Celsius: 30 at idle, 80 at the power limit (a plain model)."""
        watts = SimulatedNVML.nvmlDeviceGetPowerUsage(self, handle) / 1000
        return round(30 + 50 * (watts - IDLE_W) / (LIMIT_W - IDLE_W))

    def nvmlDeviceGetTemperatureV(self, handle: SimulatedHandle, sensor: int) -> int:
        return self.nvmlDeviceGetTemperature(handle, sensor)

    def nvmlDeviceGetComputeMode(self, handle: SimulatedHandle) -> int:
        self._device(handle)
        return pynvml.NVML_COMPUTEMODE_DEFAULT

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: SimulatedHandle) -> list[Any]:
        self._device(handle)
        return []

    def nvmlDeviceGetArchitecture(self, handle: SimulatedHandle) -> int:
        self._device(handle)
        return pynvml.NVML_DEVICE_ARCH_AMPERE

    def nvmlDeviceGetC2cModeInfoV(self, handle: SimulatedHandle) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml"):

            def unsupported(*args: Any, **kwargs: Any) -> Any:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

            return unsupported
        return getattr(pynvml, name)


def make_sim(
    traces: Sequence[Any],
    t0_s: float,
    count: int = 1,
    *,
    counter: bool = True,
    repeat: bool = False,
    clock: Callable[[], float] | None = None,
    cls: type[SimulatedNVML] = PeerNVML,
) -> Any:
    """A simulator (``cls``: :class:`PeerNVML` for peers, ``SimulatedNVML`` for the daemon) of
    ``count`` A100s whose scripted ``traces`` start at monotonic ``t0_s``; ``counter=False`` makes
    the energy counter unsupported (power polling only)."""
    sim = cls(
        MODEL, count, clock=clock or AnchoredClock(t0_s), traces=traces, repeat=repeat, noise=0.0
    )
    if not counter:
        for i in range(count):
            sim.set_energy_counter_supported(i, False)
    return sim


def install_as_pynvml(sim: PeerNVML) -> None:
    """Make ``import pynvml`` (in this process, from now on) return ``sim``. Call it before the
    peer is imported."""
    sys.modules["pynvml"] = sim  # type: ignore[assignment]


def start_sim_daemon(
    home: Path,
    phases: Sequence[Phase],
    t0_s: float,
    *,
    gpus: int = 1,
    counter: bool = True,
    repeat: bool = False,
    **env: str,
) -> DaemonProc:
    """A real daemon subprocess (:mod:`bench.sim_daemon`) whose ``gpus`` simulated A100s all
    follow ``phases`` from monotonic ``t0_s``."""
    home.mkdir(parents=True, exist_ok=True)
    trace = home / "trace.json"
    trace.write_text(json.dumps([list(p) for p in phases]))
    argv = [
        sys.executable,
        "-m",
        "bench.sim_daemon",
        "--trace",
        str(trace),
        "--t0",
        repr(t0_s),
        "--gpus",
        str(gpus),
    ]
    if not counter:
        argv.append("--no-counter")
    if repeat:
        argv.append("--repeat")
    return start_daemon(home, argv=argv, **env)


def training_loop(seconds: float = 1.0, seed: int = 3) -> list[Phase]:
    """A repeating load for daemons that need a GPU drawing something: 1 s of 50 ms busy
    (300-400 W) and idle (90 W) phases."""
    rng = random.Random(seed)
    phases: list[Phase] = []
    while sum(d for d, _ in phases) < seconds:
        phases += [(0.05, rng.uniform(300, 400)), (0.05, 90.0)]
    return phases


# ---- traces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """A scripted trace and the training steps it stands for.

    ``phases`` start at the trace's anchor; ``steps`` are ``(start_s, end_s)`` offsets from the
    anchor, back to back; the run covers ``[steps[0][0], steps[-1][1]]``."""

    phases: list[Phase]
    steps: list[tuple[float, float]]

    @property
    def run_start_s(self) -> float:
        return self.steps[0][0]

    @property
    def run_end_s(self) -> float:
        return self.steps[-1][1]


def bursty_script(
    run_s: float, *, lead_s: float, tail_s: float = 2.0, step_s: float = 0.1, seed: int = 1
) -> Script:
    """A bursty training trace: ``lead_s`` idle, then ``run_s`` seconds of steps of
    ``step_s`` +-20 % (each 40-60 % busy at 250-400 W, the rest host gap at 80-120 W: with the
    default 100 ms step, about 50 ms busy/idle phases), a data-loader stall (0.2-0.8 s at idle)
    before about one step in 15, a 1 s validation plateau at 180 W in the middle, then
    ``tail_s`` idle."""
    rng = random.Random(seed)
    phases: list[Phase] = [(lead_s, IDLE_W)]
    steps: list[tuple[float, float]] = []
    t = lead_s
    validated = False
    while t - lead_s < run_s:
        start = t
        if not validated and t - lead_s >= run_s / 2:
            phases.append((1.0, 180.0))
            t += 1.0
            validated = True
        if rng.random() < 1 / 15:
            stall = rng.uniform(0.2, 0.8)
            phases.append((stall, IDLE_W + rng.uniform(0, 10)))
            t += stall
        length = step_s * rng.uniform(0.8, 1.2)
        busy = length * rng.uniform(0.4, 0.6)
        gap = length - busy
        phases += [(busy, rng.uniform(250, 400)), (gap, rng.uniform(80, 120))]
        t += busy + gap
        steps.append((start, t))
    phases.append((tail_s, IDLE_W))
    return Script(phases, steps)


def step_script(
    step_s: float, n: int, *, lead_s: float = 1.0, tail_s: float = 2.0, seed: int = 7
) -> Script:
    """``n`` steps of ``step_s`` seconds: 80 % busy at 250-400 W (random per step), 20 % host gap
    at 90 W; before about one step in 25, a data-loader stall of 3 steps' length at 60 W that
    belongs to that step (a step runs from the previous step's end). ``lead_s`` idle before,
    ``tail_s`` idle after."""
    rng = random.Random(seed)
    phases: list[Phase] = [(lead_s, IDLE_W)]
    steps: list[tuple[float, float]] = []
    t = lead_s
    for _ in range(n):
        start = t
        if rng.random() < 1 / 25:
            phases.append((3 * step_s, 60.0))
            t += 3 * step_s
        phases += [(0.8 * step_s, rng.uniform(250, 400)), (0.2 * step_s, 90.0)]
        t += step_s
        steps.append((start, t))
    phases.append((tail_s, IDLE_W))
    return Script(phases, steps)


def concat(scripts: Sequence[Script]) -> tuple[list[Phase], list[float]]:
    """One trace playing ``scripts`` one after another, and each script's offset (seconds)."""
    phases: list[Phase] = []
    offsets = []
    t = 0.0
    for script in scripts:
        offsets.append(t)
        phases += script.phases
        t += sum(d for d, _ in script.phases)
    return phases, offsets
