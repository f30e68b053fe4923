"""Cumulative-energy curves per device and the arithmetic that splits energy among runs.

Plain arithmetic over samples: no I/O, no clocks, no daemon state, so it is tested with numbers.

Interpolation inside one sampling interval ``[t0, t1]`` (energies ``E0``, ``E1``, power readings
``P0``, ``P1``): the energy up to a query time ``t`` is

    E(t) = E0 + (E1 - E0) * P0 (t - t0) / (P0 (t - t0) + P1 (t1 - t))

that is, power is taken to be ``P0`` before ``t`` and ``P1`` after it, scaled so that the interval's
measured energy is kept exactly. Queries are step and run boundaries, which is where power changes
in training (busy step, idle gap, next step), so one change per interval at the query time is the
likely shape; the formula is exact for it and falls back to linear interpolation when the power
readings are equal or missing. Every figure stays consistent with the device's counter: the pieces
of an interval always add up to the interval's measured energy.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class CurvePoint:
    """Cumulative energy ``energy_j`` (joules) and power reading ``power_w`` (watts, or None)
    at monotonic time ``t_s`` (seconds)."""

    t_s: float
    energy_j: float
    power_w: float | None


class EnergyCurve:
    """The cumulative energy of one device over time, kept for ``horizon_s`` seconds.

    Points must be appended in time order; energy must not decrease (sensors guarantee it).
    """

    def __init__(self, horizon_s: float = 900.0) -> None:
        self.horizon_s = horizon_s
        self._points: deque[CurvePoint] = deque()
        self._times: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._points)

    @property
    def first(self) -> CurvePoint | None:
        return self._points[0] if self._points else None

    @property
    def last(self) -> CurvePoint | None:
        return self._points[-1] if self._points else None

    def append(self, t_s: float, energy_j: float, power_w: float | None) -> None:
        """Add a sample; samples older than the horizon are forgotten. Out-of-order samples
        (same or earlier time) are ignored."""
        if self._points and t_s <= self._points[-1].t_s:
            return
        self._points.append(CurvePoint(t_s, energy_j, power_w))
        self._times.append(t_s)
        cutoff = t_s - self.horizon_s
        while len(self._points) > 2 and self._points[1].t_s < cutoff:
            self._points.popleft()
            self._times.popleft()

    def covers(self, t_s: float) -> bool:
        """True when ``t_s`` lies within the sampled span (so its energy is known)."""
        return bool(self._points) and self._points[0].t_s <= t_s <= self._points[-1].t_s

    def energy_at(self, t_s: float) -> float:
        """Cumulative joules at ``t_s``, clamped to the sampled span."""
        pts = self._points
        if not pts:
            raise ValueError("empty energy curve")
        if t_s <= pts[0].t_s:
            return pts[0].energy_j
        if t_s >= pts[-1].t_s:
            return pts[-1].energy_j
        i = bisect.bisect_right(self._times, t_s)
        return interpolate(pts[i - 1], pts[i], t_s)

    def energy_between(self, t0_s: float, t1_s: float) -> float:
        """Joules used between two times (0 when ``t1_s <= t0_s``)."""
        if t1_s <= t0_s:
            return 0.0
        return self.energy_at(t1_s) - self.energy_at(t0_s)

    def power_peak_w(self, t0_s: float, t1_s: float) -> float | None:
        """Highest power reading in ``[t0_s, t1_s]`` (watts), or None when there is none."""
        peak = None
        for p in reversed(self._points):  # newest first: callers ask about recent intervals
            if p.t_s < t0_s:
                break
            if p.t_s <= t1_s and p.power_w and (peak is None or p.power_w > peak):
                peak = p.power_w
        return peak


def interpolate(a: CurvePoint, b: CurvePoint, t_s: float) -> float:
    """Cumulative joules at ``t_s`` between samples ``a`` and ``b`` (see the module docstring)."""
    span = b.t_s - a.t_s
    delta = b.energy_j - a.energy_j
    before = t_s - a.t_s
    after = b.t_s - t_s
    if a.power_w is not None and b.power_w is not None and a.power_w > 0 and b.power_w > 0:
        weight_before = a.power_w * before
        weight_after = b.power_w * after
        return a.energy_j + delta * weight_before / (weight_before + weight_after)
    return a.energy_j + delta * before / span


@dataclass(frozen=True)
class Holder:
    """A run's hold on a device: from ``start_s`` to ``end_s`` (None = still holding)."""

    run: str
    start_s: float
    end_s: float | None = None


