"""Per-process activity on a shared GPU: the simulated GPU's exact split of its energy among
processes (idle kept apart), ``nvmlDeviceGetProcessUtilization`` as pynvml has it, and the NVML
sensor's ``process_activity`` (read once a second, NotFound and NotSupported handled)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pynvml
import pytest

from profiler.sensors import NvmlSensor
from profiler.sensors.nvml_activity import ActivityState
from profiler.sensors.simulated import SimulatedNVML
from profiler.sensors.simulated_activity import ProcessUtilizationSample

IDLE_W, LIMIT_W = 55.0, 400.0  # A100-SXM4-40GB
ACTIVE_W = LIMIT_W - IDLE_W


class FakeClock:
    """Monotonic seconds that move only when a test sets ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sleeper() -> subprocess.Popen[bytes]:
    """A real process that holds the GPU and does nothing (siblings of each other, so each is
    its own outermost process)."""
    return subprocess.Popen(["sleep", "120"])


@pytest.fixture
def two_pids() -> Iterator[tuple[int, int]]:
    procs = [sleeper(), sleeper()]
    try:
        yield procs[0].pid, procs[1].pid
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


def shared_gpu(
    pids: tuple[int, ...], loads: tuple[float, ...], noise: float = 0.0
) -> tuple[FakeClock, SimulatedNVML]:
    clock = FakeClock()
    sim = SimulatedNVML(clock=clock, noise=noise, seed=3)
    sim.nvmlInit()
    for pid, load in zip(pids, loads, strict=True):
        sim.attach_process(pid, 0)
        sim.set_process_load(pid, load)
    return clock, sim


def at(sim: SimulatedNVML, clock: FakeClock, t: float) -> None:
    """Move the clock to ``t`` and query the device, so the load is recomputed then."""
    clock.now = t
    sim.nvmlDeviceGetPowerUsage(sim.nvmlDeviceGetHandleByIndex(0))


# ---- the simulator's ground truth


def test_each_process_draws_the_active_power_in_proportion_to_its_load(two_pids) -> None:
    a, b = two_pids
    clock, sim = shared_gpu(two_pids, (0.6, 0.2))
    at(sim, clock, 1.0)  # loads take effect at the first recompute: idle before
    at(sim, clock, 11.0)
    assert sim.exact_power_w(0, 5.0) == pytest.approx(IDLE_W + ACTIVE_W * 0.8)
    assert sim.exact_process_energy_j(0, a, 1.0, 11.0) == pytest.approx(ACTIVE_W * 0.6 * 10)
    assert sim.exact_process_energy_j(0, b, 1.0, 11.0) == pytest.approx(ACTIVE_W * 0.2 * 10)
    assert sim.exact_process_energy_j(0, a, 0.0, 1.0) == 0.0
    assert sim.exact_idle_energy_j(0, 0.0, 11.0) == pytest.approx(IDLE_W * 11)
    assert sim.exact_process_energy_j(0, 424242, 0.0, 11.0) == 0.0  # never attached
    # oversubscribed: the device saturates at its limit, shared 0.9 : 0.6
    sim.set_process_load(a, 0.9)
    sim.set_process_load(b, 0.6)
    at(sim, clock, 12.0)
    at(sim, clock, 16.0)
    assert sim.exact_power_w(0, 13.0) == LIMIT_W
    assert sim.exact_process_energy_j(0, a, 12.0, 16.0) == pytest.approx(ACTIVE_W * 0.6 * 4)
    assert sim.exact_process_energy_j(0, b, 12.0, 16.0) == pytest.approx(ACTIVE_W * 0.4 * 4)


def test_shares_plus_idle_equal_the_device_energy_exactly_with_noise(two_pids) -> None:
    a, b = two_pids
    clock, sim = shared_gpu(two_pids, (0.7, 0.1), noise=0.05)
    for k in range(1, 200):
        if k == 80:
            sim.set_process_load(b, 0.5)
        if k == 150:
            sim.set_process_load(a, 0.0)
        at(sim, clock, k / 10)
    t1 = clock.now
    parts = [sim.exact_process_energy_j(0, pid, 0.0, t1) for pid in two_pids]
    total = sim.exact_energy_j(0, 0.0, t1)
    assert sum(parts) + sim.exact_idle_energy_j(0, 0.0, t1) == pytest.approx(total, rel=1e-12)
    counter_j = sim.nvmlDeviceGetTotalEnergyConsumption(sim.nvmlDeviceGetHandleByIndex(0)) / 1000
    assert abs(counter_j - total) <= 0.001
    # within one level the split follows the loads exactly, whatever the noise
    assert sim.exact_process_energy_j(0, a, 2.0, 7.0) / sim.exact_process_energy_j(
        0, b, 2.0, 7.0
    ) == pytest.approx(7.0)


