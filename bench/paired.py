"""A paired measurement of slowdown with a confidence interval.

Steps run in short blocks, with and without the thing measured; a *pair* is one block of each,
in an order drawn at random per pair (seeded), so slow drift and periodic interference (another
process's timer, a frequency change) land on both sides alike and, over many pairs, in the
noise rather than in the estimate. Per pair the figure is the log of the ratio of the two
blocks' total times (``ln(with / without)``); the estimate is the mean over pairs and the 95 %
interval is Student's t on those per-pair log ratios (mean +- t(0.975, n-1) * sd / sqrt(n)),
turned back into a slowdown by ``exp(x) - 1``. Each block is timed twice, on the wall clock
(``perf_counter_ns``) and on the calling thread's CPU clock (``thread_time_ns``, which a busy
machine's preemption does not inflate).

Everything here is the standard library; the interval arithmetic is pure (tested against known
inputs in ``tests/test_bench_stats.py``).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# ---- Student's t -------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0 < p < 1) of Student's t with ``df`` > 0 degrees of freedom, to
    about 1e-12 (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


# ---- intervals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided t interval. NaN bounds (unknown) for fewer than 2 values."""

    mean: float
    lo: float
    hi: float
    sd: float  # sample standard deviation of the values
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` +- t((1 + confidence) / 2, n - 1) * sd / sqrt(n)."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, confidence)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, 1, confidence)
    sd = statistics.stdev(values)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n, confidence)


@dataclass(frozen=True)
class Slowdown:
    """A slowdown (with / without - 1, a ratio: 0.01 = 1 % slower) and its interval.

    ``log`` is the t interval on the per-pair log ratios; ``estimate``, ``lo`` and ``hi`` are
    its mean and bounds turned back into slowdowns (``exp(x) - 1``)."""

    estimate: float
    lo: float
    hi: float
    log: Interval

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def pairs_for(self, half_width: float) -> int | None:
        """About how many pairs would give an interval of +- ``half_width`` at this spread
        (the width shrinks as 1 / sqrt(pairs)); None when unknown."""
        if not (self.log.n >= 2 and math.isfinite(self.half_width) and half_width > 0):
            return None
        return max(2, math.ceil(self.log.n * (self.half_width / half_width) ** 2))

    def text(self) -> str:
        """``+0.12% (95% CI -0.08..+0.31%)``."""
        conf = f"{self.log.confidence:.0%}"
        if not math.isfinite(self.lo):
            return f"{self.estimate:+.2%} ({conf} CI unknown: {self.log.n} pair)"
        return f"{self.estimate:+.2%} ({conf} CI {self.lo * 100:+.2f}..{self.hi * 100:+.2f}%)"

    def to_json(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "lo": self.lo,
            "hi": self.hi,
            "half_width": self.half_width,
            "method": "Student t on per-pair ln(with/without) block totals",
            "log": asdict(self.log),
        }


def paired_slowdown(
    with_totals: Sequence[float], without_totals: Sequence[float], confidence: float = 0.95
) -> Slowdown:
    """The slowdown of ``with`` against ``without`` from per-pair block totals (the same number
    of steps on both sides of a pair; any time unit, both alike). Raises ValueError for pairs
    of unequal count or a total that is not positive."""
    if len(with_totals) != len(without_totals):
        raise ValueError(f"{len(with_totals)} blocks with, {len(without_totals)} without")
    if any(not (x > 0) for x in (*with_totals, *without_totals)):
        raise ValueError("every block total must be a positive time")
    logs = [math.log(w / o) for w, o in zip(with_totals, without_totals, strict=True)]
    ci = t_interval(logs, confidence)
    return Slowdown(math.expm1(ci.mean), math.expm1(ci.lo), math.expm1(ci.hi), ci)


# ---- running pairs ---------------------------------------------------------------------------


@dataclass
class Pairs:
    """Per-pair block totals, nanoseconds, and every step's wall time, seconds."""

    wall_with: list[int] = field(default_factory=list)
    wall_without: list[int] = field(default_factory=list)
    cpu_with: list[int] = field(default_factory=list)
    cpu_without: list[int] = field(default_factory=list)
    steps_with: list[float] = field(default_factory=list)
    steps_without: list[float] = field(default_factory=list)
    with_first: int = 0  # pairs whose "with" block ran first

    def add(self, hooked: bool, wall_ns: int, cpu_ns: int, steps_s: list[float]) -> None:
        (self.wall_with if hooked else self.wall_without).append(wall_ns)
        (self.cpu_with if hooked else self.cpu_without).append(cpu_ns)
        (self.steps_with if hooked else self.steps_without).extend(steps_s)

    def log_ratios(self, clock: str) -> list[float]:
        """Per pair ``ln(with / without)`` on the ``wall`` or ``cpu`` clock."""
        w, o = (self.wall_with, self.wall_without) if clock == "wall" else (
            self.cpu_with, self.cpu_without)  # fmt: skip
        return [math.log(a / b) for a, b in zip(w, o, strict=True)]

    def wall(self) -> Slowdown:
        return paired_slowdown(self.wall_with, self.wall_without)

    def cpu(self) -> Slowdown:
        return paired_slowdown(self.cpu_with, self.cpu_without)


def orders(pairs: int, seed: int) -> list[tuple[bool, bool]]:
    """For each pair, the order of its two blocks (True = with), drawn at random (seeded)."""
    rng = random.Random(seed)
    return [(True, False) if rng.random() < 0.5 else (False, True) for _ in range(pairs)]


def run_pairs(
    step: Callable[[], None],
    attach: Callable[[], None],
    detach: Callable[[], None],
    pairs: int,
    per_block: int,
    seed: int = 19,
) -> Pairs:
    """``pairs`` pairs of ``per_block`` steps with (``attach`` .. ``detach``) and without, in a
    random order per pair. Each step is timed on both clocks; the totals are the sums of the
    steps' times (attaching and detaching are not timed)."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    out = Pairs()
    for order in orders(pairs, seed):
        out.with_first += order[0]
        for hooked in order:
            if hooked:
                attach()
            wall_total = cpu_total = 0
            steps: list[float] = []
            for _ in range(per_block):
                w0, c0 = wall(), cpu()
                step()
                c1, w1 = cpu(), wall()
                wall_total += w1 - w0
                cpu_total += c1 - c0
                steps.append((w1 - w0) * 1e-9)
            if hooked:
                detach()
            out.add(hooked, wall_total, cpu_total, steps)
    return out