@dataclass
class IntervalShare:
    """What one sampling interval of one device gave each run, and what stayed idle.

    ``energy_j`` and ``seconds`` map run ids to joules and device-seconds; ``idle_j`` is the
    energy no run held.
    """

    energy_j: dict[str, float]
    seconds: dict[str, float]
    idle_j: float


def split_interval(
    curve: EnergyCurve, t0_s: float, t1_s: float, holders: Iterable[Holder]
) -> IntervalShare:
    """Split the energy a device used in ``[t0_s, t1_s]`` among the runs holding it.

    The interval is cut at every holder's start and end; each piece's energy (read from the
    curve) is shared equally by the runs holding the device during that piece, and so is the
    piece's duration (device-seconds, so that a device is never counted twice). Pieces no run
    holds are idle energy.
    """
    clipped = []
    for h in holders:
        start = max(t0_s, h.start_s)
        end = t1_s if h.end_s is None else min(t1_s, h.end_s)
        if end > start:
            clipped.append((h.run, start, end))
    cuts = sorted({t0_s, t1_s, *(c[1] for c in clipped), *(c[2] for c in clipped)})
    energy: dict[str, float] = {}
    seconds: dict[str, float] = {}
    idle = 0.0
    for lo, hi in pairwise(cuts):
        piece_j = curve.energy_between(lo, hi)
        active = [run for run, s, e in clipped if s <= lo and e >= hi]
        if not active:
            idle += piece_j
            continue
        share = 1.0 / len(active)
        for run in active:
            energy[run] = energy.get(run, 0.0) + piece_j * share
            seconds[run] = seconds.get(run, 0.0) + (hi - lo) * share
    return IntervalShare(energy_j=energy, seconds=seconds, idle_j=idle)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values, by linear interpolation."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def split_cpu_energy(
    energy_j: float, busy_cpu_s: float, run_cpu_s: dict[str, float]
) -> dict[str, float]:
    """Split host CPU energy (joules) over one window among runs by their share of the busy CPU
    time (seconds, all cores) in that window. Shares are capped so they never exceed the whole;
    what is left is other work and idle, not any run's."""
    used = sum(run_cpu_s.values())
    if energy_j <= 0 or used <= 0:
        return {run: 0.0 for run in run_cpu_s}
    denominator = max(busy_cpu_s, used)
    return {run: energy_j * seconds / denominator for run, seconds in run_cpu_s.items()}


# ---- a device's raw energy counter, across a daemon restart

COUNTER_TOLERANCE_J = 1e-3
"""How far (joules, one counter tick) the raw counter may drift from the curve before the two
are taken to have parted (a counter reset the sensor re-based over)."""


@dataclass(frozen=True)
class CounterMark:
    """A device's raw energy counter ``counter_j`` (joules, the driver's own counter of epoch
    ``counter_id``) at monotonic time ``t_s``, up to which the device's energy was split among
    runs, and the runs holding it then (``holders``). A daemon stores it with each flush so that
    the daemon after it can measure the energy of the gap between them."""

    t_s: float
    counter_j: float
    counter_id: str
    holders: tuple[str, ...]

    def to_meta(self) -> dict[str, object]:
        return {"t_s": self.t_s, "counter_j": self.counter_j, "counter_id": self.counter_id,
                "holders": list(self.holders)}  # fmt: skip

    @classmethod
    def from_meta(cls, meta: object) -> CounterMark | None:
        """The mark stored by :meth:`to_meta`, or None when ``meta`` is not one (an older
        daemon's ledger, a damaged row): the gap then stays unmeasured."""
        if not isinstance(meta, dict):
            return None
        t_s, counter_j, counter_id = meta.get("t_s"), meta.get("counter_j"), meta.get("counter_id")
        holders = meta.get("holders")
        numbers = (t_s, counter_j)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
            return None
        if not isinstance(counter_id, str) or not isinstance(holders, list):
            return None
        if not all(isinstance(h, str) for h in holders):
            return None
        return cls(float(t_s), float(counter_j), counter_id, tuple(holders))