def test_a_device_without_load_draws_exactly_idle_and_nobody_gets_active_energy(two_pids):
    clock, sim = shared_gpu(two_pids, (0.0, 0.0), noise=0.05)
    for k in range(1, 31):
        at(sim, clock, k / 10)
    assert sim.exact_energy_j(0, 0.0, 3.0) == pytest.approx(IDLE_W * 3.0)
    assert all(sim.exact_process_energy_j(0, pid, 0.0, 3.0) == 0.0 for pid in two_pids)


def test_scripted_trace_has_an_idle_part_but_no_per_process_truth() -> None:
    clock = FakeClock()
    sim = SimulatedNVML(clock=clock, traces=[(2.0, 100.0), (1.0, 30.0), (1.0, 300.0)])
    clock.now = 6.0  # then idle: 55 W
    # below the idle watts the whole phase counts as idle
    assert sim.exact_idle_energy_j(0, 0.0, 6.0) == pytest.approx(55 * 2 + 30 + 55 + 55 * 2)
    assert sim.exact_idle_energy_j(0, 2.5, 3.5) == pytest.approx(15 + 27.5)
    assert sim.exact_process_energy_j(0, 1234, 0.0, 6.0) is None


# ---- nvmlDeviceGetProcessUtilization as pynvml has it


def test_samples_once_a_period_with_pid_timestamp_and_percent(two_pids) -> None:
    a, b = two_pids
    clock, sim = shared_gpu(two_pids, (0.6, 0.0))
    h = sim.nvmlDeviceGetHandleByIndex(0)
    for k in range(1, 31):
        at(sim, clock, k / 10)
    samples = sim.nvmlDeviceGetProcessUtilization(h, 0)
    # periods end at 1, 2 and 3 s; loads start at 0.1 s; b is idle, so NVML lists it nowhere
    assert [(s.pid, s.timeStamp, s.smUtil, s.memUtil) for s in samples] == [
        (a, 1_000_000, 54, 27),
        (a, 2_000_000, 60, 30),
        (a, 3_000_000, 60, 30),
    ]
    assert all((s.encUtil, s.decUtil) == (0, 0) for s in samples)
    assert [s.timeStamp for s in sim.nvmlDeviceGetProcessUtilization(h, 2_000_000)] == [3_000_000]
    with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than the last one seen
        sim.nvmlDeviceGetProcessUtilization(h, 3_000_000)
    sim.set_process_load(b, 0.2)
    at(sim, clock, 3.5)
    at(sim, clock, 4.0)
    newer = sim.nvmlDeviceGetProcessUtilization(h, 3_000_000)
    assert {(s.pid, s.smUtil) for s in newer} == {(a, 60), (b, 10)}  # b busy half the period


def test_only_the_last_ten_periods_are_kept(two_pids) -> None:
    clock, sim = shared_gpu(two_pids, (0.3, 0.3))
    at(sim, clock, 0.5)
    at(sim, clock, 25.0)
    stamps = {
        s.timeStamp
        for s in sim.nvmlDeviceGetProcessUtilization(sim.nvmlDeviceGetHandleByIndex(0), 0)
    }
    assert stamps == {k * 1_000_000 for k in range(16, 26)}


def test_not_supported_on_scripted_devices_and_when_switched_off(two_pids) -> None:
    clock = FakeClock()
    scripted = SimulatedNVML(clock=clock, traces=[(5.0, 200.0)])
    scripted.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        scripted.nvmlDeviceGetProcessUtilization(scripted.nvmlDeviceGetHandleByIndex(0), 0)
    clock, sim = shared_gpu(two_pids, (0.5, 0.5))
    at(sim, clock, 2.0)
    sim.set_process_utilization_supported(0, False)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetProcessUtilization(sim.nvmlDeviceGetHandleByIndex(0), 0)


