"""What the daemon keeps per GPU (:class:`DeviceState`, with its per-process activity readings,
:class:`ActivityReading`), one pass over the sensors (:class:`Readings`), and how many runs share
a device at a time (:class:`Sharing`). Times are monotonic seconds unless named ``_at``/``unix``;
energy in joules; activity is a ratio (0..1). Plain data: no I/O.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from profiler.accounting.energy import CounterTrack, EnergyCurve
from profiler.accounting.idle_floor import MEASURED_FLOOR, MODEL, IdleFloor
from profiler.sensors.base import CpuSample, GpuSample, MigInstance

ACTIVITY_MAX_AGE_S = 5.0
"""How far past the end of a device's newest activity reading (seconds) that reading still
stands for the device's processes; beyond it their activity is unknown (the sensor stopped
giving any), so an old reading never drifts onto later intervals."""


@dataclass(frozen=True)
class ActivityReading:
    """Per-process activity of one device over ``(t0_s, t1_s]`` (monotonic seconds): pid -> its
    mean SM utilization (0..1) in that window. A pid absent from it had no activity there."""

    t0_s: float
    t1_s: float
    by_pid: dict[int, float]


@dataclass(frozen=True)
class SharePiece:
    """One piece of a shared device's split (``[lo_s, hi_s]``, monotonic seconds) and each
    holding run's fraction of its energy (run id -> 0..1; they add up to 1), kept so that a
    step inside it gets the same share as its run did (``resolve_steps``)."""

    lo_s: float
    hi_s: float
    fraction: dict[str, float]


SHARE_PIECES_KEPT = 4096
"""How many recent :class:`SharePiece` a device keeps (a piece or more per sample: minutes)."""


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
    # The device's idle power (watts): the sensor's figure, else the measured floor; None when
    # unknown. ``idle_power_source`` says which ("model" or "measured_floor"; None: unknown).
    idle_power_w: float | None = None
    idle_power_source: str | None = None
    idle_floor: IdleFloor = field(default_factory=IdleFloor)
    # Where per-process activity comes from ("nvml_process_utilization", "simulated"); None
    # while the sensor has given none for this device.
    activity_source: str | None = None
    # Recent per-process activity readings, oldest first, each covering the time since the one
    # before it (about a second each: the driver refreshes them about once a second).
    activity: deque[ActivityReading] = field(default_factory=lambda: deque(maxlen=128))
    # MIG mode: the GPU's instances (from the sensor), and the instance (gpu_instance_id) each
    # process NVML listed on it was last seen in.
    mig_instances: tuple[MigInstance, ...] = ()
    instance_of_pid: dict[int, int] = field(default_factory=dict)
    # The runs the driver showed on the device in the latest split (``run_activity``).
    shown_runs: set[str] = field(default_factory=set)
    # The pieces of the latest splits where several runs held the device, oldest first.
    share_pieces: deque[SharePiece] = field(default_factory=lambda: deque(maxlen=SHARE_PIECES_KEPT))

    def observe_idle_power(self, s: GpuSample, held: bool) -> None:
        """Set the idle power from sample ``s``: the sensor's figure where it gives one (source
        "model"), else the measured floor (:class:`~profiler.accounting.idle_floor.IdleFloor`),
        fed ``s.power_w`` when the device is truly idle (no process listed and not ``held`` by
        a run); unknown (None, never 0) until that floor exists."""
        if s.idle_power_w is not None:
            self.idle_power_w, self.idle_power_source = s.idle_power_w, MODEL
            return
        self.idle_floor.observe(s.power_w, idle=not held and not s.processes)
        self.idle_power_w = self.idle_floor.watts
        self.idle_power_source = None if self.idle_power_w is None else MEASURED_FLOOR

    def observe_instances(self, s: GpuSample) -> None:
        """Keep the MIG instances of sample ``s`` and its processes' instances (bounded)."""
        self.mig_instances = s.mig_instances
        if not s.mig_instances:
            return
        if len(self.instance_of_pid) > 4096:  # pids long gone: keep the ones listed now
            self.instance_of_pid.clear()
        for p in s.processes:
            if p.gpu_instance_id is not None:
                self.instance_of_pid[p.pid] = p.gpu_instance_id

    def observe_activity(self, t_s: float, by_pid: dict[int, float]) -> None:
        """Keep a reading of per-process activity taken at ``t_s``: it covers the time since the
        previous reading (the first one: since the device's first sample)."""
        if self.activity:
            t0 = self.activity[-1].t1_s
            if t_s <= t0:  # out of order: ignored, as the curve ignores such samples
                return
        else:
            first = self.curve.first
            t0 = min(first.t_s, t_s) if first is not None else t_s
        self.activity.append(ActivityReading(t0, t_s, dict(by_pid)))

    @property
    def activity_to(self) -> float | None:
        """End of the newest activity reading (monotonic seconds); None before the first."""
        return self.activity[-1].t1_s if self.activity else None

    def activity_between(self, t0: float, t1: float) -> dict[int, float] | None:
        """Mean activity per pid over ``[t0, t1]``: the readings overlapping it, weighted by their
        overlap; a part after the newest reading takes the newest (that reading lags the device
        by up to its refresh, about a second), a part before the oldest the oldest. None when no
        reading covers it or the newest ended more than :data:`ACTIVITY_MAX_AGE_S` before ``t1``
        (unknown, not zero)."""
        if not self.activity or t1 - self.activity[-1].t1_s > ACTIVITY_MAX_AGE_S:
            return None
        newest, oldest = self.activity[-1], self.activity[0]
        weighted: list[tuple[float, dict[int, float]]] = []
        if t1 > newest.t1_s:
            weighted.append((t1 - max(t0, newest.t1_s), newest.by_pid))
        if t0 < oldest.t0_s:
            weighted.append((min(t1, oldest.t0_s) - t0, oldest.by_pid))
        for r in reversed(self.activity):  # newest first: intervals asked are recent
            if r.t1_s <= t0:
                break
            overlap = min(t1, r.t1_s) - max(t0, r.t0_s)
            if overlap > 0:
                weighted.append((overlap, r.by_pid))
        total = sum(w for w, _ in weighted)
        if total <= 0:  # a zero-length question: the newest reading answers it
            return dict(newest.by_pid)
        out: dict[int, float] = {}
        for w, by_pid in weighted:
            for pid, a in by_pid.items():
                out[pid] = out.get(pid, 0.0) + a * w / total
        return out

    def activity_cuts(self, t0: float, t1: float) -> list[float]:
        """Where activity readings begin or end strictly inside ``(t0, t1)``: the times an
        interval is cut at so that each piece has one reading's activity."""
        cuts = set()
        for r in reversed(self.activity):
            if r.t1_s <= t0:
                break
            for t in (r.t0_s, r.t1_s):
                if t0 < t < t1:
                    cuts.add(t)
        return sorted(cuts)

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
