"""Which GPU sensor a ``gpu`` spec (:mod:`profiler.sensors.gpu_spec`) gives.

``auto`` tries each vendor of :data:`VENDORS` in turn (NVML, then amdsmi) and takes the first
that initialises and lists a GPU; when none does, it says so in one line naming each vendor's
reason. ``nvml`` and ``amdsmi`` force one (SensorUnavailable when it gives no GPU). The simulated
specs build the real sensor over a simulated library. Adding a vendor: one sensor module and one
line in :data:`VENDORS` (and its name in the spec grammar).

Vendor modules are imported only when their sensor is tried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from profiler.sensors.base import GpuSensor, SensorUnavailable
from profiler.sensors.gpu_spec import parse_gpu_spec

Clock = Callable[[], float]
SIMULATED_HINT = "set PROFILER_GPU=simulated (or simulated-amd) to use a simulated GPU"


class _ListingSensor(GpuSensor, Protocol):
    """A GPU sensor that can say which devices it found at start (both vendors' can)."""

    @property
    def devices(self) -> Sequence[object]: ...


def _nvml(clock: Clock) -> _ListingSensor:
    from profiler.sensors.nvml import NvmlSensor

    return NvmlSensor(clock=clock)


def _amdsmi(clock: Clock) -> _ListingSensor:
    from profiler.sensors.amdsmi import AmdSmiSensor

    return AmdSmiSensor(clock=clock)


def _simulated_nvml(spec: str, clock: Clock) -> _ListingSensor:
    from profiler.sensors.nvml import NvmlSensor
    from profiler.sensors.simulated import SimulatedNVML
    from profiler.sensors.simulated_mig import parse_simulated_mig_spec

    model, count, mig = parse_simulated_mig_spec(spec)
    return NvmlSensor(SimulatedNVML(model, count, clock=clock, mig=mig), clock=clock)


def _simulated_amd(spec: str, clock: Clock) -> _ListingSensor:
    from profiler.sensors.amdsmi import AmdSmiSensor
    from profiler.sensors.simulated_amd import SimulatedAmdSmi, parse_simulated_amd_spec

    model, count = parse_simulated_amd_spec(spec)
    return AmdSmiSensor(SimulatedAmdSmi(model, count, clock=clock), clock=clock)


VENDORS: tuple[tuple[str, str, Callable[[Clock], _ListingSensor]], ...] = (
    ("nvml", "NVML", _nvml),
    ("amdsmi", "amdsmi", _amdsmi),
)
"""(spec name, label, builder) of each real GPU library, in the order ``auto`` tries them."""
SIMULATED: dict[str, Callable[[str, Clock], _ListingSensor]] = {
    "simulated": _simulated_nvml,
    "simulated-amd": _simulated_amd,
}


def discover_gpu_sensor(
    spec: str, *, clock: Clock = time.monotonic
) -> tuple[GpuSensor | None, str]:
    """The GPU sensor a spec asks for, and one line describing it for logs and status.

    ``"none"``: no GPU sampling. ``"nvml"``/``"amdsmi"``: that library, else SensorUnavailable.
    ``"auto"``: the first of :data:`VENDORS` that initialises and lists a GPU, else None with
    each one's reason. ``"simulated[:MODEL[:COUNT]]"``: the simulated NVIDIA GPU (default one
    A100-SXM4-40GB); ``"simulated-amd[:MODEL[:COUNT]]"``: the simulated AMD GPU (default one
    MI300X). A bad spec raises ValueError.
    """
    head = parse_gpu_spec(spec)
    if head in SIMULATED:
        sensor = SIMULATED[head](spec.strip(), clock)
        return sensor, sensor.describe()
    if head == "none":
        return None, "GPU sampling off (gpu = none)"
    vendors = [v for v in VENDORS if head in ("auto", v[0])]
    reasons = []
    for name, label, build in vendors:
        try:
            sensor = build(clock)
        except SensorUnavailable as e:
            if head != "auto":
                raise
            reasons.append(str(e))
            continue
        if sensor.devices:
            return sensor, sensor.describe()
        sensor.close()
        if head != "auto":
            raise SensorUnavailable(f"{label} initialised but lists no GPU (gpu = {name})")
        reasons.append(f"{label} lists no GPU")
    return None, f"no GPU found: {'; '.join(reasons)}; {SIMULATED_HINT}"