# ---- the sensor's process_activity


def test_activity_state_means_over_the_periods_idle_ones_count_as_zero() -> None:
    state = ActivityState("nvml_process_utilization", last_seen_us=1_000)
    samples = [
        ProcessUtilizationSample(7, 1_000, 90, 0),  # already seen
        ProcessUtilizationSample(7, 2_000, 80, 0),
        ProcessUtilizationSample(8, 2_000, 20, 0),
        ProcessUtilizationSample(7, 3_000, 40, 0),  # 8 idle in this period: left out by NVML
    ]
    assert state.take(samples) == {7: pytest.approx(0.6), 8: pytest.approx(0.1)}
    assert state.last_seen_us == 3_000
    assert state.take(samples) == {}  # nothing newer: nobody busy since (a reading, not None)
    assert not ActivityState(None).due(10.0)
    assert ActivityState("x", last_read_s=9.5).due(10.0) is False


def test_sensor_reads_activity_once_a_second_and_attributes_the_active_energy(two_pids):
    a, b = two_pids
    clock, sim = shared_gpu(two_pids, (0.8, 0.1), noise=0.03)
    sensor = NvmlSensor(sim, clock=clock)
    readings, samples = [], []
    for k in range(1, 101):
        if k == 40:
            sim.set_process_load(a, 0.2)
            sim.set_process_load(b, 0.6)
        clock.now = k / 10
        [s] = sensor.sample()
        samples.append(s)
        assert s.activity_source == "simulated" and s.idle_power_w == IDLE_W
        if s.process_activity is not None:
            readings.append((round(s.t_s, 6), s.process_activity))
    assert [t for t, _ in readings] == [float(k) for k in range(1, 11)]
    assert readings[1][1] == {a: 0.8, b: 0.1}
    assert readings[6][1] == {a: 0.2, b: 0.6}
    # each reading covers the second before it: split each second's active energy by it
    mine = {a: 0.0, b: 0.0}
    prev = samples[9]  # t = 1.0, the first reading
    for s in samples[10:]:
        share = next(act for t, act in readings if t >= round(s.t_s, 6) - 1e-9)
        active_j = (s.energy_j - prev.energy_j) - IDLE_W * (s.t_s - prev.t_s)
        total = sum(share.values())
        for pid in mine:
            mine[pid] += active_j * share.get(pid, 0.0) / total
        prev = s
    for pid in (a, b):
        exact = sim.exact_process_energy_j(0, pid, 1.0, 10.0)
        assert mine[pid] == pytest.approx(exact, rel=0.02)
    assert sensor.errors == {}


def test_sensor_reads_nobody_busy_as_empty_and_gives_up_on_not_supported(two_pids):
    a, _b = two_pids
    clock, sim = shared_gpu(two_pids, (0.0, 0.0))  # nobody busy: NVML has no sample (NotFound)
    sensor = NvmlSensor(sim, clock=clock)
    readings = []
    for k in range(1, 31):
        clock.now = k / 10
        [s] = sensor.sample()
        assert s.activity_source == "simulated"
        if s.process_activity is not None:
            readings.append((round(s.t_s, 6), s.process_activity))
    # still read once a second: NotFound is a reading in which nobody was busy, not "not read"
    assert readings == [(1.0, {}), (2.0, {}), (3.0, {})]
    sim.set_process_load(a, 0.5)
    for k in range(31, 41):
        clock.now = k / 10
        [s] = sensor.sample()
    # the period 3..4 s: the load takes effect at the next recompute (3.1 s), 0.5 x 0.9 of it
    assert s.process_activity == {a: pytest.approx(0.45)}
    assert "per-process activity" not in sensor.describe()
    sim.set_process_utilization_supported(0, False)
    for k in range(41, 61):
        clock.now = k / 10
        [s] = sensor.sample()
        assert s.process_activity is None
    assert s.activity_source is None
    sim.set_process_utilization_supported(0, True)  # not asked again
    for k in range(61, 91):
        clock.now = k / 10
        [s] = sensor.sample()
        assert s.process_activity is None and s.activity_source is None
    # a missing capability, not an error (no sensor-errors alert); said in the description
    assert sensor.errors == {}
    assert sensor.describe().endswith(
        "; per-process activity: not supported on gpu 0 (equal split)"
    )


