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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class CurvePoint:
    """Cumulative energy ``energy_j`` (joules) and power reading ``power_w`` (watts, or None)
    at monotonic time ``t_s`` (seconds)."""

    t_s: float
    energy_j: float
    power_w: float | None


FINE_HORIZON_S = 30.0
"""How long (seconds behind the newest sample) a curve keeps fast power readings at most (as
long as a step may wait for its energy); the daemon thins them sooner (:meth:`EnergyCurve.thin`,
:data:`FINE_KEEP_S` behind its split)."""
FINE_KEEP_S = 5.0
"""How long (seconds) fast power readings are kept behind the point up to which a device's
energy is split: steps and the split's pieces are resolved by then (the hooks report steps
within a second)."""


class EnergyCurve:
    """The cumulative energy of one device over time, kept for ``horizon_s`` seconds.

    Points must be appended in time order; energy must not decrease (sensors guarantee it).

    On the polling path a sample brings the fast power readings taken since the previous one
    (``between`` of :meth:`append`): they become points of the curve too, their cumulative
    energy the interval's measured energy split by the trapezoid through them, so that a query
    inside the interval knows where its energy fell. Those fine points live in a second, short
    store (the samples of that span with them) for :data:`FINE_HORIZON_S` at most, less once
    :meth:`thin` says the split no longer needs them; older spans keep the samples alone.
    """

    def __init__(self, horizon_s: float = 900.0, fine_horizon_s: float = FINE_HORIZON_S) -> None:
        self.horizon_s = horizon_s
        self.fine_horizon_s = fine_horizon_s
        self._points: deque[CurvePoint] = deque()
        self._times: deque[float] = deque()
        # The recent span with fast readings: samples and readings, from a sample to the newest
        # sample; empty when there is none. Queries at or after its first time are answered here.
        self._fine: deque[CurvePoint] = deque()
        self._fine_times: deque[float] = deque()
        self._fine_samples: deque[float] = deque()  # the samples' times in it (thinning cuts there)

    def __len__(self) -> int:
        return len(self._points)

    @property
    def first(self) -> CurvePoint | None:
        return self._points[0] if self._points else None

    @property
    def last(self) -> CurvePoint | None:
        return self._points[-1] if self._points else None

    def append(
        self,
        t_s: float,
        energy_j: float,
        power_w: float | None,
        between: Sequence[tuple[float, float]] = (),
    ) -> None:
        """Add a sample; samples older than the horizon are forgotten. Out-of-order samples
        (same or earlier time) are ignored. ``between``: power readings ``(t_s, watts)`` taken
        since the previous sample (oldest first; the polling path's fast readings), added as
        points whose energies split this interval's by the trapezoid through them (the
        interval's energy is kept exactly); ignored without a previous sample with a power
        reading."""
        if self._points and t_s <= self._points[-1].t_s:
            return
        prev = self._points[-1] if self._points else None
        point = CurvePoint(t_s, energy_j, power_w)
        self._points.append(point)
        self._times.append(t_s)
        cutoff = t_s - self.horizon_s
        while len(self._points) > 2 and self._points[1].t_s < cutoff:
            self._points.popleft()
            self._times.popleft()
        fine = _fine_points(prev, point, between) if prev is not None and between else []
        if fine and prev is not None and not self._fine:  # a span starts at the last sample
            self._fine.append(prev)
            self._fine_times.append(prev.t_s)
            self._fine_samples.append(prev.t_s)
        if self._fine:
            for p in (*fine, point):
                self._fine.append(p)
                self._fine_times.append(p.t_s)
            self._fine_samples.append(t_s)
            self.thin(t_s - self.fine_horizon_s)

    def thin(self, before_s: float) -> None:
        """Forget the fast readings older than ``before_s`` (monotonic seconds; the samples stay):
        the fine span then starts at the first sample at or after it (none left: no span)."""
        samples = self._fine_samples
        while samples and samples[0] < before_s:
            samples.popleft()
        if len(samples) < 2:  # no interval with readings left
            samples.clear()
            self._fine.clear()
            self._fine_times.clear()
            return
        while self._fine_times[0] < samples[0]:
            self._fine.popleft()
            self._fine_times.popleft()

    @property
    def fine_points(self) -> int:
        """How many points the fine span holds (samples and fast readings; memory)."""
        return len(self._fine)

    def _store(self, t_s: float) -> tuple[deque[CurvePoint], deque[float]]:
        """The points answering a query at ``t_s``: the fine span from its start on, else the
        samples (the fine span starts at a sample, so the two agree where they meet)."""
        if self._fine_times and t_s >= self._fine_times[0]:
            return self._fine, self._fine_times
        return self._points, self._times

    def covers(self, t_s: float) -> bool:
        """True when ``t_s`` lies within the sampled span (so its energy is known)."""
        return bool(self._points) and self._points[0].t_s <= t_s <= self._points[-1].t_s

    def energy_at(self, t_s: float) -> float:
        """Cumulative joules at ``t_s``, clamped to the sampled span."""
        if not self._points:
            raise ValueError("empty energy curve")
        pts, times = self._store(t_s)
        if t_s <= pts[0].t_s:
            return pts[0].energy_j
        if t_s >= pts[-1].t_s:
            return pts[-1].energy_j
        i = bisect.bisect_right(times, t_s)
        return interpolate(pts[i - 1], pts[i], t_s)

    def energy_between(self, t0_s: float, t1_s: float) -> float:
        """Joules used between two times (0 when ``t1_s <= t0_s``)."""
        if t1_s <= t0_s:
            return 0.0
        return self.energy_at(t1_s) - self.energy_at(t0_s)

    def bracket(self, t0_s: float, t1_s: float) -> tuple[float, float] | None:
        """What the samples alone say about the energy in ``[t0_s, t1_s]``: ``(inner, outer)``
        joules, the energy between the first sample at or after ``t0_s`` and the last at or
        before ``t1_s`` (0 when no sample lies inside), and between the last sample at or
        before ``t0_s`` and the first at or after ``t1_s``. Energy never decreases, so where the
        curve is exact at its samples (the counter path) the true energy lies in ``[inner,
        outer]`` however power moved between samples. None when the span is not covered."""
        if not (self.covers(t0_s) and self.covers(t1_s)) or t1_s < t0_s:
            return None
        pts, times = self._points, self._times  # the samples: the sensor's measured totals
        lo = bisect.bisect_right(times, t0_s) - 1  # last sample <= t0
        hi = bisect.bisect_left(times, t1_s)  # first sample >= t1
        first_in = bisect.bisect_left(times, t0_s)  # first sample >= t0
        last_in = bisect.bisect_right(times, t1_s) - 1  # last sample <= t1
        outer = pts[hi].energy_j - pts[lo].energy_j
        inner = pts[last_in].energy_j - pts[first_in].energy_j if last_in > first_in else 0.0
        return inner, outer

    def power_peak_w(self, t0_s: float, t1_s: float) -> float | None:
        """Highest power reading in ``[t0_s, t1_s]`` (watts), or None when there is none."""
        peak = None
        pts = self._fine if self._fine_times and t0_s >= self._fine_times[0] else self._points
        for p in reversed(pts):  # newest first: callers ask about recent intervals
            if p.t_s < t0_s:
                break
            if p.t_s <= t1_s and p.power_w and (peak is None or p.power_w > peak):
                peak = p.power_w
        return peak


