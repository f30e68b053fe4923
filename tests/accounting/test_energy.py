"""Energy curves and attribution, checked against exact integrals of piecewise-constant power."""

import random

import pytest

from profiler.accounting.energy import (
    EnergyCurve,
    Holder,
    percentile,
    split_cpu_energy,
    split_interval,
)


def piecewise(phases: list[tuple[float, float]]):
    """(duration_s, watts) phases from t=0 -> power(t) and exact energy(t) functions."""
    edges = [0.0]
    for duration, _ in phases:
        edges.append(edges[-1] + duration)

    def power(t: float) -> float:
        for (duration, watts), lo in zip(phases, edges, strict=False):
            if lo <= t < lo + duration:
                return watts
        return phases[-1][1]

    def energy(t: float) -> float:
        total = 0.0
        for (duration, watts), lo in zip(phases, edges, strict=False):
            total += watts * max(0.0, min(t, lo + duration) - lo)
        return total

    return edges, power, energy


def sampled_curve(power, energy, t_end: float, interval: float, jitter: float = 0.0, seed=1):
    rng = random.Random(seed)
    curve = EnergyCurve()
    t = 0.0
    while t <= t_end + interval:
        curve.append(t, energy(t), power(t))
        t += interval * (1 + rng.uniform(-jitter, jitter))
    return curve


def training_trace(n_steps: int, seed: int = 7, gaps: bool = False):
    """Back-to-back steps of 200-600 ms, each at its own power (250-400 W), between idle
    stretches at 60 W; with ``gaps``, idle gaps of 10-80 ms between some steps."""
    rng = random.Random(seed)
    phases, steps = [(1.0, 60.0)], []
    t = 1.0
    for _ in range(n_steps):
        duration = rng.uniform(0.2, 0.6)
        phases.append((duration, rng.uniform(250, 400)))
        steps.append((t, t + duration))
        t += duration
        gap = rng.choice([0.0, 0.0, rng.uniform(0.01, 0.08)]) if gaps else 0.0
        if gap:
            phases.append((gap, 60.0))
            t += gap
    phases.append((1.0, 60.0))
    return phases, steps, t


def test_curve_interpolation_is_exact_at_samples_and_clamped():
    curve = EnergyCurve()
    curve.append(0.0, 0.0, 100.0)
    curve.append(1.0, 100.0, 100.0)
    curve.append(2.0, 300.0, 200.0)
    assert curve.energy_at(1.0) == pytest.approx(100.0)
    assert curve.energy_at(0.5) == pytest.approx(50.0)
    assert curve.energy_at(-3) == 0.0 and curve.energy_at(9) == 300.0
    assert curve.energy_between(2.0, 1.0) == 0.0


def test_single_power_change_inside_an_interval_is_exact():
    # 100 W until t=0.33, then 400 W; samples at 0 and 0.5 straddle the change.
    _, power, energy = piecewise([(0.33, 100.0), (1.0, 400.0)])
    curve = EnergyCurve()
    for t in (0.0, 0.5):
        curve.append(t, energy(t), power(t))
    assert curve.energy_at(0.33) == pytest.approx(energy(0.33), rel=1e-12)
    # linear interpolation would have been off by ~19 J here
    linear = energy(0.5) * 0.33 / 0.5
    assert abs(linear - energy(0.33)) > 15


def test_run_energy_within_half_percent_and_steps_within_two_percent():
    phases, steps, t_end = training_trace(120)
    _, power, energy = piecewise(phases)
    curve = sampled_curve(power, energy, t_end, 0.1, jitter=0.2)
    run_start, run_end = steps[0][0], steps[-1][1]
    truth = energy(run_end) - energy(run_start)
    share = split_interval(curve, 0.0, curve.last.t_s, [Holder("r", run_start, run_end)])
    assert share.energy_j["r"] == pytest.approx(truth, rel=0.005)
    assert share.seconds["r"] == pytest.approx(run_end - run_start, rel=1e-9)
    worst = 0.0
    for start, end in steps:
        exact = energy(end) - energy(start)
        worst = max(worst, abs(curve.energy_between(start, end) - exact) / exact)
    assert worst < 0.02, f"worst step error {worst:.2%}"


def test_run_energy_within_half_percent_with_short_idle_gaps():
    phases, steps, t_end = training_trace(200, seed=3, gaps=True)
    _, power, energy = piecewise(phases)
    curve = sampled_curve(power, energy, t_end, 0.1, jitter=0.2)
    run_start, run_end = steps[0][0], steps[-1][1]
    share = split_interval(curve, 0.0, curve.last.t_s, [Holder("r", run_start, run_end)])
    assert share.energy_j["r"] == pytest.approx(energy(run_end) - energy(run_start), rel=0.005)


def test_interval_pieces_add_up_and_shared_pieces_split_equally():
    _, power, energy = piecewise([(10.0, 300.0)])
    curve = sampled_curve(power, energy, 10.0, 0.5)
    holders = [Holder("a", 1.0, 6.0), Holder("b", 4.0, None)]
    share = split_interval(curve, 0.0, 10.0, holders)
    assert share.idle_j == pytest.approx(300.0)  # 0..1 s alone
    assert share.energy_j["a"] == pytest.approx(300 * 3 + 300 * 2 / 2)  # 1-4 alone, 4-6 shared
    assert share.energy_j["b"] == pytest.approx(300 * 2 / 2 + 300 * 4)  # 4-6 shared, 6-10 alone
    total = share.idle_j + sum(share.energy_j.values())
    assert total == pytest.approx(energy(10.0))
    assert share.seconds["a"] + share.seconds["b"] == pytest.approx(9.0)  # never counted twice


def test_curve_forgets_beyond_horizon_but_keeps_two_points():
    curve = EnergyCurve(horizon_s=1.0)
    for i in range(100):
        curve.append(i * 0.1, i * 10.0, 100.0)
    assert len(curve) <= 13
    assert curve.last.energy_j == 990.0


def test_percentile():
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(i) for i in range(101)], 0.95) == 95.0


def test_cpu_energy_split_by_cpu_time_share():
    shares = split_cpu_energy(100.0, 4.0, {"a": 1.0, "b": 2.0})
    assert shares == {"a": pytest.approx(25.0), "b": pytest.approx(50.0)}  # 25 J stays unowned
    # runs never get more than the whole, even when CPU accounting disagrees
    assert sum(split_cpu_energy(100.0, 1.0, {"a": 2.0, "b": 2.0}).values()) == pytest.approx(100)
    assert split_cpu_energy(0.0, 4.0, {"a": 1.0}) == {"a": 0.0}
