"""Sensors: one small interface (``base``), one module per source (``nvml``, ``simulated``,
``rapl``, ``host``). Importing this package is light: ``pynvml`` and ``psutil`` load only when a
sensor that needs them is built.
"""

from profiler.sensors.base import SensorError, SensorUnavailable
from profiler.sensors.nvml import NvmlSensor, discover_gpu_sensor

__all__ = ["NvmlSensor", "SensorError", "SensorUnavailable", "discover_gpu_sensor"]