def step_bound_j(curve: EnergyCurve, t0_s: float, t1_s: float, joules: float) -> float | None:
    """How far a step's stated energy ``joules`` (its share of the curve's energy in
    ``[t0_s, t1_s]``) may be from the truth: ``max(joules - low, high - joules)``, where
    ``[low, high]`` is :meth:`EnergyCurve.bracket` scaled by the step's share of the span's
    energy (1 alone on the device; on a shared device the split's own error is not in it). A
    step shorter than the sampling interval has ``low`` 0 and ``high`` the energy of the
    intervals it straddles: its figure is interpolated, and the bound says by how much it may
    be off. Plus a counter tick (1 mJ) at each end. None when the span is not covered."""
    span = curve.bracket(t0_s, t1_s)
    if span is None:
        return None
    whole = curve.energy_between(t0_s, t1_s)
    scale = joules / whole if whole > 0 else 1.0
    low, high = span[0] * scale, span[1] * scale
    return max(joules - low, high - joules, 0.0) + 2 * COUNTER_TOLERANCE_J  # a tick each end


def _fine_points(
    prev: CurvePoint, point: CurvePoint, between: Sequence[tuple[float, float]]
) -> list[CurvePoint]:
    """The readings ``between`` samples ``prev`` and ``point`` as curve points: cumulative
    energy by the trapezoid from ``prev`` through them, scaled so that they end at ``point``'s
    energy (the interval's measured joules stay exact). Empty when a sample has no power
    reading, no reading lies strictly inside, or the trapezoid has no energy."""
    if prev.power_w is None or point.power_w is None:
        return []
    inside: list[tuple[float, float]] = []
    for t, w in between:  # strictly inside, strictly increasing
        if (inside[-1][0] if inside else prev.t_s) < t < point.t_s:
            inside.append((t, w))
    if not inside:
        return []
    partial, total, at = [], 0.0, (prev.t_s, prev.power_w)
    for t, w in (*inside, (point.t_s, point.power_w)):
        total += (at[1] + w) / 2 * (t - at[0])
        partial.append(total)
        at = (t, w)
    delta = point.energy_j - prev.energy_j
    if total <= 0 or delta < 0:
        return []
    scale = delta / total
    return [
        CurvePoint(t, prev.energy_j + e * scale, w)
        for (t, w), e in zip(inside, partial, strict=False)  # partial has one more: the sample
    ]


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


def holder_pieces(
    holders: Iterable[Holder], t0_s: float, t1_s: float, cuts: Iterable[float] = ()
) -> list[tuple[float, float, list[Holder]]]:
    """``[t0_s, t1_s]`` (seconds) cut at every holder's start and end within it and at the
    ``cuts`` inside it: each piece as (lo, hi, the holders holding the device all through it,
    in the order given), in time order; a piece no holder holds has an empty list."""
    clipped = []
    for h in holders:
        start = max(t0_s, h.start_s)
        end = t1_s if h.end_s is None else min(t1_s, h.end_s)
        if end > start:
            clipped.append((h, start, end))
    points = {t0_s, t1_s, *(c for c in cuts if t0_s < c < t1_s)}
    points.update(t for _h, s, e in clipped for t in (s, e))
    return [
        (lo, hi, [h for h, s, e in clipped if s <= lo and e >= hi])
        for lo, hi in pairwise(sorted(points))
    ]


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
    energy: dict[str, float] = {}
    seconds: dict[str, float] = {}
    idle = 0.0
    for lo, hi, held in holder_pieces(holders, t0_s, t1_s):
        piece_j = curve.energy_between(lo, hi)
        active = [h.run for h in held]
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
