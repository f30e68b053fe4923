"""The polling path's fast power reader (profiler.sensors.nvml_power) and the simulator's
``nvmlDeviceGetFieldValues`` and realistic (incremental) energy counter."""

from __future__ import annotations

import random
import threading
import time

import pynvml
import pytest
from inprocess import FakeClock

from profiler.sensors.nvml import POWER_INTEGRATION, NvmlSensor
from profiler.sensors.nvml_power import PowerPoller, trapezoid_j
from profiler.sensors.simulated import SimulatedNVML

MODEL = "A100-SXM4-40GB"


def bursty(seconds: float, seed: int) -> list[tuple[float, float]]:
    """Phases of 30-70 ms alternating busy (250-400 W) and host gaps (80-120 W)."""
    rng = random.Random(seed)
    phases, t = [], 0.0
    while t < seconds:
        for lo, hi in ((250.0, 400.0), (80.0, 120.0)):
            d = rng.uniform(0.03, 0.07)
            phases.append((d, rng.uniform(lo, hi)))
            t += d
    return phases


def test_field_values_power_instant_and_energy_as_pynvml_gives_them():
    clock = FakeClock()
    sim = SimulatedNVML(MODEL, 1, clock=clock, traces=[[(1.0, 250.0), (1.0, 120.0)]])
    sim.nvmlInit()
    h = sim.nvmlDeviceGetHandleByIndex(0)
    clock.now += 1.5
    ids = [
        (pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_GPU),
        pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
        pynvml.NVML_FI_DEV_POWER_AVERAGE,  # not simulated: its entry says so
    ]
    power, energy, other = sim.nvmlDeviceGetFieldValues(h, ids)
    assert isinstance(power, pynvml.c_nvmlFieldValue_t)
    assert power.nvmlReturn == pynvml.NVML_SUCCESS and power.value.uiVal == 120_000
    assert power.valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    assert power.timestamp == int(clock.now * 1e6)
    assert energy.nvmlReturn == pynvml.NVML_SUCCESS
    assert energy.value.ullVal == sim.nvmlDeviceGetTotalEnergyConsumption(h) == 310_000
    assert other.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    sim.set_power_instant_supported(False)
    sim.set_energy_counter_supported(0, False)
    power, energy = sim.nvmlDeviceGetFieldValues(h, ids[:2])
    assert power.nvmlReturn == energy.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_counter_advances_in_increments_when_asked():
    clock = FakeClock()
    sim = SimulatedNVML(MODEL, 1, clock=clock, traces=[[(10.0, 200.0)]])
    sim.nvmlInit()
    h = sim.nvmlDeviceGetHandleByIndex(0)
    sim.set_counter_update_s(0.05)
    t0 = clock.now
    readings = []
    for k in range(11):  # every 10 ms, half-way between two ticks of 10 ms
        clock.now = t0 + 0.005 + k * 0.01
        readings.append(sim.nvmlDeviceGetTotalEnergyConsumption(h))
    # 200 W: 10 J per 50 ms update, flat in between (the reading lags by up to one period)
    assert [round(r / 1000) for r in readings] == [0] * 5 + [10] * 5 + [20]  # joules
    sim.set_counter_update_s(0.0)
    assert sim.nvmlDeviceGetTotalEnergyConsumption(h) == pytest.approx(21_000, abs=1)
    with pytest.raises(ValueError, match="counter_update_s"):
        sim.set_counter_update_s(-1)


@pytest.mark.parametrize("instant", [True, False])
def test_poller_reads_power_instant_else_power_usage(instant):
    clock = FakeClock()
    sim = SimulatedNVML(MODEL, 1, clock=clock, traces=[[(1.0, 300.0)]])
    sim.set_power_instant_supported(instant)
    sim.set_energy_counter_supported(0, False)
    sensor = NvmlSensor(sim, clock=clock)
    expected = "power_instant" if instant else "power_usage"
    assert "power read at 50 Hz (gpu 0: " + expected + ")" in sensor.describe()
    assert sensor.devices[0].energy_source == POWER_INTEGRATION
    sensor.close()


def test_no_poller_for_a_device_with_a_counter():
    clock = FakeClock()
    sensor = NvmlSensor(SimulatedNVML(MODEL, 2, clock=clock, traces=[(1.0, 300.0)]), clock=clock)
    assert "power read at" not in sensor.describe()
    sensor.poll_power()  # nothing to poll: a no-op
    sensor.close()


