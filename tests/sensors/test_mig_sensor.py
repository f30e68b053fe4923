"""MIG on the simulated GPU and in the NVML sensor (issue 16): the ``mig=`` spec and its one-line
errors, the ``pynvml`` calls a GPU in MIG mode answers (and what it refuses per instance: power,
energy), each process listed in its instance, the sensor's instances on every sample and in
``describe()``; and a GPU without MIG left exactly as it was (0xFFFFFFFF instance ids)."""

from __future__ import annotations

import os

import pynvml
import pytest

from profiler.sensors.discovery import discover_gpu_sensor
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.nvml_mig import profile_of
from profiler.sensors.simulated import SimulatedNVML
from profiler.sensors.simulated_mig import parse_simulated_mig_spec

SPEC = "simulated:A100-SXM4-80GB:1:mig=3g.40gb,2g.20gb"


def test_the_mig_spec_is_parsed_and_a_bad_one_names_the_valid_profiles():
    assert parse_simulated_mig_spec(SPEC) == ("A100-SXM4-80GB", 1, ("3g.40gb", "2g.20gb"))
    assert parse_simulated_mig_spec("simulated:H100-SXM5-80GB:mig=7G.80GB") == (
        "H100-SXM5-80GB", 1, ("7g.80gb",),
    )  # fmt: skip
    assert parse_simulated_mig_spec("simulated:L4:2") == ("L4", 2, None)
    with pytest.raises(ValueError, match=r"unknown MIG profile '3g.20gb'.*valid profiles: 1g.10gb"):
        parse_simulated_mig_spec("simulated:A100-SXM4-80GB:1:mig=3g.20gb")
    with pytest.raises(ValueError, match="8 slices do not fit the 7 of a A100-SXM4-40GB"):
        parse_simulated_mig_spec("simulated:A100-SXM4-40GB:1:mig=4g.20gb,4g.20gb")
    with pytest.raises(ValueError, match="simulated T4 has no MIG mode; models with MIG: A100"):
        parse_simulated_mig_spec("simulated:T4:1:mig=1g.5gb")
    for bad in ("simulated:A100-SXM4-80GB:1:mig=", "simulated:A100-SXM4-80GB:1:mig=3g.40gb,,"):
        with pytest.raises(ValueError) as e:
            parse_simulated_mig_spec(bad)
        assert "\n" not in str(e.value) and "valid profiles" in str(e.value)


def test_the_simulated_gpu_answers_the_mig_calls_as_nvml_does():
    sim = SimulatedNVML("A100-SXM4-80GB", 1, traces=None, mig=("3g.40gb", "2g.20gb"))
    sim.nvmlInit()
    parent = sim.nvmlDeviceGetHandleByIndex(0)
    assert sim.nvmlDeviceGetMigMode(parent) == (1, 1)
    assert sim.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    mig = sim.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    with pytest.raises(pynvml.NVMLError_NotFound):
        sim.nvmlDeviceGetMigDeviceHandleByIndex(parent, 2)  # an empty slot
    assert sim.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-80GB MIG 2g.20gb"
    assert sim.nvmlDeviceGetUUID(mig).startswith("MIG-")
    assert sim.nvmlDeviceGetUUID(mig) != sim.nvmlDeviceGetUUID(parent)
    assert sim.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig) == parent
    gi = sim.nvmlDeviceGetGpuInstanceId(mig)
    assert sim.nvmlDeviceGetMemoryInfo(mig).total == 20 * 1024**3
    for no_power_per_instance in (
        sim.nvmlDeviceGetPowerUsage,
        sim.nvmlDeviceGetTotalEnergyConsumption,
    ):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            no_power_per_instance(mig)
    sim.attach_process(os.getpid(), 0, instance=gi)
    (proc,) = sim.nvmlDeviceGetComputeRunningProcesses(parent)
    assert (proc.pid, proc.gpuInstanceId, proc.computeInstanceId) == (os.getpid(), gi, 0)
    with pytest.raises(ValueError, match="no MIG GPU instance 9"):
        sim.attach_process(os.getpid(), 0, instance=9)
    # a GPU that is not in MIG mode, or cannot be
    plain = SimulatedNVML("A100-SXM4-80GB", 1, traces=None)
    plain.nvmlInit()
    handle = plain.nvmlDeviceGetHandleByIndex(0)
    assert plain.nvmlDeviceGetMigMode(handle) == (0, 0)
    plain.attach_process(os.getpid(), 0)
    (proc,) = plain.nvmlDeviceGetComputeRunningProcesses(handle)
    assert (proc.gpuInstanceId, proc.computeInstanceId) == (0xFFFFFFFF, 0xFFFFFFFF)
    t4 = SimulatedNVML("T4", 1)
    t4.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        t4.nvmlDeviceGetMigMode(t4.nvmlDeviceGetHandleByIndex(0))


def test_the_sensor_enumerates_the_instances_and_maps_each_process_to_its_instance():
    sensor, line = discover_gpu_sensor(SPEC)
    assert sensor is not None
    try:
        assert line.endswith("; gpu 0 MIG: 3g.40gb, 2g.20gb")
        first, second = sensor.devices[0].mig_instances
        assert (first.profile, first.slices, first.gpu_slices) == ("3g.40gb", 3, 7)
        assert (second.profile, second.memory_total_bytes) == ("2g.20gb", 20 * 1024**3)
        sensor.attach_process(os.getpid(), [second.uuid])  # a hook that declared the instance
        (sample,) = sensor.sample()
        assert sample.mig_instances == (first, second)
        assert [(p.pid, p.gpu_instance_id) for p in sample.processes] == [
            (os.getpid(), second.gpu_instance_id)
        ]
        assert sample.energy_j is not None and sample.power_w is not None  # the parent's
    finally:
        sensor.close()


def test_a_gpu_without_mig_is_sampled_as_before():
    sim = SimulatedNVML("A100-SXM4-80GB", 1, traces=None)
    sensor = NvmlSensor(sim)
    try:
        sim.attach_process(os.getpid(), 0)
        (sample,) = sensor.sample()
        assert sample.mig_instances == ()
        assert [p.gpu_instance_id for p in sample.processes] == [None]
        assert "MIG" not in sensor.describe()
    finally:
        sensor.close()


def test_the_profile_is_read_from_the_instance_name():
    assert profile_of("NVIDIA A100-SXM4-80GB MIG 3g.40gb") == ("3g.40gb", 3)
    assert profile_of("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me") == ("1g.10gb", 1)
    assert profile_of("NVIDIA A100-SXM4-80GB MIG 1c.3g.40gb") == ("3g.40gb", 3)
    assert profile_of("NVIDIA A100-SXM4-80GB") is None
