"""Sensors: one small interface (``base``), one module per source (``nvml``, ``simulated``,
``rapl``, ``host``). Importing this package is light: it imports none of its modules (the
configuration reads :mod:`profiler.sensors.gpu_spec` at every ``profiler`` command), and the names
below load their module on first use; ``pynvml`` and ``psutil`` load only when a sensor that needs
them is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from profiler.sensors.base import SensorError, SensorUnavailable
    from profiler.sensors.nvml import NvmlSensor, discover_gpu_sensor

__all__ = ["NvmlSensor", "SensorError", "SensorUnavailable", "discover_gpu_sensor"]


def __getattr__(name: str) -> Any:
    """``NvmlSensor``, ``discover_gpu_sensor`` (from ``nvml``), ``SensorError`` and
    ``SensorUnavailable`` (from ``base``), their module imported on first use."""
    if name in ("NvmlSensor", "discover_gpu_sensor"):
        from profiler.sensors import nvml

        value = getattr(nvml, name)
    elif name in ("SensorError", "SensorUnavailable"):
        from profiler.sensors import base

        value = getattr(base, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later uses find it without this call
    return value
