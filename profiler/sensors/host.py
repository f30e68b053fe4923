"""Host-side CPU energy: an estimate from psutil when RAPL is missing, and the choice between
RAPL and the estimate. The process table and pid helpers are in :mod:`profiler.sensors.procs`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil

from profiler.sensors.base import CpuSample, CpuSensor, SensorUnavailable
from profiler.sensors.rapl import RaplSensor

SOURCE = "estimated"
IDLE_FRACTION = 0.12
"""Share of TDP drawn at 0 % load (an assumption: idle package power of current server and desktop
parts is roughly 10-15 % of TDP)."""
TDP_W_PER_LOGICAL_CPU = 10.0
"""Assumed watts of TDP per logical CPU when the TDP is not given."""
TDP_MIN_W = 15.0
TDP_MAX_W = 250.0
"""Bounds of the assumed TDP in watts (a laptop part ... a large server socket)."""


def default_tdp_w(logical_cpus: int | None = None) -> float:
    """Assumed TDP in watts: 10 W per logical CPU, clamped to [15, 250] W.

    An assumption, not a measurement: pass ``tdp_w`` (config ``cpu_tdp_w``) to set the real
    figure from the CPU's datasheet.
    """
    n = logical_cpus if logical_cpus is not None else (psutil.cpu_count(logical=True) or 1)
    return min(TDP_MAX_W, max(TDP_MIN_W, TDP_W_PER_LOGICAL_CPU * n))


class HostSensor:
    """Estimated cumulative CPU energy in joules from TDP x load, for machines without RAPL.

    Power model (watts): ``P = tdp_w * (IDLE_FRACTION + (1 - IDLE_FRACTION) * load)``, with
    ``load`` the system-wide CPU utilization (0..1) since the previous sample, from
    ``cpu_percent(interval=None)`` (non-blocking; primed once here, since its first call says
    0.0). Integration: rectangle rule, ``E += P(load) * dt``. Because the model is linear in load
    and ``load`` is already the mean utilization over the interval, this is the exact integral of
    the model over the interval (a trapezoid between point powers would not be).

    ``psutil.cpu_percent(interval=None)`` keeps one reference point per thread: another caller
    on the sampling thread shortens this sensor's interval (the figure stays a fair estimate).
    """

    source = SOURCE

    def __init__(
        self,
        *,
        tdp_w: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        cpu_percent: Callable[..., float] = psutil.cpu_percent,
    ) -> None:
        if tdp_w is not None and tdp_w <= 0:
            raise ValueError(f"tdp_w must be positive watts, got {tdp_w}")
        self.tdp_assumed = tdp_w is None
        self.rapl_unavailable = ""  # why RAPL could not be read instead, when that was tried
        self.tdp_w = float(tdp_w) if tdp_w is not None else default_tdp_w()
        self.idle_fraction = IDLE_FRACTION
        self.clock = clock
        self._cpu_percent = cpu_percent
        self.errors: Counter[str] = Counter()
        self.energy_j = 0.0
        self.last_utilization_ratio: float | None = None
        self.last_power_w: float | None = None
        self._cpu_percent(interval=None)  # prime: the next call measures from here
        self._last_t = clock()

    def power_w(self, load: float) -> float:
        """Modelled power in watts at a utilization ratio ``load`` (clamped to 0..1)."""
        load = min(1.0, max(0.0, load))
        return self.tdp_w * (self.idle_fraction + (1.0 - self.idle_fraction) * load)

    def sample(self) -> list[CpuSample]:
        """Cumulative estimated joules since the sensor was made, as one zone ``"cpu"``."""
        t_s = self.clock()
        load = min(1.0, max(0.0, float(self._cpu_percent(interval=None)) / 100.0))
        dt = t_s - self._last_t
        power = self.power_w(load)
        if dt > 0:
            self.energy_j += power * dt
            self._last_t = t_s
        self.last_utilization_ratio = load
        self.last_power_w = power
        return [CpuSample(zone="cpu", t_s=t_s, energy_j=self.energy_j, source=SOURCE)]

    def describe(self) -> str:
        """The model in words, e.g. ``CPU energy: estimated from TDP 20 W ... x load``, and why
        RAPL is not read instead (when discovery tried it)."""
        how = (
            f"assumed {TDP_W_PER_LOGICAL_CPU:g} W per logical CPU, clamped to "
            f"{TDP_MIN_W:g}-{TDP_MAX_W:g} W; set cpu_tdp_w"
            if self.tdp_assumed
            else "configured"
        )
        text = (
            f"CPU energy: estimated from TDP {self.tdp_w:g} W ({how}) x load, "
            f"idle {self.idle_fraction:.0%} of TDP"
        )
        if self.rapl_unavailable:
            text += f" (RAPL unavailable: {self.rapl_unavailable})"
        return text


# ---- discovery


def discover_cpu_sensor(
    *,
    root: str | Path = "/sys/class/powercap",
    tdp_w: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[CpuSensor, str]:
    """RAPL if it can be read, else the TDP x load estimate; with one line saying which and why."""
    try:
        rapl = RaplSensor(root, clock=clock)
    except SensorUnavailable as e:
        host = HostSensor(tdp_w=tdp_w, clock=clock)
        host.rapl_unavailable = str(e)
        return host, host.describe()
    return rapl, rapl.describe()
