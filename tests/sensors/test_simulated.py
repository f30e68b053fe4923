"""The simulated GPU: pynvml's API and units, an energy counter that is the exact integral of its
power model (scripted traces and process load), and fault injection."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pynvml
import pytest

from profiler.sensors.simulated import BASE_MEMORY_BYTES, SimulatedNVML
from profiler.sensors.simulated_power import (
    GIB,
    GPU_MODELS,
    RETENTION_S,
    RecordedPower,
    parse_simulated_spec,
)


class FakeClock:
    """Monotonic seconds that move only when a test sets ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


TRACE = [(2.0, 100.0), (3.0, 250.0), (1.5, 400.0)]  # 6.5 s, then idle (55 W on an A100-40GB)


def reference_energy_j(trace: list[tuple[float, float]], t: float, idle_w: float) -> float:
    """Joules of a non-repeating trace from 0 to ``t`` seconds, phase by phase."""
    joules, start = 0.0, 0.0
    for duration, watts in trace:
        joules += watts * max(0.0, min(t, start + duration) - start)
        start += duration
    return joules + idle_w * max(0.0, t - start)


def started(sim: SimulatedNVML) -> SimulatedNVML:
    sim.nvmlInit()
    return sim


@pytest.mark.parametrize("t", [0.0, 0.7, 2.0, 3.3, 6.5, 10.0, 123.456])
def test_counter_is_the_exact_integral_of_a_scripted_trace(t: float) -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML(clock=clock, traces=TRACE))
    h = nv.nvmlDeviceGetHandleByIndex(0)
    clock.now = t
    expected_j = reference_energy_j(TRACE, t, idle_w=55.0)
    counter_mj = nv.nvmlDeviceGetTotalEnergyConsumption(h)
    assert isinstance(counter_mj, int)
    assert abs(counter_mj - expected_j * 1000) <= 1
    assert nv.exact_energy_j(0, 0.0, t) == pytest.approx(expected_j, abs=1e-9)


def test_hand_computed_points_of_the_scripted_trace() -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML(clock=clock, traces=TRACE))
    h = nv.nvmlDeviceGetHandleByIndex(0)
    for t, mj, mw in [(3.3, 525_000, 250_000), (6.5, 1_550_000, 55_000), (10.0, 1_742_500, 55_000)]:
        clock.now = t
        assert nv.nvmlDeviceGetTotalEnergyConsumption(h) in (mj - 1, mj)
        assert nv.nvmlDeviceGetPowerUsage(h) == mw


def test_exact_energy_of_sub_windows() -> None:
    clock = FakeClock(100.0)  # the trace starts at construction, whatever the clock reads
    nv = SimulatedNVML(clock=clock, traces=TRACE)
    clock.now = 110.0
    assert nv.exact_energy_j(0, 101.0, 102.5) == pytest.approx(1 * 100 + 0.5 * 250)
    assert nv.exact_energy_j(0, 105.0, 108.0) == pytest.approx(1.5 * 400 + 1.5 * 55)
    assert nv.exact_energy_j(0, 104.0, 104.0) == 0.0
    for t0, t1 in [(99.0, 101.0), (101.0, 111.0), (105.0, 104.0)]:
        with pytest.raises(ValueError, match="t0_s"):
            nv.exact_energy_j(0, t0, t1)


def test_repeating_trace_loops() -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML(clock=clock, traces=[(1.0, 100.0), (1.0, 300.0)], repeat=True))
    h = nv.nvmlDeviceGetHandleByIndex(0)
    clock.now = 5.5  # 2 cycles of 400 J, then 1 s at 100 W and 0.5 s at 300 W
    assert nv.exact_energy_j(0, 0.0, 5.5) == pytest.approx(1050.0)
    assert nv.nvmlDeviceGetPowerUsage(h) == 300_000
    clock.now = 6.2
    assert nv.nvmlDeviceGetPowerUsage(h) == 100_000
    clock.now = 36_000.5  # ten hours later: 18000 cycles + 0.5 s at 100 W
    assert nv.nvmlDeviceGetTotalEnergyConsumption(h) == 7_200_050_000
    assert nv.exact_energy_j(0, 35_999.0, 36_000.5) == pytest.approx(300.0 + 50.0)


def test_energy_offset_is_added_to_the_counter() -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML(clock=clock, traces=[(10.0, 200.0)], energy_offset_mj=5_000_000))
    clock.now = 2.0
    assert nv.nvmlDeviceGetTotalEnergyConsumption(nv.nvmlDeviceGetHandleByIndex(0)) == 5_400_000


