"""Both GPU sensors (NVML, amdsmi) are what the daemon takes them for: every member of the
``GpuSensor`` Protocol, each method with the Protocol's signature (names, kinds, annotations),
and, built on their simulators, the attributes with the declared types."""

from __future__ import annotations

import inspect
import typing
from collections import Counter

import pytest

from profiler.sensors import base
from profiler.sensors.amdsmi import AmdSmiSensor
from profiler.sensors.base import GpuSensor
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML
from profiler.sensors.simulated_amd import SimulatedAmdSmi

METHODS = [
    name
    for name, member in vars(GpuSensor).items()
    if callable(member) and not name.startswith("_")
]


def test_the_protocol_names_the_methods_the_daemon_calls():
    assert set(METHODS) == {"sample", "attach_process", "detach_process", "describe", "close"}


@pytest.mark.parametrize("sensor_cls", [NvmlSensor, AmdSmiSensor])
@pytest.mark.parametrize("name", METHODS)
def test_each_sensor_method_has_the_protocols_signature(sensor_cls, name):
    wanted = inspect.signature(getattr(GpuSensor, name))
    got = inspect.signature(getattr(sensor_cls, name))
    assert [(p.name, p.kind) for p in got.parameters.values()] == [
        (p.name, p.kind) for p in wanted.parameters.values()
    ], f"{sensor_cls.__name__}.{name}{got} vs GpuSensor.{name}{wanted}"
    hints = typing.get_type_hints(getattr(sensor_cls, name), vars(inspect.getmodule(sensor_cls)))
    protocol = typing.get_type_hints(getattr(GpuSensor, name), vars(base))
    assert hints == protocol, f"{sensor_cls.__name__}.{name}"


@pytest.mark.parametrize(
    "sensor", [lambda: NvmlSensor(SimulatedNVML()), lambda: AmdSmiSensor(SimulatedAmdSmi())]
)
def test_each_built_sensor_has_the_protocols_attributes(sensor):
    s = sensor()
    try:
        assert s.source in ("nvml", "amdsmi", "simulated")
        assert isinstance(s.errors, Counter)
        assert isinstance(s.sample(), list)
        assert isinstance(s.describe(), str)
    finally:
        s.close()