def test_scripted_devices_have_no_activity_said_once_and_no_error() -> None:
    clock = FakeClock()
    sim = SimulatedNVML(clock=clock, count=2, traces=[(5.0, 200.0)])
    sensor = NvmlSensor(sim, clock=clock)
    for k in range(1, 31):
        clock.now = k / 10
        for s in sensor.sample():
            assert (s.process_activity, s.activity_source) == (None, None)
    assert sensor.errors == {}
    assert sensor.describe() == (
        "SIMULATED GPU (a power model, not hardware): 2 x NVIDIA A100-SXM4-40GB; energy from "
        "counter; per-process activity: not supported on gpus 0, 1 (equal split)"
    )


class OldNVML(SimulatedNVML):
    """An nvidia-ml-py without either per-process utilization call."""

    nvmlDeviceGetProcessUtilization = None  # type: ignore[assignment]
    nvmlDeviceGetProcessesUtilizationInfo = None  # type: ignore[assignment]


def test_a_pynvml_without_the_call_means_no_activity() -> None:
    clock = FakeClock()
    sensor = NvmlSensor(OldNVML(clock=clock), clock=clock)
    clock.now = 2.0
    [s] = sensor.sample()
    assert (s.process_activity, s.activity_source) == (None, None)
    assert sensor.errors == {}
    assert "per-process activity: not supported on gpu 0" in sensor.describe()


def test_real_cpu_load_busy_process_gets_most_of_the_active_energy() -> None:
    """Load from real CPU activity: a spinning process and a sleeping one share the GPU."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = sleeper()
    try:
        sim = SimulatedNVML(noise=0.015)
        sensor = NvmlSensor(sim)
        t0 = time.monotonic()
        for pid in (busy.pid, idle.pid):
            sensor.attach_process(pid, [0])
        seen = {}
        while time.monotonic() - t0 < 2.3:
            time.sleep(0.05)
            [s] = sensor.sample()
            if s.process_activity is not None:
                seen = s.process_activity
        t1 = time.monotonic()
        e_busy = sim.exact_process_energy_j(0, busy.pid, t0, t1)
        e_idle = sim.exact_process_energy_j(0, idle.pid, t0, t1)
        assert e_busy > 10 * max(e_idle, 1e-9)
        assert seen.get(busy.pid, 0.0) > 0.2 and seen.get(idle.pid, 0.0) < 0.05
        parts = e_busy + e_idle + sim.exact_idle_energy_j(0, t0, t1)
        assert parts == pytest.approx(sim.exact_energy_j(0, t0, t1), rel=1e-9)
    finally:
        for p in (busy, idle):
            p.kill()
            p.wait(timeout=10)


# ---- nvmlDeviceGetProcessesUtilizationInfo (newer drivers), preferred when present


class CountingNVML(SimulatedNVML):
    """The simulator, counting which per-process utilization call the sensor makes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def nvmlDeviceGetProcessesUtilizationInfo(self, handle, timeStamp):
        self.calls.append("info")
        return super().nvmlDeviceGetProcessesUtilizationInfo(handle, timeStamp)

    def nvmlDeviceGetProcessUtilization(self, handle, lastSeenTimeStamp):
        self.calls.append("legacy")
        return super().nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)


