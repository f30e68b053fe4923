"""The polling path's fast power readings on the energy curve (profiler.accounting.energy):
they split each sampling interval's measured energy by the trapezoid through them, keep the
interval's total exact, leave the samples' bracket alone and are thinned after a while."""

from __future__ import annotations

import pytest

from profiler.accounting.energy import EnergyCurve, step_bound_j
from profiler.sensors.nvml_power import trapezoid_j


def two_samples(between=()) -> EnergyCurve:
    """Samples at 0 s (100 W) and 0.1 s (300 W) with 40 J between them."""
    curve = EnergyCurve()
    curve.append(0.0, 0.0, 100.0)
    curve.append(0.1, 40.0, 300.0, between)
    return curve


def test_readings_split_the_interval_by_the_trapezoid_and_keep_its_total():
    readings = [(0.02, 100.0), (0.04, 100.0), (0.06, 500.0), (0.08, 500.0)]
    curve = two_samples(readings)
    points = [(0.0, 100.0), *readings, (0.1, 300.0)]
    whole = trapezoid_j(points)  # 28 J by the readings, scaled to the measured 40 J
    for k, (t, _w) in enumerate(readings, start=1):
        assert curve.energy_at(t) == pytest.approx(40.0 * trapezoid_j(points[: k + 1]) / whole)
    assert curve.energy_between(0.0, 0.1) == pytest.approx(40.0)
    # most of the energy is where power was high: the last 40 ms, not spread evenly
    assert curve.energy_between(0.06, 0.1) > 2 * curve.energy_between(0.0, 0.04)
    assert curve.fine_points == 6  # two samples and four readings


def test_bracket_stays_the_samples_and_readings_outside_are_ignored():
    plain = two_samples()
    curve = two_samples([(-1.0, 900.0), (0.05, 200.0), (0.05, 999.0), (0.2, 900.0)])
    assert curve.fine_points == 3  # only the one strictly inside, once
    assert curve.bracket(0.03, 0.07) == plain.bracket(0.03, 0.07) == (0.0, 40.0)
    j = curve.energy_between(0.03, 0.07)
    assert step_bound_j(curve, 0.03, 0.07, j) == pytest.approx(max(j, 40.0 - j) + 2e-3)


def test_no_points_without_a_power_reading_at_both_samples():
    curve = EnergyCurve()
    curve.append(0.0, 0.0, None)
    curve.append(0.1, 40.0, 300.0, [(0.05, 500.0)])
    assert curve.fine_points == 0
    assert curve.energy_at(0.05) == pytest.approx(20.0)  # linear, as without readings


def test_thin_forgets_readings_before_a_time_and_keeps_the_samples():
    curve, plain = EnergyCurve(), EnergyCurve()
    for c in (curve, plain):
        c.append(0.0, 0.0, 100.0)
    for k in range(1, 51):  # 5 s of 10 Hz samples at 100 W, a 500 W reading in each interval
        t = k / 10
        curve.append(t, 10.0 * t + 2.0 * k, 100.0, [(t - 0.05, 500.0)])
        plain.append(t, 10.0 * t + 2.0 * k, 100.0)
    assert curve.fine_points == 101
    assert curve.energy_at(1.53) != pytest.approx(plain.energy_at(1.53))
    curve.thin(2.0)
    assert curve.fine_points == 61  # from the sample at 2.0 s on
    assert curve.energy_at(1.53) == pytest.approx(plain.energy_at(1.53))  # as without readings
    assert curve.energy_at(2.03) != pytest.approx(plain.energy_at(2.03))
    assert curve.energy_between(0.0, 5.0) == pytest.approx(150.0)  # the samples all stay
    curve.thin(10.0)
    assert curve.fine_points == 0
    assert curve.energy_at(4.53) == pytest.approx(plain.energy_at(4.53))


def test_readings_are_kept_for_the_fine_horizon_at_most():
    curve = EnergyCurve(fine_horizon_s=1.0)
    curve.append(0.0, 0.0, 100.0)
    for k in range(1, 101):  # 10 s
        t = k / 10
        curve.append(t, 10.0 * t, 100.0, [(t - 0.05, 100.0)])
        assert curve.fine_points <= 2 * 11 + 1  # 1 s of samples and readings, and an edge
    assert curve.energy_at(9.95) == pytest.approx(99.5)
