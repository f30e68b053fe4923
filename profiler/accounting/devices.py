"""What the daemon keeps per GPU (:class:`DeviceState`), one pass over the sensors
(:class:`Readings`), and how many runs share a device at a time (:class:`Sharing`). Times are
monotonic seconds unless named ``_at``/``unix``; energy in joules. Plain data: no I/O.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from profiler.accounting.energy import CounterTrack, EnergyCurve
from profiler.sensors.base import CpuSample, GpuSample


@dataclass
class DeviceState:
    """What the daemon keeps per GPU: its energy curve and its latest reading."""

    uuid: str
    index: int
    model: str
    curve: EnergyCurve = field(default_factory=EnergyCurve)
    latest: GpuSample | None = None
    idle_j: float = 0.0
    attributed_to: float | None = None  # monotonic seconds: energy before this is split
    pids_seen: set[int] = field(default_factory=set)
    counter: CounterTrack = field(default_factory=CounterTrack)  # the driver's raw counter
    # (monotonic seconds, utilization ratio) of recent samples, for judging idle intervals.
    utilization: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=256))

    def utilization_between(self, t0: float, t1: float) -> float | None:
        """Mean utilization of the samples in ``(t0, t1]``, else of the first sample after
        ``t1``; None when the sensor gives none."""
        inside, after = [], None
        for t, u in reversed(self.utilization):  # newest first: intervals asked are recent
            if t <= t0:
                break
            if t <= t1:
                inside.append(u)
            else:
                after = u  # ends as the earliest sample after t1
        if inside:
            return sum(inside) / len(inside)
        return after


@dataclass(frozen=True)
class Readings:
    """One pass over the sensors (the daemon's ``read_sensors``); ``started`` is its
    ``perf_counter`` start, for the pass's duration."""

    gpu: list[GpuSample]
    cpu: list[CpuSample] | None
    started: float


class Sharing:
    """How many runs hold one device at a given time, from each run's ``(since, end)`` span
    (monotonic seconds; ``end`` None while it runs): two sorted lists and two bisections per
    question, so a pass over many runs' steps stays linear in the steps."""

    def __init__(self, spans: list[tuple[float, float | None]]) -> None:
        self._starts = sorted(since for since, _end in spans)
        self._ends = sorted(end for _since, end in spans if end is not None)

    def holders_at(self, t: float) -> int:
        """Runs holding the device at ``t`` (held from ``since`` to ``end``, both included);
        at least 1, so a share never divides by zero."""
        started = bisect.bisect_right(self._starts, t)
        ended = bisect.bisect_left(self._ends, t)  # spans over before t
        return max(1, started - ended)