def test_the_newer_call_gives_the_same_samples_shaped_like_pynvmls_struct(two_pids) -> None:
    a, b = two_pids
    clock, sim = shared_gpu(two_pids, (0.6, 0.2))
    h = sim.nvmlDeviceGetHandleByIndex(0)
    for k in range(1, 31):
        at(sim, clock, k / 10)
    info = sim.nvmlDeviceGetProcessesUtilizationInfo(h, 1_000_000)
    legacy = sim.nvmlDeviceGetProcessUtilization(h, 1_000_000)
    fields = [name for name, _type in pynvml.c_nvmlProcessUtilizationInfo_v1_t._fields_]
    assert fields == ["timeStamp", "pid", "smUtil", "memUtil", "encUtil", "decUtil", "jpgUtil",
                      "ofaUtil"]  # fmt: skip
    assert [tuple(getattr(s, f) for f in fields) for s in info] == [
        (s.timeStamp, s.pid, s.smUtil, s.memUtil, 0, 0, 0, 0) for s in legacy
    ]
    assert {(s.pid, s.timeStamp, s.smUtil) for s in info} == {
        (a, 2_000_000, 60), (b, 2_000_000, 20), (a, 3_000_000, 60), (b, 3_000_000, 20)
    }  # fmt: skip
    with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than the last one seen
        sim.nvmlDeviceGetProcessesUtilizationInfo(h, 3_000_000)
    sim.set_processes_utilization_info_supported(0, False)  # a driver without the call
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        sim.nvmlDeviceGetProcessesUtilizationInfo(h, 0)
    assert sim.nvmlDeviceGetProcessUtilization(h, 2_000_000)  # the older call still answers
    sim.set_process_utilization_supported(0, False)  # a GPU without per-process utilization
    sim.set_processes_utilization_info_supported(0, True)
    for call in (sim.nvmlDeviceGetProcessesUtilizationInfo, sim.nvmlDeviceGetProcessUtilization):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call(h, 0)


def readings_of(sensor: NvmlSensor, clock: FakeClock, k0: int, k1: int) -> list:
    out = []
    for k in range(k0, k1):
        clock.now = k / 10
        [s] = sensor.sample()
        if s.process_activity is not None:
            out.append((round(s.t_s, 6), s.process_activity))
    return out


def test_the_sensor_prefers_the_newer_call_and_falls_back_to_the_older_one(two_pids) -> None:
    a, b = two_pids
    clock = FakeClock()
    sim = CountingNVML(clock=clock, noise=0.0)
    sim.nvmlInit()
    for pid, load in ((a, 0.8), (b, 0.1)):
        sim.attach_process(pid, 0)
        sim.set_process_load(pid, load)
    sensor = NvmlSensor(sim, clock=clock)
    assert readings_of(sensor, clock, 1, 31)[1:] == [(2.0, {a: 0.8, b: 0.1}),
                                                     (3.0, {a: 0.8, b: 0.1})]  # fmt: skip
    assert set(sim.calls) == {"info"}
    # the driver turns out not to have it (FunctionNotFound): the older call, same readings,
    # no error counted, activity still on
    sim.set_processes_utilization_info_supported(0, False)
    sim.calls.clear()
    assert readings_of(sensor, clock, 31, 61) == [(4.0, {a: 0.8, b: 0.1}),
                                                  (5.0, {a: 0.8, b: 0.1}),
                                                  (6.0, {a: 0.8, b: 0.1})]  # fmt: skip
    assert sim.calls == ["info", "legacy", "legacy", "legacy"]  # the newer one asked once
    assert sensor.errors == {}
    assert "per-process activity" not in sensor.describe()


class NoInfoNVML(CountingNVML):
    """An nvidia-ml-py older than 12.550: no nvmlDeviceGetProcessesUtilizationInfo at all."""

    def __getattribute__(self, name: str):
        if name == "nvmlDeviceGetProcessesUtilizationInfo":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_a_pynvml_without_the_newer_call_uses_the_older_one(two_pids) -> None:
    a, b = two_pids
    clock = FakeClock()
    sim = NoInfoNVML(clock=clock, noise=0.0)
    sim.nvmlInit()
    sim.attach_process(a, 0)
    sim.set_process_load(a, 0.5)
    sensor = NvmlSensor(sim, clock=clock)
    assert readings_of(sensor, clock, 1, 31)[1:] == [(2.0, {a: 0.5}), (3.0, {a: 0.5})]
    assert set(sim.calls) == {"legacy"} and sensor.errors == {}


def test_not_found_from_the_newer_call_is_a_reading_not_a_fallback(two_pids) -> None:
    clock = FakeClock()
    sim = CountingNVML(clock=clock, noise=0.0)
    sim.nvmlInit()
    sim.attach_process(two_pids[0], 0)  # holds the GPU, never busy: no sample
    sensor = NvmlSensor(sim, clock=clock)
    assert readings_of(sensor, clock, 1, 31) == [(1.0, {}), (2.0, {}), (3.0, {})]
    assert set(sim.calls) == {"info"} and sensor.errors == {}