class CounterTrack:
    """Follows a device's raw counter beside its :class:`EnergyCurve`: while the counter and the
    curve move together (same epoch, no re-based reset), the counter at any time the curve
    covers is the curve's energy there plus a constant offset."""

    def __init__(self) -> None:
        self.counter_id: str | None = None
        self.offset_j: float | None = None  # counter_j - curve energy_j, while they agree
        self.since_s: float | None = None  # the first sample with this offset and epoch

    def observe(
        self, t_s: float, energy_j: float | None, counter_j: float | None, counter_id: str | None
    ) -> None:
        """Take one sample (joules on the curve, the raw counter in joules and its epoch)."""
        if energy_j is None or counter_j is None or counter_id is None:
            self.counter_id = self.offset_j = self.since_s = None
            return
        offset = counter_j - energy_j
        same = (
            counter_id == self.counter_id
            and self.offset_j is not None
            and abs(offset - self.offset_j) <= COUNTER_TOLERANCE_J
        )
        if not same:
            self.counter_id, self.offset_j, self.since_s = counter_id, offset, t_s

    def counter_at(self, curve: EnergyCurve, t_s: float) -> tuple[float, str] | None:
        """(raw counter in joules, its epoch) at ``t_s``, read off the curve; None when the
        counter and the curve have not moved together since before ``t_s``."""
        if self.offset_j is None or self.since_s is None or self.counter_id is None:
            return None
        if not (self.since_s <= t_s and curve.covers(t_s)):
            return None
        return curve.energy_at(t_s) + self.offset_j, self.counter_id


@dataclass(frozen=True)
class GapShare:
    """What the gap between a stored mark and a new daemon's first reading gives each run:
    ``energy_j`` and device-``seconds`` per run id (equal shares), or, when it gives nothing,
    ``reason`` (why the gap stays unmeasured)."""

    energy_j: dict[str, float]
    seconds: dict[str, float]
    reason: str | None = None


def split_gap(
    marks: dict[str, CounterMark],
    live: set[str],
    t_s: float,
    counter_j: float | None,
    counter_id: str | None,
) -> GapShare:
    """Share the energy one device's counter measured between the runs' stored ``marks`` (run id
    -> its mark for this device) and a new reading (``counter_j`` joules of epoch ``counter_id``
    at ``t_s``) among the runs holding the device at the mark.

    Only when every holder is among ``live`` (restored, processes alive: they held the device
    throughout), all of them stored the same mark, the epoch is the same and the counter did not
    go backwards; otherwise no run gets anything and ``reason`` says why."""
    if not marks:
        return GapShare({}, {}, "no_mark")
    mark = next(iter(marks.values()))
    if any(m != mark for m in marks.values()) or set(marks) != set(mark.holders):
        return GapShare({}, {}, "holders_differ")
    if not set(mark.holders) <= live:
        return GapShare({}, {}, "holder_ended")
    if counter_j is None or counter_id is None or counter_id != mark.counter_id:
        return GapShare({}, {}, "counter_changed")
    if counter_j < mark.counter_j or t_s < mark.t_s:
        return GapShare({}, {}, "counter_backwards")
    n = len(mark.holders)
    joules, seconds = (counter_j - mark.counter_j) / n, (t_s - mark.t_s) / n
    return GapShare({run: joules for run in mark.holders}, {run: seconds for run in mark.holders})