def test_per_device_traces_and_load_mode_device() -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML("L4", 3, clock=clock, traces=[[(5.0, 44.0)], [(5.0, 72.0)], None]))
    clock.now = 1.0
    powers = [nv.nvmlDeviceGetPowerUsage(nv.nvmlDeviceGetHandleByIndex(i)) for i in range(3)]
    assert powers == [44_000, 72_000, 16_000]  # the load-mode device has nothing attached: idle
    rates = [nv.nvmlDeviceGetUtilizationRates(nv.nvmlDeviceGetHandleByIndex(i)) for i in range(3)]
    assert [r.gpu for r in rates] == [50, 100, 0]  # (44 - 16) / (72 - 16) = 0.5
    with pytest.raises(ValueError, match="2 traces for 3 devices"):
        SimulatedNVML("L4", 3, traces=[[(1.0, 20.0)], [(1.0, 20.0)]])


def test_pynvml_api_shapes_and_units() -> None:
    nv = started(SimulatedNVML("A100-SXM4-40GB", 2, clock=FakeClock()))
    assert nv.SIMULATED is True
    assert nv.nvmlDeviceGetCount() == 2
    assert nv.nvmlSystemGetDriverVersion()
    h = nv.nvmlDeviceGetHandleByIndex(1)
    assert nv.nvmlDeviceGetName(h) == "NVIDIA A100-SXM4-40GB"
    uuid = nv.nvmlDeviceGetUUID(h)
    assert uuid == "GPU-5137a7ed-0000-4000-8000-000000000001"
    assert nv.nvmlDeviceGetHandleByUUID(uuid) == h
    assert nv.nvmlDeviceGetHandleByUUID(uuid.encode()) == h
    assert nv.nvmlDeviceGetEnforcedPowerLimit(h) == 400_000  # mW
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    assert (mem.total, mem.used, mem.free) == (40 * GIB, BASE_MEMORY_BYTES, 40 * GIB - mem.used)
    assert nv.nvmlDeviceGetComputeRunningProcesses(h) == []
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nv.nvmlDeviceGetHandleByUUID("GPU-nope")


def test_models_have_sane_envelopes() -> None:
    assert {"A100-SXM4-40GB", "A100-SXM4-80GB", "H100-SXM5-80GB", "L4", "T4"} <= set(GPU_MODELS)
    for m in GPU_MODELS.values():
        assert 0 < m.idle_w < m.power_limit_w and m.memory_bytes >= 16 * GIB
    assert GPU_MODELS["H100-SXM5-80GB"].power_limit_w == 700.0


def test_calls_before_init_and_after_shutdown_raise_uninitialized() -> None:
    nv = SimulatedNVML(clock=FakeClock())
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetCount()
    with pytest.raises(nv.NVMLError_Uninitialized):
        nv.nvmlShutdown()
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    nv.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError):
        nv.nvmlDeviceGetPowerUsage(h)


def test_fault_injection() -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML(count=2, clock=clock, traces=[(10.0, 200.0)]))
    h0, h1 = (nv.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    nv.set_energy_counter_supported(0, False)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceGetTotalEnergyConsumption(h0)
    assert nv.nvmlDeviceGetPowerUsage(h0) == 200_000
    nv.set_lost(1, True)
    for call in (nv.nvmlDeviceGetPowerUsage, nv.nvmlDeviceGetName, nv.nvmlDeviceGetMemoryInfo):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call(h1)
    nv.set_lost(1, False)
    clock.now = 1.0
    assert nv.nvmlDeviceGetTotalEnergyConsumption(h1) == 200_000


def test_reset_energy_counter_restarts_the_counter_not_the_truth() -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML(clock=clock, traces=[(10.0, 200.0)], energy_offset_mj=10**9))
    h = nv.nvmlDeviceGetHandleByIndex(0)
    clock.now = 2.0
    nv.reset_energy_counter(0)
    clock.now = 3.0
    assert nv.nvmlDeviceGetTotalEnergyConsumption(h) == 200_000
    assert nv.exact_energy_j(0, 0.0, 3.0) == pytest.approx(600.0)


def test_recorded_power_is_memory_bounded_and_keeps_the_total() -> None:
    power = RecordedPower(0.0, 10.0)
    for i in range(1, 20_000):  # a change every second for 5.5 hours: 10 W, 20 W, 10 W, ...
        power.set(float(i), 20.0 if i % 2 else 10.0)
    assert power.energy_at(20_000.0) == pytest.approx(10_000 * 10.0 + 10_000 * 20.0)
    assert len(power._starts) <= RETENTION_S + 1100
    assert power.oldest_s <= 20_000.0 - RETENTION_S
    assert power.energy_at(19_999.5) - power.energy_at(19_998.0) == pytest.approx(10 + 20 * 0.5)


