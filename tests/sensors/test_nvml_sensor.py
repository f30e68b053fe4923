"""NvmlSensor on the simulated GPU (the real code path, known ground truth) and on the real pynvml
of this GPU-less machine; discover_gpu_sensor."""

from __future__ import annotations

import os
from typing import Any

import pynvml
import pytest

from profiler.sensors import NvmlSensor, SensorUnavailable, discover_gpu_sensor
from profiler.sensors.simulated import BASE_MEMORY_BYTES, SimulatedNVML
from profiler.sensors.simulated_power import GIB


class FakeClock:
    """Monotonic seconds that move only when a test sets ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def real_nvml_initialises() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


no_real_gpu = pytest.mark.skipif(real_nvml_initialises(), reason="this machine has NVML")


def make(traces: Any, count: int = 1, model: str = "A100-SXM4-40GB", **kw: Any):
    clock = FakeClock()
    sim = SimulatedNVML(model, count, clock=clock, traces=traces, **kw)
    return clock, sim, NvmlSensor(sim, clock=clock)


def test_counter_energy_equals_the_exact_integral() -> None:
    clock, sim, sensor = make([(2.0, 100.0), (3.0, 250.0), (1.5, 400.0)])
    assert sensor.source == "simulated"
    energies = []
    for k in range(1, 101):
        clock.now = k * 0.1
        [s] = sensor.sample()
        assert s.t_s == clock.now
        assert s.energy_source == "counter"
        assert abs(s.energy_j - sim.exact_energy_j(0, 0.0, s.t_s)) < 0.001  # 1 mJ
        assert s.power_w == sim.exact_power_w(0, s.t_s)
        energies.append(s.energy_j)
    assert energies == sorted(energies)
    assert energies[-1] == pytest.approx(200 + 750 + 600 + 3.5 * 55, abs=0.001)  # 1742.5 J at 10 s
    assert (s.uuid, s.name, s.index) == (
        "GPU-5137a7ed-0000-4000-8000-000000000000",
        "NVIDIA A100-SXM4-40GB",
        0,
    )
    assert (s.power_limit_w, s.memory_total_bytes, s.memory_used_bytes) == (
        400.0,
        40 * GIB,
        BASE_MEMORY_BYTES,
    )
    assert s.simulated is True and s.processes == ()


def test_energy_counts_from_sensor_start_not_driver_load() -> None:
    clock = FakeClock()
    sim = SimulatedNVML(clock=clock, traces=[(100.0, 300.0)], energy_offset_mj=7_000_000_000)
    clock.now = 10.0  # the GPU drew 3 kJ before the sensor started
    sensor = NvmlSensor(sim, clock=clock)
    clock.now = 12.0
    [s] = sensor.sample()
    assert s.energy_j == pytest.approx(600.0, abs=0.001)


def test_power_integration_is_close_to_the_exact_integral_for_a_slow_trace() -> None:
    ramp = [(1.0, 100.0 + 10.0 * k) for k in range(30)]  # 100 W -> 390 W in 10 W steps
    clock = FakeClock()
    sim = SimulatedNVML(clock=clock, traces=ramp)
    sim.set_energy_counter_supported(0, False)
    sensor = NvmlSensor(sim, clock=clock)
    dt = 0.1
    for k in range(1, 321):  # 10 Hz for 32 s
        clock.now = k * dt + 0.03  # sample times off the phase boundaries
        [s] = sensor.sample()
        assert s.energy_source == "power_integration"
    exact = sim.exact_energy_j(0, 0.0, s.t_s)
    # trapezoid error: at most |dP| * dt / 2 per step of the trace (29 steps of 10 W, one of 335)
    bound = (29 * 10.0 + (390.0 - 55.0)) * dt / 2
    assert abs(s.energy_j - exact) <= bound
    assert bound / exact < 0.005  # stated tolerance: within 0.5 % of the truth


def test_counter_going_backwards_stays_monotone() -> None:
    clock, sim, sensor = make([(100.0, 200.0)])
    clock.now = 1.0
    [a] = sensor.sample()
    clock.now = 2.0
    [b] = sensor.sample()
    clock.now = 2.5
    sim.reset_energy_counter(0)  # a driver reload: the counter restarts from 0 mJ
    clock.now = 3.0
    [c] = sensor.sample()
    clock.now = 4.0
    [d] = sensor.sample()
    assert a.energy_j <= b.energy_j <= c.energy_j <= d.energy_j
    # the reset interval is estimated from power (exact here: power is constant), then the counter
    assert c.energy_j == pytest.approx(600.0, abs=0.002)
    assert d.energy_j == pytest.approx(800.0, abs=0.002)
    assert d.energy_source == "counter"
    assert sensor.errors == {"gpu0:CounterReset": 1}


def test_counter_lost_mid_run_falls_back_to_power_integration() -> None:
    clock, sim, sensor = make([(100.0, 150.0)])
    clock.now = 1.0
    [a] = sensor.sample()
    sim.set_energy_counter_supported(0, False)
    clock.now = 2.0
    [b] = sensor.sample()
    assert (a.energy_source, b.energy_source) == ("counter", "power_integration")
    assert b.energy_j == pytest.approx(300.0, abs=0.002)


def test_lost_gpu_is_skipped_and_counted_while_the_other_keeps_sampling() -> None:
    clock, sim, sensor = make([(100.0, 300.0)], count=2)
    clock.now = 1.0
    assert [s.index for s in sensor.sample()] == [0, 1]
    sim.set_lost(1, True)
    for k in (2, 3):
        clock.now = float(k)
        [s0] = sensor.sample()
        assert s0.index == 0 and s0.energy_j == pytest.approx(300.0 * k, abs=0.001)
    assert sensor.errors == {"gpu1:GpuIsLost": 2}
    sim.set_lost(1, False)
    clock.now = 4.0
    s0, s1 = sensor.sample()
    assert s1.energy_j == pytest.approx(1200.0, abs=0.001)  # the counter covers the gap


def test_utilization_ratio() -> None:
    clock, _, sensor = make([(10.0, 227.5)])  # halfway between 55 W idle and the 400 W limit
    clock.now = 1.0
    assert sensor.sample()[0].utilization_ratio == 0.5
    clock, _, sensor = make([(10.0, 70.0)], model="T4")
    clock.now = 1.0
    assert sensor.sample()[0].utilization_ratio == 1.0


class PartialNVML(SimulatedNVML):
    """A simulated GPU without utilization and with process listing denied."""

    def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):  # noqa: N802
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)


def test_unsupported_fields_are_none_and_other_errors_are_counted() -> None:
    clock = FakeClock()
    sensor = NvmlSensor(PartialNVML(clock=clock, traces=[(5.0, 100.0)]), clock=clock)
    clock.now = 1.0
    [s] = sensor.sample()
    assert s.utilization_ratio is None and s.processes == ()
    assert s.energy_j == pytest.approx(100.0, abs=0.001)
    assert sensor.errors == {"gpu0:NoPermission": 1}


def test_attach_process_forwards_to_the_simulator() -> None:
    clock, _, sensor = make(None, count=2)
    sensor.attach_process(os.getpid(), [1])
    s0, s1 = sensor.sample()
    assert s0.processes == ()
    [p] = s1.processes
    assert p.pid == os.getpid() and p.used_memory_bytes > 0
    # the stand-in figure is this test process's RSS, read twice while threads run: pages apart
    assert abs(s1.memory_used_bytes - (BASE_MEMORY_BYTES + p.used_memory_bytes)) <= 1 << 20
    sensor.detach_process(os.getpid())
    assert sensor.sample()[1].processes == ()


def test_close_shuts_nvml_down_once() -> None:
    clock, sim, sensor = make([(1.0, 100.0)])
    sensor.close()
    sensor.close()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlDeviceGetCount()
    assert sensor.sample() == []


# ---- real pynvml on this GPU-less machine, and discovery


@no_real_gpu
def test_real_nvml_is_unavailable_here() -> None:
    with pytest.raises(SensorUnavailable) as info:
        NvmlSensor()
    assert isinstance(info.value.__cause__, pynvml.NVMLError_LibraryNotFound)
    assert str(info.value) == (
        "NVML did not initialise (NVML Shared Library Not Found): no NVIDIA driver found"
    )


@no_real_gpu
def test_discover_auto_without_gpu_returns_none_with_the_reason() -> None:
    sensor, text = discover_gpu_sensor("auto")
    assert sensor is None
    # one line: NVML's reason, then amdsmi's (tried next: tests/sensors/test_amdsmi.py), then
    # what to do
    assert text.startswith(
        "no GPU found: NVML did not initialise (NVML Shared Library Not Found): no NVIDIA driver "
        "found; amdsmi "
    )
    assert text.endswith("; set PROFILER_GPU=simulated (or simulated-amd) to use a simulated GPU")
    assert "\n" not in text
    with pytest.raises(SensorUnavailable, match="no NVIDIA driver found"):
        discover_gpu_sensor("nvml")


def test_discover_none_and_simulated() -> None:
    assert discover_gpu_sensor("none") == (None, "GPU sampling off (gpu = none)")
    clock = FakeClock(5.0)
    sensor, text = discover_gpu_sensor("simulated", clock=clock)
    assert sensor is not None and sensor.source == "simulated"
    assert text == (
        "SIMULATED GPU (a power model, not hardware): 1 x NVIDIA A100-SXM4-40GB; "
        "energy from counter"
    )
    clock.now = 6.0
    [s] = sensor.sample()
    assert (s.t_s, s.simulated, s.power_w) == (6.0, True, 55.0)
    sensor, text = discover_gpu_sensor("simulated:l4:3")
    assert [d.name for d in sensor.devices] == ["NVIDIA L4"] * 3
    assert "3 x NVIDIA L4" in text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("simulated:A200", "unknown simulated GPU model 'A200'; allowed models: A100-SXM4-40GB, "),
        ("simulated:T4:0", "COUNT must be an integer from 1 to 64, got '0'"),
        ("simulated:T4:2:1", "expected simulated"),
        ("cuda", "expected auto, nvml, amdsmi, none, simulated"),
    ],
)
def test_discover_rejects_bad_specs_clearly(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        discover_gpu_sensor(spec)
    assert repr(spec) in str(info.value) and message in str(info.value)
