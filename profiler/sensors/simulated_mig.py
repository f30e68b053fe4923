"""The simulated GPU's MIG mode: the instance profiles each model offers, the ``mig=`` part of the
``simulated:MODEL:COUNT:mig=P1,P2`` spec, and the ``pynvml`` calls our sensor makes on a GPU in
MIG mode (a mixin of :class:`profiler.sensors.simulated.SimulatedNVML`).

A GPU in MIG mode is cut into GPU instances, each holding some of its 7 compute slices (the
``3`` of ``3g.40gb``) and memory; a process runs in one instance and NVML lists it under the
parent GPU with that instance's ``gpuInstanceId``. What the simulator answers, as NVML does:

- ``nvmlDeviceGetMigMode(parent) -> (current, pending)``: ``(1, 1)`` in MIG mode, ``(0, 0)``
  on a MIG-capable model that is not, NotSupported on a model without MIG.
- ``nvmlDeviceGetMaxMigDeviceCount(parent)`` (7), ``nvmlDeviceGetMigDeviceHandleByIndex``
  (NotFound for an empty slot), ``nvmlDeviceGetGpuInstanceId(mig)``,
  ``nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)``, and ``nvmlDeviceGetUUID`` (``MIG-...``),
  ``nvmlDeviceGetName`` (``NVIDIA A100-SXM4-80GB MIG 3g.40gb``) and ``nvmlDeviceGetMemoryInfo``
  (the instance's memory) on a MIG handle.
- Energy, power and per-process utilization exist for the parent only: on a MIG handle they
  raise NotSupported (real NVML has no per-instance power). The parent answers
  ``nvmlDeviceGetProcessUtilization`` for every process on it, whatever its instance; real
  drivers may answer NotSupported there in MIG mode (the sensor then has no activity for the
  GPU, and attribution falls back to the instance sizes: see
  :mod:`profiler.accounting.attribution`; :meth:`set_process_utilization_supported` plays it).

The power model is unchanged: the parent draws idle plus the active power its processes' loads
drive, whatever their instances, so each process's exact share stays
``exact_process_energy_j``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pynvml

from profiler.sensors.simulated_power import GIB, parse_simulated_spec

if TYPE_CHECKING:
    from profiler.sensors.simulated_power import GpuModel

GPU_SLICES = 7
"""Compute slices of an A100 or H100 in MIG mode."""
MIG_PROFILES: dict[str, dict[str, int]] = {
    "A100-SXM4-40GB": {"1g.5gb": 1, "2g.10gb": 2, "3g.20gb": 3, "4g.20gb": 4, "7g.40gb": 7},
    **{
        name: {"1g.10gb": 1, "2g.20gb": 2, "3g.40gb": 3, "4g.40gb": 4, "7g.80gb": 7}
        for name in ("A100-SXM4-80GB", "H100-SXM5-80GB", "H100-PCIe-80GB")
    },
}
"""Per simulated model with MIG: its instance profiles and the slices each holds."""
NOT_MIG = 0xFFFFFFFF
"""``gpuInstanceId``/``computeInstanceId`` of a process on a GPU not in MIG mode."""


def parse_mig(model: str, text: str) -> tuple[str, ...]:
    """``"3g.40gb,2g.20gb"`` -> the profiles, checked for ``model`` (case-insensitive; their
    slices at most :data:`GPU_SLICES` in all). ValueError naming the valid profiles."""
    profiles = MIG_PROFILES.get(model)
    if profiles is None:
        with_mig = ", ".join(MIG_PROFILES)
        raise ValueError(f"simulated {model} has no MIG mode; models with MIG: {with_mig}")
    valid = ", ".join(f"{p} ({n} slice{'s' if n > 1 else ''})" for p, n in profiles.items())
    names = [t.strip().lower() for t in text.split(",")]
    bad = [n for n in names if n not in profiles]
    if bad or not names:
        raise ValueError(
            f"mig={text!r}: unknown MIG profile {bad[0] if bad else ''!r} for {model}; "
            f"valid profiles: {valid}"
        )
    used = sum(profiles[n] for n in names)
    if used > GPU_SLICES:
        raise ValueError(
            f"mig={text!r}: {used} slices do not fit the {GPU_SLICES} of a {model}; "
            f"valid profiles: {valid}"
        )
    return tuple(names)


def parse_simulated_mig_spec(spec: str) -> tuple[str, int, tuple[str, ...] | None]:
    """``"simulated[:MODEL[:COUNT]][:mig=P1,P2,...]"`` -> ``(model, count, MIG profiles or
    None)``; ValueError (one line naming the spec and, for MIG, the valid profiles)."""
    head, sep, profiles = spec.strip().partition(":mig=")
    if not sep:
        head, sep, profiles = spec.strip().partition(":MIG=")
    model, count = parse_simulated_spec(head)
    if not sep:
        return model, count, None
    try:
        return model, count, parse_mig(model, profiles)
    except ValueError as e:
        raise ValueError(f"gpu spec {spec!r}: {e}") from None


def profile_memory_bytes(profile: str) -> int:
    """``"3g.40gb"`` -> 40 GiB."""
    return int(profile.split(".")[1].removesuffix("gb")) * GIB


@dataclass(frozen=True)
class SimulatedHandle:
    """An opaque device handle, like pynvml's ``c_nvmlDevice_t`` (here, beside the MIG handle,
    so that both modules use it; :mod:`profiler.sensors.simulated` exports it)."""

    index: int


@dataclass(frozen=True)
class SimulatedMigHandle:
    """A MIG device handle: the parent's index and the instance's slot (0..6)."""

    index: int
    slot: int


@dataclass(frozen=True)
class SimulatedInstance:
    """One GPU instance of a simulated GPU: NVML's ``gpu_instance_id``, its profile and
    slices, its ``MIG-`` uuid."""

    slot: int
    gpu_instance_id: int
    profile: str
    slices: int
    uuid: str


@dataclass
class MigLayout:
    """A simulated GPU's MIG instances, and which instance each attached process runs in."""

    instances: tuple[SimulatedInstance, ...]
    instance_of: dict[int, int] = field(default_factory=dict)  # pid -> gpu_instance_id

    @classmethod
    def build(cls, model: str, index: int, profiles: Sequence[str]) -> MigLayout:
        """Instances ``profiles`` in order on device ``index``; GPU instance ids from 1."""
        slices = MIG_PROFILES[model]
        return cls(
            tuple(
                SimulatedInstance(
                    slot, slot + 1, p, slices[p], f"MIG-5137a7ed-{index:04x}-4000-8000-{slot:012x}"
                )
                for slot, p in enumerate(profiles)
            )
        )

    def find(self, gpu_instance_id: int) -> SimulatedInstance | None:
        return next((i for i in self.instances if i.gpu_instance_id == gpu_instance_id), None)


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class _MigDevice(Protocol):
    """What the mixin needs of a simulated device."""

    index: int
    model: GpuModel
    mig: MigLayout | None
    lost: bool


