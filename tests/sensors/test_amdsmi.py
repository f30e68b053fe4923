"""AmdSmiSensor on the simulated amdsmi (the real code path, known ground truth): energy from the
counter, each quirk's handling, errors mapped once; discovery of AMD GPUs; a broken amdsmi
install named in one line (the real amdsmi package of this GPU-less machine, and stand-ins for
the other two ways it breaks)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import REPO, run_cli, start_daemon, wait_for

from profiler.sensors import SensorUnavailable, discover_gpu_sensor
from profiler.sensors.amdsmi import AmdSmiSensor, amdsmi_error_name, import_amdsmi
from profiler.sensors.simulated_amd import AmdSmiLibraryException, SimulatedAmdSmi

TRACE = [(2.0, 200.0), (3.0, 500.0), (1.5, 700.0), (100.0, 300.0)]


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(model: str = "MI300X", count: int = 1, traces=None, before=None, **kw):
    """(clock, simulator, sensor); ``before(sim)`` runs before the sensor starts."""
    clock = FakeClock()
    sim = SimulatedAmdSmi(model, count, clock=clock, traces=traces or [TRACE], **kw)
    if before is not None:
        before(sim)
    return clock, sim, AmdSmiSensor(sim, clock=clock)


def run_for(clock: FakeClock, sensor: AmdSmiSensor, seconds: float, every: float = 0.1):
    """Sample every ``every`` seconds for ``seconds``; every sample taken, in order."""
    out = []
    end = clock.now + seconds
    while clock.now < end - 1e-9:
        clock.now = round(clock.now + every, 9)
        out.append(sensor.sample())
    return out


def test_counter_energy_equals_the_exact_integral():
    clock, sim, sensor = make()
    assert (sensor.source, sensor.vendor) == ("simulated", "amd")
    energies = []
    for [s] in run_for(clock, sensor, 10.0):
        assert s.energy_source == "counter"
        assert s.energy_j == pytest.approx(sim.exact_energy_j(0, 0.0, s.t_s), abs=1e-4)
        assert s.power_w == sim.exact_power_w(0, s.t_s)
        energies.append(s.energy_j)
    assert energies == sorted(energies)
    assert energies[-1] == pytest.approx(400 + 1500 + 1050 + 3.5 * 300, abs=1e-4)
    assert (s.vendor, s.simulated, s.name, s.power_limit_w) == (
        "amd", True, "AMD Instinct MI300X", 750.0)  # fmt: skip
    assert s.utilization_ratio == pytest.approx(round(100 * 160 / 610) / 100)
    assert s.memory_total_bytes == 192 * 2**30 and s.memory_used_bytes == 400 * 2**20
    assert s.counter_id is not None and s.counter_j is not None
    assert (s.process_activity, s.activity_source, s.idle_power_w) == (None, None, 140.0)
    assert sensor.errors == {}
    assert sensor.describe() == (
        "SIMULATED AMD GPU (a power model, not hardware): 1 x AMD Instinct MI300X; energy from "
        "counter; per-process activity: not on AMD (equal split)"
    )


def test_a_counter_frozen_from_the_start_falls_back_to_power_integration():
    """Fails without the sanity check: the frozen counter would give 0 J."""
    clock, sim, sensor = make(before=lambda sim: sim.set_counter_frozen(0, True))
    samples = [s for [s] in run_for(clock, sensor, 10.0)]
    last = samples[-1]
    assert last.energy_source == "power_integration"
    assert last.counter_j is None and last.counter_id is None
    assert last.energy_j == pytest.approx(sim.exact_energy_j(0, 0.0, last.t_s), rel=0.01)
    energies = [s.energy_j for s in samples]
    assert energies == sorted(energies)
    assert sensor.errors == {"gpu0:CounterFrozen": 1}
    assert "gpu 0: energy counter frozen: power integration" in sensor.describe()


def test_a_counter_that_freezes_later_is_caught_and_its_window_recounted():
    clock, sim, sensor = make()
    run_for(clock, sensor, 4.0)
    sim.set_counter_frozen(0, True)
    [[last]] = run_for(clock, sensor, 6.0)[-1:]
    assert last.energy_source == "power_integration"
    assert last.energy_j == pytest.approx(sim.exact_energy_j(0, 0.0, last.t_s), rel=0.01)
    assert sensor.errors == {"gpu0:CounterFrozen": 1}


def test_a_counter_going_backwards_is_rebased():
    """Fails without the re-base: the energy would drop by the whole counter."""
    clock, sim, sensor = make()
    samples = []
    for reset_at in (3.05, 6.05):
        samples += [s for [s] in run_for(clock, sensor, reset_at - clock.now)]
        sim.reset_energy_counter(0)
    samples += [s for [s] in run_for(clock, sensor, 10.0 - clock.now)]
    energies = [s.energy_j for s in samples]
    assert energies == sorted(energies)
    last = samples[-1]
    assert last.energy_source == "counter"
    # each reset's interval is estimated from power (trapezoid) and the rest is the counter
    assert last.energy_j == pytest.approx(sim.exact_energy_j(0, 0.0, last.t_s), rel=0.005)
    assert sensor.errors == {"gpu0:CounterReset": 2}
    assert len({s.counter_id for s in samples}) == 3  # each reset starts a new epoch


def test_mi250x_package_counted_once_split_between_its_dies_never_zero():
    """amdsmi lists each GCD; the package's energy is on the first, the second reads 0. Fails
    without the pairing: GCD 1 would be 0 J (or None) and GCD 0 would hold both halves."""
    clock, sim, sensor = make("MI250X", 2, traces=[[(100.0, 400.0)], [(100.0, 300.0)]])
    assert [d.name for d in sensor.devices] == ["AMD Instinct MI250X"] * 4
    [samples] = run_for(clock, sensor, 5.0)[-1:]
    assert [s.index for s in samples] == [0, 1, 2, 3]
    for s in samples:
        assert s.energy_source == "counter"
        assert s.energy_j == pytest.approx(sim.exact_energy_j(s.index, 0.0, s.t_s), abs=1e-3)
        assert s.energy_j > 0 and s.power_limit_w == 280.0
    assert samples[0].energy_j + samples[1].energy_j == pytest.approx(400 * 5.0, abs=1e-3)
    assert samples[2].power_w == samples[3].power_w == 150.0
    assert len({s.counter_id for s in samples}) == 4
    assert "gpu 1: second die of gpu 0: its package's share" in sensor.describe()


def test_mi250x_with_each_die_reporting_half_is_read_as_is():
    clock, sim, sensor = make(
        "MI250X", traces=[(100.0, 400.0)], before=lambda sim: sim.set_second_die_zero(0, False)
    )
    [samples] = run_for(clock, sensor, 3.0)[-1:]
    assert [s.energy_j for s in samples] == pytest.approx([600.0, 600.0], abs=1e-3)
    assert "second die" not in sensor.describe()


def test_na_fields_are_none_never_zero():
    """Fails if "N/A" were read as 0 (or raised)."""
    hide = ["current_socket_power", "gfx_activity", "vram_used", "power_cap"]
    clock, sim, sensor = make(before=lambda sim: sim.set_not_available(0, hide))
    [[s]] = run_for(clock, sensor, 1.0)[-1:]
    assert (s.power_w, s.utilization_ratio, s.memory_used_bytes, s.power_limit_w) == (
        None, None, None, None)  # fmt: skip
    assert s.energy_source == "counter"
    assert s.energy_j == pytest.approx(sim.exact_energy_j(0, 0.0, s.t_s), abs=1e-4)
    assert s.memory_total_bytes == 192 * 2**30


def test_no_power_and_no_counter_is_no_energy_never_zero():
    def hide(sim):
        sim.set_energy_supported(0, False)
        sim.set_not_available(0, ["current_socket_power"])

    clock, sim, sensor = make(before=hide)
    [[s]] = run_for(clock, sensor, 1.0)[-1:]
    assert (s.energy_j, s.energy_source) == (None, "none")


def test_a_vm_guest_without_energy_integrates_power_labelled():
    """amdsmi_get_energy_count is NOT_SUPPORTED in VM guests: power integration, said so; a
    missing capability, not an error."""
    clock, sim, sensor = make(before=lambda sim: sim.set_energy_supported(0, False))
    [[s]] = run_for(clock, sensor, 10.0)[-1:]
    assert s.energy_source == "power_integration" and s.counter_j is None
    assert s.energy_j == pytest.approx(sim.exact_energy_j(0, 0.0, s.t_s), rel=0.01)
    assert sensor.errors == {}
    assert "energy counter not supported (a VM guest?): power integration" in sensor.describe()


def test_errors_are_counted_by_status_name_and_sample_never_raises():
    clock, sim, sensor = make()
    run_for(clock, sensor, 0.5)
    sim.amdsmi_shut_down()  # every call now fails with NOT_INIT
    assert run_for(clock, sensor, 0.3) == [[], [], []]
    assert sensor.errors == {"gpu0:NOT_INIT": 3}
    assert amdsmi_error_name(AmdSmiLibraryException(12345)) == "AMDSMI12345"
    assert amdsmi_error_name(ValueError()) == "AMDSMIError"


def test_processes_are_listed_at_most_once_a_second(process_tree):
    child, _grandchild = process_tree
    clock, sim, sensor = make()
    [[first]] = run_for(clock, sensor, 0.1)
    assert first.processes == ()
    sensor.attach_process(child.pid, [0])
    [[s]] = run_for(clock, sensor, 0.8)[-1:]
    assert s.processes == ()  # listed at 0.1 s; next list at 1.1 s
    [[s]] = run_for(clock, sensor, 0.3)[-1:]
    assert [p.pid for p in s.processes] == [child.pid]
    sensor.detach_process(child.pid)


def test_process_entries_without_a_usable_pid_are_skipped_and_counted_once(process_tree):
    """An amdsmi process entry with no pid, a pid of "N/A" or one that is no entry at all (seen
    on some amdsmi versions) is left out of the list, counted once per device, never raised."""
    child, _grandchild = process_tree
    clock, sim, sensor = make()
    sim.set_bad_process_entries(0, [{"name": "N/A"}, {"pid": "N/A"}, {"pid": None}, "handle"])
    sensor.attach_process(child.pid, [0])
    samples = run_for(clock, sensor, 2.5)  # the list is read three times
    assert [p.pid for p in samples[-1][0].processes] == [child.pid]
    assert sensor.errors["gpu0:process_without_pid"] == 1
    sensor.detach_process(child.pid)


def test_discover_simulated_amd_and_the_grammar():
    clock = FakeClock(3.0)
    sensor, text = discover_gpu_sensor("simulated-amd:MI250X:2", clock=clock)
    assert sensor is not None and sensor.source == "simulated"
    assert [d.index for d in sensor.devices] == [0, 1, 2, 3]
    assert text.startswith("SIMULATED AMD GPU (a power model, not hardware): 4 x AMD Instinct ")
    sensor, text = discover_gpu_sensor("simulated-amd")
    assert "1 x AMD Instinct MI300X" in text
    with pytest.raises(ValueError, match="unknown simulated AMD GPU model 'H100'"):
        discover_gpu_sensor("simulated-amd:H100")


def amdsmi_loads() -> bool:
    try:
        import_amdsmi()
    except SensorUnavailable:
        return False
    return True


@pytest.mark.skipif(amdsmi_loads(), reason="this machine's amdsmi loads")
def test_forced_amdsmi_on_this_machine_names_what_is_missing():
    """No ROCm here: with the amdsmi package installed (Zeus brings it) the line names the
    missing library; without it (a fresh CI venv), the missing package. One line either way."""
    installed = importlib.util.find_spec("amdsmi") is not None
    with pytest.raises(SensorUnavailable) as e:
        discover_gpu_sensor("amdsmi")
    assert str(e.value).startswith("amdsmi did not load (")
    missing = "libamd_smi.so" if installed else "install the amdsmi package"
    assert missing in str(e.value) and "\n" not in str(e.value)


BROKEN = {
    "OSError": "raise OSError('libamd_smi.so: cannot open shared object file')",
    "AttributeError": "raise AttributeError(\"module 'amdsmi_wrapper' has no attribute 'x'\")",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_amdsmi_install_is_one_line_in_discovery(tmp_path, kind):
    """A stand-in ``amdsmi`` package that fails to import as the real one does when
    libamd_smi.so is missing (OSError) or amdsmi and ROCm differ (AttributeError)."""
    (tmp_path / "amdsmi").mkdir()
    (tmp_path / "amdsmi" / "__init__.py").write_text(BROKEN[kind] + "\n")
    code = "from profiler.sensors import discover_gpu_sensor\nprint(discover_gpu_sensor('auto')[1])"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stderr == ""
    [line] = out.stdout.splitlines()
    assert line.startswith("no GPU found: NVML did not initialise (")
    cause = "libamd_smi.so not found" if kind == "OSError" else "does not match the installed ROCm"
    assert "amdsmi did not load (" in line and cause in line and kind in line


def test_amdsmi_is_imported_only_when_a_real_amdsmi_sensor_is_built():
    code = (
        "import sys\n"
        "import profiler.sensors.amdsmi, profiler.sensors.discovery\n"
        "import profiler.sensors.simulated_amd\n"
        "from profiler.sensors import discover_gpu_sensor\n"
        "discover_gpu_sensor('simulated-amd:MI250X:2')[0].sample()\n"
        "print('amdsmi' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_profiler_status_names_a_broken_amdsmi_in_one_line(tmp_path):
    """A real daemon with gpu = "auto" on this GPU-less machine, next to an amdsmi that fails to
    import (AttributeError: amdsmi and ROCm differ): it runs, and `profiler status` says why it
    has no GPU, in one line, without a traceback anywhere."""

    fake = tmp_path / "site"
    (fake / "amdsmi").mkdir(parents=True)
    (fake / "amdsmi" / "__init__.py").write_text(BROKEN["AttributeError"] + "\n")
    d = start_daemon(tmp_path / "home", PROFILER_GPU="auto", PYTHONPATH=f"{fake}{os.pathsep}{REPO}")
    try:
        out = run_cli(d.env, "status")
    finally:
        d.stop()
    assert out.returncode == 0, out.stderr
    [gpu] = [line for line in out.stdout.splitlines() if line.strip().startswith("gpu ")]
    assert "no GPU found: NVML did not initialise" in gpu
    assert "amdsmi did not load (the amdsmi package does not match the installed ROCm" in gpu
    log = (d.home / "test-daemon.log").read_text()
    assert "Traceback" not in log + out.stdout + out.stderr


def test_a_hung_amdsmi_call_is_left_behind_counted_once_and_read_again_after():
    clock, sim, sensor = make()
    sensor.call_timeout_s = 0.05
    run_for(clock, sensor, 0.2)
    sim.set_hang(0, 2.0)
    assert sensor.sample() == []  # waited 0.05 s, not the 2 s the call takes
    sim.set_hang(0, 0.0)
    assert sensor.sample() == []  # the hung call has not returned yet: not asked again
    assert sensor.errors == {"gpu:Timeout": 1}
    clock.now += 0.1
    [s] = wait_for(sensor.sample, timeout=20, what="the driver to answer again")
    assert s.energy_j == pytest.approx(sim.exact_energy_j(0, 0.0, s.t_s), abs=1e-4)
    assert sensor.errors == {"gpu:Timeout": 1}