def test_sample_carries_the_readings_it_integrated_on_the_polling_path_only():
    clock = FakeClock()
    trace = [(0.05, 100.0), (1.0, 300.0)]
    sim = SimulatedNVML(MODEL, 2, clock=clock, traces=[trace, trace])
    sim.set_energy_counter_supported(1, False)
    sensor = NvmlSensor(sim, clock=clock)
    t0 = clock.now
    first = sensor.sample()
    assert [s.power_points for s in first] == [(), ()]  # no interval yet
    for k in range(1, 5):  # readings at +20 .. +80 ms
        clock.now = t0 + 0.02 * k
        sensor.poll_power()
    clock.now = t0 + 0.1
    counter, polled = sensor.sample()
    assert counter.power_points == ()
    assert [t - t0 for t, _w in polled.power_points] == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert [w for _t, w in polled.power_points] == [100.0, 100.0, 300.0, 300.0]
    points = [(t0, 100.0), *polled.power_points, (t0 + 0.1, 300.0)]
    assert polled.energy_j - first[1].energy_j == pytest.approx(trapezoid_j(points))
    clock.now = t0 + 0.2  # no readings in between: none carried
    assert sensor.sample()[1].power_points == ()
    sensor.close()


def run_energy(poll_hz: float | None, seed: int) -> tuple[float, float]:
    """(measured, exact) joules of 20 s of a bursty trace on the polling path, 10 Hz samples
    with jitter, fast power reads at ``poll_hz`` between them (None: none)."""
    clock = FakeClock()
    sim = SimulatedNVML(MODEL, 1, clock=clock, traces=[bursty(22.0, seed)])
    sim.set_energy_counter_supported(0, False)
    sensor = NvmlSensor(sim, clock=clock, power_poll_hz=poll_hz)
    rng = random.Random(seed)
    t0 = clock.now
    first = sensor.sample()[0]
    while clock.now < t0 + 20.0:
        due = clock.now + 0.1 * (1 + rng.uniform(-0.2, 0.2))
        while poll_hz and clock.now + 1 / poll_hz < due:
            clock.now += 1 / poll_hz
            sensor.poll_power()
        clock.now = due
        last = sensor.sample()[0]
    sensor.close()
    assert last.energy_source == POWER_INTEGRATION
    return last.energy_j - first.energy_j, sim.exact_energy_j(0, first.t_s, last.t_s)


def test_fast_polls_bring_the_polling_path_within_one_percent():
    fast = [abs(m / e - 1) for m, e in (run_energy(50.0, s) for s in range(5))]
    slow = [abs(m / e - 1) for m, e in (run_energy(None, s) for s in range(5))]
    assert max(fast) < 0.01, fast
    assert sorted(fast)[2] < sorted(slow)[2] / 3, (fast, slow)  # medians: aliasing cut


def test_integrate_uses_only_readings_between_the_samples():
    clock = FakeClock()
    sim = SimulatedNVML(MODEL, 1, clock=clock, traces=[[(0.05, 100.0), (1.0, 300.0)]])
    sim.nvmlInit()
    poller = PowerPoller(sim, {0: sim.nvmlDeviceGetHandleByIndex(0)}, clock=clock)
    t0 = clock.now
    for k in range(1, 5):  # readings at +20, +40, +60, +80 ms
        clock.now = t0 + 0.02 * k
        poller.poll()
    # samples at t0 (100 W) and t0 + 0.1 (300 W): the trapezoid through the four readings
    j = poller.integrate_j(0, t0, 100.0, t0 + 0.1, 300.0)
    points = [(t0, 100.0), (t0 + 0.02, 100.0), (t0 + 0.04, 100.0), (t0 + 0.06, 300.0),
              (t0 + 0.08, 300.0), (t0 + 0.1, 300.0)]  # fmt: skip
    assert j == pytest.approx(trapezoid_j(points))
    assert poller.integrate_j(0, t0 + 0.1, 300.0, t0 + 0.2, 300.0) == pytest.approx(30.0)


def test_thread_polls_on_the_real_clock_and_stops_at_close():
    sim = SimulatedNVML(MODEL, 1, traces=[[(60.0, 300.0)]])
    sim.set_energy_counter_supported(0, False)
    sensor = NvmlSensor(sim)
    poller = sensor._power
    assert poller is not None
    deadline = time.monotonic() + 10
    while poller.reads < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert poller.reads >= 5
    assert any(t.name == "nvml-power" for t in threading.enumerate())
    sensor.close()
    deadline = time.monotonic() + 10
    while any(t.name == "nvml-power" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the poller thread did not stop"
        time.sleep(0.02)