def test_parse_simulated_spec() -> None:
    assert parse_simulated_spec("simulated") == ("A100-SXM4-40GB", 1)
    assert parse_simulated_spec("simulated:h100-sxm5-80gb:8") == ("H100-SXM5-80GB", 8)
    with pytest.raises(
        ValueError, match="unknown simulated GPU model 'B200'.*allowed models: A100"
    ):
        parse_simulated_spec("simulated:B200")
    with pytest.raises(ValueError, match="COUNT must be an integer from 1 to 64, got 'two'"):
        parse_simulated_spec("simulated:L4:two")


# ---- load mode: power follows the CPU activity of real attached processes


@pytest.fixture
def busy_pid() -> Iterator[int]:
    """A real process spinning one CPU core, killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_load_mode_follows_an_attached_busy_process(busy_pid: int) -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML("A100-SXM4-40GB", 2, clock=clock, noise=0.015, seed=1))
    h0, h1 = (nv.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    nv.attach_process(busy_pid, 0)
    busy = psutil.Process(busy_pid)
    watts0, counters = [], []
    cpu0, wall0 = sum(busy.cpu_times()[:2]), time.monotonic()
    for _ in range(8):  # the fake clock moves with real time, so CPU/wall ratios are real
        time.sleep(0.06)
        clock.now += 0.06
        watts0.append(nv.nvmlDeviceGetPowerUsage(h0) / 1000)
        assert nv.nvmlDeviceGetPowerUsage(h1) == 55_000  # nothing attached: exactly idle
        counters.append(nv.nvmlDeviceGetTotalEnergyConsumption(h0))
    utilization = nv.nvmlDeviceGetUtilizationRates(h0).gpu / 100
    # what the spinning process really got of a core (less than 1 on a loaded machine)
    share = min(1.0, (sum(busy.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0))
    assert share > 0.2, "the busy process barely ran; the machine is too loaded to tell"
    # power follows that share on average (each reading covers its own window), never leaving
    # [idle, limit]; utilization is the same ratio as power
    mean_ratio = sum((w - 55) / (400 - 55) for w in watts0) / len(watts0)
    assert abs(mean_ratio - share) < 0.2
    assert all(55 <= w <= 400 for w in watts0)
    assert abs(utilization - (watts0[-1] - 55) / (400 - 55)) < 0.1
    # the counter is still the exact integral of the (noisy, piecewise-constant) power
    assert abs(counters[-1] - nv.exact_energy_j(0, 0.0, clock.now) * 1000) <= 1
    assert counters == sorted(counters)
    [p] = nv.nvmlDeviceGetComputeRunningProcesses(h0)
    assert p.pid == busy_pid and p.usedGpuMemory > 0  # resident memory stands in
    assert nv.nvmlDeviceGetMemoryInfo(h0).used == BASE_MEMORY_BYTES + p.usedGpuMemory
    assert nv.nvmlDeviceGetComputeRunningProcesses(h1) == []


def test_given_memory_figure_and_detach() -> None:
    nv = started(SimulatedNVML("T4", clock=FakeClock()))
    h = nv.nvmlDeviceGetHandleByIndex(0)
    nv.attach_process(os.getpid(), 0, used_memory_bytes=3 * GIB)
    [p] = nv.nvmlDeviceGetComputeRunningProcesses(h)
    assert (p.pid, p.usedGpuMemory) == (os.getpid(), 3 * GIB)
    nv.attach_process(os.getpid(), 0, used_memory_bytes=20 * GIB)
    assert nv.nvmlDeviceGetMemoryInfo(h).used == 16 * GIB  # capped at total
    nv.detach_process(os.getpid())
    assert nv.nvmlDeviceGetComputeRunningProcesses(h) == []


def test_a_finished_process_leaves_the_device_idle() -> None:
    clock = FakeClock()
    nv = started(SimulatedNVML(clock=clock))
    h = nv.nvmlDeviceGetHandleByIndex(0)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    nv.attach_process(proc.pid, 0)
    proc.wait(timeout=10)
    clock.now = 1.0
    assert nv.nvmlDeviceGetComputeRunningProcesses(h) == []
    assert nv.nvmlDeviceGetPowerUsage(h) == 55_000
    assert math.isclose(nv.exact_energy_j(0, 0.0, 1.0), 55.0)
