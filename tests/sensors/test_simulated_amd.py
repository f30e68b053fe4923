"""The simulated amdsmi (profiler.sensors.simulated_amd): the API surface the amdsmi sensor uses,
in amdsmi's units and shapes, on the simulated NVIDIA GPU's physics, with its quirks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from profiler.sensors.simulated_amd import (
    COUNTER_RESOLUTION_UJ,
    NA,
    POWER_FIELDS,
    AmdSmiInitFlags,
    AmdSmiLibraryException,
    SimulatedAmdSmi,
    parse_simulated_amd_spec,
)
from profiler.sensors.simulated_power import GIB


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def started(model: str = "MI300X", count: int = 1, **kw):
    clock = FakeClock()
    lib = SimulatedAmdSmi(model, count, clock=clock, **kw)
    lib.amdsmi_init(AmdSmiInitFlags.INIT_AMD_GPUS)
    return clock, lib, lib.amdsmi_get_processor_handles()


def joules(lib: SimulatedAmdSmi, handle) -> float:
    e = lib.amdsmi_get_energy_count(handle)
    assert e["power"] == e["energy_accumulator"]  # older bindings' key
    return e["energy_accumulator"] * e["counter_resolution"] / 1e6


def test_calls_need_init_and_fail_as_amdsmi_fails():
    lib = SimulatedAmdSmi("MI300X", 1)
    with pytest.raises(AmdSmiLibraryException) as e:
        lib.amdsmi_get_processor_handles()
    assert e.value.get_error_code() == 32  # NOT_INIT
    lib.amdsmi_init(AmdSmiInitFlags.INIT_AMD_GPUS)
    lib.amdsmi_shut_down()
    with pytest.raises(AmdSmiLibraryException):
        lib.amdsmi_shut_down()


def test_mi300x_readings_in_amdsmi_units():
    clock, lib, [h] = started("MI300X", traces=[(10.0, 600.0)])
    assert lib.amdsmi_get_gpu_asic_info(h)["market_name"] == "AMD Instinct MI300X"
    assert lib.amdsmi_get_power_cap_info(h)["power_cap"] == 750_000_000  # microwatts
    vram = lib.amdsmi_get_gpu_vram_usage(h)
    assert vram["vram_total"] == 192 * GIB // 2**20  # MB
    start = joules(lib, h)
    clock.now = 4.0
    power = lib.amdsmi_get_power_info(h)
    assert power["current_socket_power"] == 600
    assert power["average_socket_power"] == NA  # MI300: the current figure only
    assert joules(lib, h) - start == pytest.approx(2400.0, abs=COUNTER_RESOLUTION_UJ / 1e6)
    assert lib.exact_energy_j(0, 0.0, 4.0) == pytest.approx(2400.0)
    assert lib.amdsmi_get_gpu_activity(h)["gfx_activity"] == round(100 * (600 - 140) / 610)
    assert len(lib.amdsmi_get_gpu_device_bdf(h).split(":")) == 3


def test_mi250x_lists_two_dies_per_package_and_the_second_reads_zero():
    clock, lib, handles = started("MI250X", 2, traces=[(10.0, 400.0)])
    assert len(handles) == 4
    assert len({lib.amdsmi_get_gpu_device_uuid(h) for h in handles}) == 4
    clock.now = 2.0
    first, second = handles[0], handles[1]
    assert lib.amdsmi_get_power_info(first)["average_socket_power"] == 400
    assert lib.amdsmi_get_energy_count(second)["energy_accumulator"] == 0
    assert {lib.amdsmi_get_power_info(second)[k] for k in POWER_FIELDS} == {NA}
    assert lib.exact_package_energy_j(0, 0.0, 2.0) == pytest.approx(800.0)
    assert lib.exact_energy_j(1, 0.0, 2.0) == pytest.approx(400.0)  # a GCD is half its package
    assert lib.amdsmi_get_gpu_vram_usage(second)["vram_total"] == 64 * 1024  # MB per GCD
    lib.set_second_die_zero(1, False)  # package 1: each die reports half
    e0 = joules(lib, handles[2])
    e1 = joules(lib, handles[3])
    clock.now = 3.0
    assert joules(lib, handles[2]) - e0 == pytest.approx(200.0, abs=1e-4)
    assert joules(lib, handles[3]) - e1 == pytest.approx(200.0, abs=1e-4)
    assert lib.amdsmi_get_power_info(handles[3])["average_socket_power"] == 200


def test_quirks_frozen_backwards_na_and_vm_guest():
    clock, lib, [h] = started("MI300X", traces=[(100.0, 300.0)])
    clock.now = 1.0
    before = lib.amdsmi_get_energy_count(h)["energy_accumulator"]
    lib.set_counter_frozen(0, True)
    clock.now = 3.0
    assert lib.amdsmi_get_energy_count(h)["energy_accumulator"] == before
    lib.set_counter_frozen(0, False)
    assert lib.amdsmi_get_energy_count(h)["energy_accumulator"] > before
    epoch = lib.simulated_counter_epoch(h)
    lib.reset_energy_counter(0)
    assert lib.amdsmi_get_energy_count(h)["energy_accumulator"] == 0
    assert lib.simulated_counter_epoch(h) != epoch
    lib.set_not_available(0, ["current_socket_power", "gfx_activity", "vram_used"])
    assert lib.amdsmi_get_power_info(h)["current_socket_power"] == NA
    assert lib.amdsmi_get_gpu_activity(h)["gfx_activity"] == NA
    assert lib.amdsmi_get_gpu_vram_usage(h)["vram_used"] == NA
    lib.set_energy_supported(0, False)
    with pytest.raises(AmdSmiLibraryException) as e:
        lib.amdsmi_get_energy_count(h)
    assert e.value.get_error_code() == 2  # NOT_SUPPORTED
    assert lib.exact_energy_j(0, 0.0, 3.0) == pytest.approx(900.0)  # the truth goes on


def test_process_list_leaves_out_the_callers_pid_and_load_raises_power():
    lib = SimulatedAmdSmi("MI300X", 1, noise=0.0, load_period_s=0.0)
    lib.amdsmi_init()
    [h] = lib.amdsmi_get_processor_handles()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lib.attach_process(os.getpid(), 0, used_memory_bytes=1 * GIB)
        lib.attach_process(child.pid, 0, used_memory_bytes=2 * GIB)
        listed = lib.amdsmi_get_gpu_process_list(h)
        assert [p["pid"] for p in listed] == [child.pid]  # amdsmi omits the caller's own pid
        assert listed[0]["mem"] == 2 * GIB
        used_mb = lib.amdsmi_get_gpu_vram_usage(h)["vram_used"]
        assert used_mb == (400 * 2**20 + 3 * GIB) // 2**20
        lib.set_process_load(os.getpid(), 0.0)  # the child is in this process's tree
        time.sleep(0.01)
        lib.amdsmi_get_power_info(h)  # the load is recomputed: idle from now on
        time.sleep(0.01)
        assert lib.amdsmi_get_power_info(h)["current_socket_power"] == 140
        lib.set_process_load(os.getpid(), 1.0)
        time.sleep(0.01)
        lib.amdsmi_get_power_info(h)  # the load is recomputed: full power from now on
        time.sleep(0.01)
        assert lib.amdsmi_get_power_info(h)["current_socket_power"] == 750
        assert lib.amdsmi_get_gpu_activity(h)["gfx_activity"] == 100
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("simulated-amd", ("MI300X", 1)), ("simulated-amd:mi250x:4", ("MI250X", 4)),
     ("simulated-amd::2", ("MI300X", 2))],
)  # fmt: skip
def test_spec(spec, expected):
    assert parse_simulated_amd_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [("simulated-amd:MI100", "unknown simulated AMD GPU model 'MI100'; allowed models: MI300X, "),
     ("simulated-amd:MI300X:0", "COUNT (packages) must be an integer from 1 to 64, got '0'")],
)  # fmt: skip
def test_bad_spec_is_one_line_naming_it(spec, message):
    with pytest.raises(ValueError) as e:
        parse_simulated_amd_spec(spec)
    assert repr(spec) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)
