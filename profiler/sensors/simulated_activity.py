"""The simulated GPU's per-process side: how each process's load drives its part of the device's
power, the exact ground truth of each process's share of the active energy, and the per-process
utilization samples ``nvmlDeviceGetProcessUtilization`` returns (refreshed once a period, like
NVML's about once a second).

The model (load mode): with loads ``l_p`` (ratio 0..1 each, CPU activity of the process tree or a
load set by a test) summing to ``L``, the device draws ``idle_w + active_w`` where ``active_w =
(limit_w - idle_w) x min(1, L)`` (times the simulator's noise). Each process's part of the active
power is ``active_w x l_p / L``, and its effective SM utilization is ``l_p x min(1, L) / L`` (its
own load while the device is not saturated, its proportional share once it is). Both are
piecewise constant, set at the same instants as the device's power, so each process's active
energy is an exact integral, and the processes' active energies plus the idle energy
(``idle_w x`` the time) equal the device's energy.

Times are clock seconds (NVML timestamps: clock microseconds), power in watts, energy in joules,
utilization in integer percent in the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from profiler.sensors.simulated_power import RETENTION_S, RecordedPower

ACTIVITY_PERIOD_S = 1.0
"""How often (clock seconds) the simulated driver takes a per-process utilization sample."""
SAMPLE_BUFFER = 10
"""How many past sample periods ``nvmlDeviceGetProcessUtilization`` can still return."""


@dataclass(frozen=True)
class ProcessUtilizationSample:
    """One ``nvmlDeviceGetProcessUtilization`` entry, shaped like pynvml's
    ``c_nvmlProcessUtilizationSample_t``: ``timeStamp`` in microseconds (the simulator's clock),
    utilizations in integer percent over the sample period ending then."""

    pid: int
    timeStamp: int
    smUtil: int
    memUtil: int
    encUtil: int = 0
    decUtil: int = 0


@dataclass
class _Timelines:
    """One process's effective SM utilization (ratio) and active power (watts) over time."""

    utilization: RecordedPower
    active_w: RecordedPower


class ProcessShares:
    """Every process's part of one load-mode device, recorded as the device's power is set.

    ``t0_s`` is when the device's timeline starts (sample periods count from it); ``period_s``
    is the sampling period of the simulated driver (seconds)."""

    def __init__(self, t0_s: float, period_s: float = ACTIVITY_PERIOD_S) -> None:
        if not period_s > 0:
            raise ValueError(f"the activity sampling period must be > 0 seconds, got {period_s!r}")
        self.t0_s, self.period_s = t0_s, period_s
        self._procs: dict[int, _Timelines] = {}

    def record(self, t_s: float, idle_w: float, watts: float, loads: dict[int, float]) -> None:
        """From ``t_s`` on the device draws ``watts`` with the processes ``loads`` (pid -> ratio,
        the processes counted; others draw nothing): split its active part among them."""
        total = sum(loads.values())
        active_w = max(0.0, watts - idle_w)
        for pid in loads:
            if pid not in self._procs:
                self._procs[pid] = _Timelines(RecordedPower(t_s, 0.0), RecordedPower(t_s, 0.0))
        for pid, lines in list(self._procs.items()):
            load = loads.get(pid, 0.0)
            share = load / total if total > 0 else 0.0
            lines.utilization.set(t_s, share * min(1.0, total))
            lines.active_w.set(t_s, active_w * share)
            if pid not in loads and t_s - lines.active_w.last_change_s > RETENTION_S:
                del self._procs[pid]  # gone for longer than the history kept

    def active_energy_j(self, pid: int, t0_s: float, t1_s: float) -> float:
        """Joules of the device's active energy that process ``pid`` drew in ``[t0_s, t1_s]``
        (0.0 for a process never counted on this device)."""
        lines = self._procs.get(pid)
        if lines is None:
            return 0.0
        return lines.active_w.energy_at(t1_s) - lines.active_w.energy_at(t0_s)

    def mean_utilization(self, pid: int, t0_s: float, t1_s: float) -> float:
        """Process ``pid``'s mean effective SM utilization (ratio) over ``[t0_s, t1_s]``."""
        lines = self._procs.get(pid)
        if lines is None or t1_s <= t0_s:
            return 0.0
        busy_s = lines.utilization.energy_at(t1_s) - lines.utilization.energy_at(t0_s)
        return busy_s / (t1_s - t0_s)

    def samples_since(self, last_seen_us: int, now_s: float) -> list[ProcessUtilizationSample]:
        """The samples taken after ``last_seen_us`` (microseconds) up to ``now_s``, at most
        :data:`SAMPLE_BUFFER` periods back: one per period and process with non-zero
        utilization in it (NVML lists no idle process), oldest first."""
        k_now = math.floor((now_s - self.t0_s) / self.period_s)
        while k_now > 0 and self._boundary(k_now) > now_s:
            k_now -= 1
        out = []
        for k in range(max(1, k_now - SAMPLE_BUFFER + 1), k_now + 1):
            end = self._boundary(k)
            stamp = round(end * 1e6)
            if stamp <= last_seen_us:
                continue
            start = self._boundary(k - 1)
            for pid in sorted(self._procs):
                ratio = self.mean_utilization(pid, start, end)
                if ratio > 0:
                    percent = min(100, round(100 * ratio))
                    out.append(ProcessUtilizationSample(pid, stamp, percent, percent // 2))
        return out

    def _boundary(self, k: int) -> float:
        return self.t0_s + k * self.period_s
