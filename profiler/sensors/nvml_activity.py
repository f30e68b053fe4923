"""Per-process activity of one GPU from ``nvmlDeviceGetProcessesUtilizationInfo`` (newer drivers,
nvidia-ml-py 12.550+) or ``nvmlDeviceGetProcessUtilization``: which call to make
(:func:`read_process_samples`), when to ask (at most once per :data:`ACTIVITY_PERIOD_S`, as NVML
refreshes its samples about once a second) and how samples become each process's mean SM
utilization over the window since the previous reading.

Both calls take the same timestamp and give the same per-process fields used here (``pid``,
``timeStamp``, ``smUtil``); the newer one is preferred while it answers, and given up for good
(the older one used from then on) when the driver or nvidia-ml-py lacks it (FunctionNotFound,
no such attribute) or the GPU answers NotSupported to it; every other answer of the newer call
(NotFound included) is the reading.

NVML returns the samples taken after a timestamp (microseconds, NVML's own clock: only compared
with NVML's timestamps, never with the sensor's clock), one per sample period and process with
non-zero utilization; ``NVMLError_NotFound`` when there is none (no process was busy since the
last reading): a reading too, ``{}`` (nobody busy), not a missing one. Pure bookkeeping: the
NVML calls are made by :class:`profiler.sensors.nvml.NvmlSensor` on its reader thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ACTIVITY_PERIOD_S = 1.0
"""The least time (seconds of the sensor's clock) between two activity readings of a device."""
NVML_ACTIVITY = "nvml_process_utilization"
SIMULATED_ACTIVITY = "simulated"
INFO_CALL = "nvmlDeviceGetProcessesUtilizationInfo"
LEGACY_CALL = "nvmlDeviceGetProcessUtilization"


class NoActivityCall(Exception):
    """The nvidia-ml-py in use has neither per-process utilization call."""


@dataclass
class ActivityState:
    """One device's activity reading: ``source`` (None once the device has shown it has no
    per-process utilization), NVML's timestamp of the newest sample seen (microseconds), when
    it was last asked (sensor clock seconds), and the call in use (:data:`INFO_CALL` until it
    fails to exist, then :data:`LEGACY_CALL`)."""

    source: str | None
    last_seen_us: int = 0
    last_read_s: float | None = None
    call: str = INFO_CALL

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


def read_process_samples(nv: Any, handle: Any, state: ActivityState) -> Sequence[Any]:
    """The per-process utilization samples of ``handle`` newer than ``state.last_seen_us``:
    from ``nvmlDeviceGetProcessesUtilizationInfo`` while ``state.call`` is it and the driver
    has it, else from ``nvmlDeviceGetProcessUtilization`` (``state.call`` moves to it for good
    when the newer call is missing: FunctionNotFound, NotSupported, no such attribute). ``nv``:
    the pynvml module (or the simulator). Raises what the call in use raises (NotFound: no newer
    sample; NotSupported from the older call: no per-process activity), or
    :class:`NoActivityCall` when nvidia-ml-py has neither call."""
    if state.call == INFO_CALL:
        newer = getattr(nv, INFO_CALL, None)
        missing = (nv.NVMLError_NotSupported, getattr(nv, "NVMLError_FunctionNotFound", ()))
        try:
            if newer is not None:
                return newer(handle, state.last_seen_us)
        except missing:
            pass
        state.call = LEGACY_CALL
    older = getattr(nv, LEGACY_CALL, None)
    if older is None:
        raise NoActivityCall
    return older(handle, state.last_seen_us)
