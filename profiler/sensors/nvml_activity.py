"""Per-process activity of one GPU from ``nvmlDeviceGetProcessUtilization``: when to ask (at most
once per :data:`ACTIVITY_PERIOD_S`, as NVML refreshes its samples about once a second) and how
samples become each process's mean SM utilization over the window since the previous reading.

NVML returns the samples taken after a timestamp (microseconds, NVML's own clock: only compared
with NVML's timestamps, never with the sensor's clock), one per sample period and process with
non-zero utilization; ``NVMLError_NotFound`` when there is none (no process was busy since the
last reading): a reading too, ``{}`` (nobody busy), not a missing one. Pure bookkeeping: the
NVML calls are made by :class:`profiler.sensors.nvml.NvmlSensor` on its reader thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ACTIVITY_PERIOD_S = 1.0
"""The least time (seconds of the sensor's clock) between two activity readings of a device."""
NVML_ACTIVITY = "nvml_process_utilization"
SIMULATED_ACTIVITY = "simulated"


@dataclass
class ActivityState:
    """One device's activity reading: ``source`` (None once the device has shown it has no
    per-process utilization), NVML's timestamp of the newest sample seen (microseconds), and
    when it was last asked (sensor clock seconds)."""

    source: str | None
    last_seen_us: int = 0
    last_read_s: float | None = None

    def due(self, t_s: float, period_s: float = ACTIVITY_PERIOD_S) -> bool:
        """Whether a reading at ``t_s`` is allowed (a source, and ``period_s`` since the last)."""
        if self.source is None:
            return False
        return self.last_read_s is None or t_s - self.last_read_s >= period_s

    def take(self, samples: Iterable[Any]) -> dict[int, float]:
        """Each pid's mean SM utilization (ratio 0..1) over the samples newer than the last
        seen, and move the last seen timestamp on; ``{}`` when none is newer (no process was
        busy since the last reading: NVML lists no idle process).

        The mean of a pid is its ``smUtil`` summed over the sample periods in this reading
        divided by their number (the distinct timestamps): NVML leaves a process out of a
        period in which it was idle, which counts as 0, not as a missing value."""
        fresh = [s for s in samples if int(s.timeStamp) > self.last_seen_us]
        if not fresh:
            return {}
        periods = len({int(s.timeStamp) for s in fresh})
        percent: dict[int, float] = {}
        for s in fresh:
            pid = int(s.pid)
            percent[pid] = percent.get(pid, 0.0) + min(100.0, max(0.0, float(s.smUtil)))
        self.last_seen_us = max(int(s.timeStamp) for s in fresh)
        return {pid: total / periods / 100 for pid, total in percent.items()}
