"""HostSensor (TDP x load estimate) and discover_cpu_sensor."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from profiler.sensors.host import IDLE_FRACTION, HostSensor, default_tdp_w, discover_cpu_sensor
from profiler.sensors.rapl import RaplSensor


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeCpuPercent:
    """Returns the queued percentages; records that every call was non-blocking."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.intervals: list[object] = []

    def __call__(self, interval: object = "missing") -> float:
        self.intervals.append(interval)
        return self.values.pop(0)


# ---- HostSensor


def test_integrates_the_power_model_exactly() -> None:
    clock = FakeClock(10.0)
    pct = FakeCpuPercent(0.0, 50.0, 100.0, 0.0, 0.0)  # first value primes
    sensor = HostSensor(tdp_w=100.0, clock=clock, cpu_percent=pct)
    assert IDLE_FRACTION == 0.12
    assert sensor.last_utilization_ratio is None

    clock.t = 12.0  # 2 s at 50 %: 100 * (0.12 + 0.88 * 0.5) = 56 W -> 112 J
    [s] = sensor.sample()
    assert (s.zone, s.t_s, s.source) == ("cpu", 12.0, "estimated")
    assert s.energy_j == pytest.approx(112.0)
    assert sensor.last_utilization_ratio == 0.5
    assert sensor.last_power_w == pytest.approx(56.0)

    clock.t = 13.0  # 1 s at 100 %: 100 W -> +100 J
    assert sensor.sample()[0].energy_j == pytest.approx(212.0)
    clock.t = 13.0  # no time passed: no energy
    assert sensor.sample()[0].energy_j == pytest.approx(212.0)
    clock.t = 23.0  # 10 s idle: 12 W -> +120 J
    assert sensor.sample()[0].energy_j == pytest.approx(332.0)
    assert pct.intervals == [None] * 5


def test_load_is_clamped() -> None:
    clock = FakeClock()
    sensor = HostSensor(tdp_w=50.0, clock=clock, cpu_percent=FakeCpuPercent(0.0, 130.0, -5.0))
    clock.t = 1.0
    assert sensor.sample()[0].energy_j == pytest.approx(50.0)
    assert sensor.last_utilization_ratio == 1.0
    clock.t = 2.0
    assert sensor.sample()[0].energy_j == pytest.approx(50.0 + 6.0)
    assert sensor.last_utilization_ratio == 0.0


def test_default_tdp_is_an_assumption_per_logical_cpu() -> None:
    assert default_tdp_w(1) == 15.0
    assert default_tdp_w(4) == 40.0
    assert default_tdp_w(128) == 250.0
    sensor = HostSensor(cpu_percent=FakeCpuPercent(0.0))
    assert sensor.tdp_assumed
    assert sensor.tdp_w == default_tdp_w(psutil.cpu_count(logical=True))
    assert "assumed" in sensor.describe()
    assert not HostSensor(tdp_w=65, cpu_percent=FakeCpuPercent(0.0)).tdp_assumed


def test_rejects_nonpositive_tdp() -> None:
    with pytest.raises(ValueError, match="tdp_w"):
        HostSensor(tdp_w=0, cpu_percent=FakeCpuPercent(0.0))


def test_real_psutil_default_works() -> None:
    sensor = HostSensor(tdp_w=20.0)
    [s] = sensor.sample()
    assert s.energy_j >= 0.0
    assert sensor.last_utilization_ratio is not None
    assert 0.0 <= sensor.last_utilization_ratio <= 1.0


# ---- discover_cpu_sensor


def test_discover_prefers_rapl(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    for key, value in {"name": "package-0", "energy_uj": 5, "max_energy_range_uj": 10**9}.items():
        (zone / key).write_text(f"{value}\n")
    sensor, text = discover_cpu_sensor(root=tmp_path, tdp_w=20)
    assert isinstance(sensor, RaplSensor)
    assert "RAPL" in text and "package-0" in text and "\n" not in text


def test_discover_falls_back_to_the_estimate(tmp_path: Path) -> None:
    clock = FakeClock(5.0)
    sensor, text = discover_cpu_sensor(root=tmp_path / "none", tdp_w=20, clock=clock)
    assert isinstance(sensor, HostSensor)
    assert sensor.clock is clock
    assert text.startswith("CPU energy: estimated from TDP 20 W")
    assert "RAPL unavailable" in text and "no intel-rapl" in text and "\n" not in text
    assert sensor.sample()[0].source == "estimated"
