"""Sensors: one small interface (``base``), one module per source (``nvml``, ``amdsmi``,
``simulated``, ``simulated_amd``, ``rapl``, ``host``), and ``discovery``, which picks the GPU
sensor. Importing this package is light: it imports none of its modules (the configuration reads
:mod:`profiler.sensors.gpu_spec` at every ``profiler`` command), and the names below load their
module on first use; ``pynvml``, ``amdsmi`` and ``psutil`` load only when a sensor that needs them
is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from profiler.sensors.base import SensorError, SensorUnavailable
    from profiler.sensors.discovery import discover_gpu_sensor
    from profiler.sensors.nvml import NvmlSensor

__all__ = ["NvmlSensor", "SensorError", "SensorUnavailable", "discover_gpu_sensor"]


def __getattr__(name: str) -> Any:
    """``NvmlSensor`` (from ``nvml``), ``discover_gpu_sensor`` (from ``discovery``),
    ``SensorError`` and ``SensorUnavailable`` (from ``base``), their module imported on first
    use."""
    if name == "NvmlSensor":
        from profiler.sensors import nvml

        value = nvml.NvmlSensor
    elif name == "discover_gpu_sensor":
        from profiler.sensors import discovery

        value = discovery.discover_gpu_sensor
    elif name in ("SensorError", "SensorUnavailable"):
        from profiler.sensors import base

        value = getattr(base, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later uses find it without this call
    return value