class _ListedProcess(Protocol):
    """What the mixin reads of a listed process (``SimulatedProcess``)."""

    @property
    def usedGpuMemory(self) -> int | None: ...

    @property
    def gpuInstanceId(self) -> int: ...


def place_process(layout: MigLayout | None, index: int, pid: int, instance: int | None) -> None:
    """Record that ``pid`` runs in GPU instance ``instance`` (a ``gpu_instance_id``) of device
    ``index`` with MIG ``layout``, or in none (``instance`` None); ValueError when the device
    has no such instance."""
    if instance is not None:
        if layout is None or layout.find(instance) is None:
            raise ValueError(f"device {index} has no MIG GPU instance {instance!r}")
        layout.instance_of[pid] = instance
    elif layout is not None:
        layout.instance_of.pop(pid, None)


class SimulatedMigCalls:
    """The MIG part of ``SimulatedNVML``'s ``pynvml`` surface (see the module docstring)."""

    _lock: threading.RLock

    def _device(self, handle: object) -> _MigDevice: ...  # pragma: no cover - SimulatedNVML's

    def _parent_of(self, handle: SimulatedMigHandle) -> tuple[_MigDevice, SimulatedInstance]:
        """The parent device and instance of a MIG handle; InvalidArgument when it names none."""
        dev = self._device(SimulatedHandle(handle.index))
        if dev.mig is None or not 0 <= handle.slot < len(dev.mig.instances):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return dev, dev.mig.instances[handle.slot]

    def nvmlDeviceGetMigMode(self, handle: object) -> tuple[int, int]:
        """``(current, pending)``: 1 in MIG mode; NotSupported on a model without MIG."""
        with self._lock:
            dev = self._device(handle)
            if dev.model.name not in MIG_PROFILES:
                raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
            mode = 1 if dev.mig is not None else 0
            return mode, mode

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: object) -> int:
        with self._lock:
            dev = self._device(handle)
            if dev.model.name not in MIG_PROFILES:
                raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return GPU_SLICES

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: object, index: int) -> SimulatedMigHandle:
        """The MIG device in slot ``index``; NotFound for an empty slot."""
        with self._lock:
            dev = self._device(handle)
            if dev.mig is None or not 0 <= index < GPU_SLICES:
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if index >= len(dev.mig.instances):
                raise _error(pynvml.NVML_ERROR_NOT_FOUND)
            return SimulatedMigHandle(dev.index, index)

    def nvmlDeviceGetGpuInstanceId(self, handle: SimulatedMigHandle) -> int:
        with self._lock:
            if not isinstance(handle, SimulatedMigHandle):
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return self._parent_of(handle)[1].gpu_instance_id

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: SimulatedMigHandle) -> object:
        with self._lock:
            if not isinstance(handle, SimulatedMigHandle):
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            dev, _instance = self._parent_of(handle)
            return SimulatedHandle(dev.index)

    def _living_processes(  # pragma: no cover - SimulatedNVML's
        self, dev: _MigDevice
    ) -> Sequence[_ListedProcess]: ...

    def _mig_memory(self, handle: SimulatedMigHandle) -> tuple[int, list[_ListedProcess]]:
        """A MIG handle's instance memory (bytes) and the living processes in that instance."""
        dev, instance = self._parent_of(handle)
        procs = [
            p for p in self._living_processes(dev) if p.gpuInstanceId == instance.gpu_instance_id
        ]
        return profile_memory_bytes(instance.profile), procs

    def _mig_name(self, handle: SimulatedMigHandle) -> str:
        dev, instance = self._parent_of(handle)
        return f"{dev.model.nvml_name} MIG {instance.profile}"
