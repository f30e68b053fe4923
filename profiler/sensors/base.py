"""The one interface every sensor implements, and the records they return.

Sensors measure devices; they know nothing of runs or money. A figure a sensor cannot measure is
``None`` (reported as unsupported), never zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class SensorError(Exception):
    """A sensor could not be read; the message says which device and why."""


class SensorUnavailable(SensorError):
    """The source does not exist on this machine (no driver, no sysfs tree, no permission)."""


@dataclass(frozen=True)
class GpuProcess:
    """A process using a GPU. ``used_memory_bytes`` is None when the driver does not say.
    ``gpu_instance_id``: the MIG GPU instance it runs in (NVML's ``gpuInstanceId``); None on a
    GPU not in MIG mode, or when the driver does not say."""

    pid: int
    used_memory_bytes: int | None = None
    gpu_instance_id: int | None = None


@dataclass(frozen=True)
class MigInstance:
    """One MIG instance of a GPU in MIG mode, as enumerated at the sensor's start: its own
    ``uuid`` (``MIG-...``), NVML's ``gpu_instance_id``, its ``profile`` (``"3g.40gb"``, from the
    instance's name), the compute ``slices`` it holds (the ``3`` of ``3g``) out of the parent's
    ``gpu_slices`` (7 on an A100/H100), and its memory in bytes (None: unknown)."""

    uuid: str
    gpu_instance_id: int
    profile: str
    slices: int
    gpu_slices: int
    memory_total_bytes: int | None = None


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU at monotonic time ``t_s`` (seconds, CLOCK_MONOTONIC).

    ``energy_j`` is cumulative energy in joules since the sensor started (monotone non-decreasing),
    from the driver's counter when ``energy_source == "counter"`` or from integrating power when
    ``"power_integration"``. ``power_w`` is the power reading in watts at ``t_s``.

    ``counter_j`` is the driver's own energy counter as read at ``t_s`` (joules since the driver
    loaded, not since the sensor started; None unless ``energy_source == "counter"``), and
    ``counter_id`` names that counter's epoch (the device and what must not change for two
    readings to be comparable: the boot, or the simulator and its resets); None when unknown.
    Two readings with the same ``counter_id`` measure the energy between them, even when they
    were taken by different sensors (a daemon and the one that restarted after it).

    ``process_activity`` maps pid -> that process's mean SM utilization (ratio 0..1) over the
    interval since the device's previous activity reading. A pid in ``processes`` but not in the
    map had no activity in that interval (NVML leaves out processes with zero utilization), so
    it counts as 0; ``{}`` is a reading in which no process was busy (NVML's NotFound: no
    sample since the last reading). ``None``: not read in this sample (activity is read at most
    once a second; the last reading stands for the window it covers until the next one), or no
    per-process activity on this device at all.
    ``activity_source`` says where the device's per-process activity comes from:
    ``"nvml_process_utilization"`` (``nvmlDeviceGetProcessUtilization``), ``"simulated"`` (the
    simulated GPU, through the same call), or ``None`` when the device has none (not supported,
    or a scripted simulated trace): then its energy can only be split equally. It is set on
    every sample of a device that provides activity, including the samples between readings.
    ``idle_power_w`` is the device's idle power in watts as the sensor knows it (the simulated
    model's idle figure, or a measured floor); ``None`` when unknown.
    ``mig_instances``: the device's MIG instances when it is in MIG mode (enumerated at the
    sensor's start; each process says its instance in ``GpuProcess.gpu_instance_id``); ``()``
    when not. Energy and power stay the parent's: NVML has none per instance.
    ``vendor``: who made the device, ``"nvidia"`` (NVML) or ``"amd"`` (amdsmi), simulated or not.
    ``power_points``: on the polling path (``"power_integration"``), the fast power readings
    ``(t_s, watts)`` taken strictly between the previous sample and this one and integrated into
    ``energy_j`` (:mod:`profiler.sensors.nvml_power`), oldest first; ``()`` otherwise. They say
    where in the interval its energy fell (the daemon puts them on the energy curve).
    """

    index: int
    uuid: str
    name: str
    t_s: float
    energy_j: float | None
    energy_source: str
    power_w: float | None
    power_limit_w: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    utilization_ratio: float | None
    processes: tuple[GpuProcess, ...] = field(default_factory=tuple)
    simulated: bool = False
    counter_j: float | None = None
    counter_id: str | None = None
    process_activity: dict[int, float] | None = None
    activity_source: str | None = None
    idle_power_w: float | None = None
    mig_instances: tuple[MigInstance, ...] = ()
    vendor: str = "nvidia"
    power_points: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU-side energy of one zone at monotonic time ``t_s``.

    ``source`` is ``"rapl"`` (measured) or ``"estimated"`` (TDP x load model).
    """

    zone: str
    t_s: float
    energy_j: float
    source: str


def power_step_j(
    last_power_w: float | None, last_t_s: float | None, power_w: float | None, t_s: float
) -> float:
    """Joules between the last power reading (watts at ``last_t_s`` seconds) and this one, by
    trapezoid: the polling path of every GPU sensor; 0.0 without both readings."""
    if power_w is None or last_power_w is None or last_t_s is None:
        return 0.0
    return (last_power_w + power_w) / 2 * max(0.0, t_s - last_t_s)


class GpuSensor(Protocol):
    """A source of GPU samples: what the daemon uses of one. ``sample()`` reads every device once;
    ``errors`` counts failed reads by kind (the daemon reports them as ``sensor_error:gpu:<kind>``).
    ``attach_process``/``detach_process`` tell a simulated GPU which processes run on which
    devices (indexes, or the ``MIG-`` uuids of its MIG instances); a real one lists its
    processes itself and does nothing. A second GPU
    vendor implements this and is added to discovery."""

    source: str  # "nvml", "amdsmi" or "simulated"
    errors: Counter[str]

    def sample(self) -> list[GpuSample]: ...

    def attach_process(self, pid: int, devices: Sequence[int | str]) -> None: ...

    def detach_process(self, pid: int) -> None: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class CpuSensor(Protocol):
    """A source of cumulative CPU energy per zone; ``errors`` counts failed reads by kind."""

    errors: Counter[str]

    def sample(self) -> list[CpuSample]: ...

    def describe(self) -> str: ...
