"""A simulated NVIDIA GPU with the ``pynvml`` API, so the real NVML sensor code runs without one.

``SimulatedNVML`` is used exactly like the ``pynvml`` module: the same function names and argument
shapes, the same units (power in milliwatts, energy in millijoules, memory in bytes, utilization in
integer percent) and the real ``pynvml`` error classes, so ``except nvml.NVMLError_NotSupported``
works on either. Every device's power is piecewise constant in time and its energy counter is the
exact integral of that power, so tests know the ground truth (``exact_energy_j``).

Power models, chosen per device (the GPU models and power timelines are in
:mod:`profiler.sensors.simulated_power`; this module is the ``pynvml`` surface over them):

- **scripted** (``traces`` given): a list of ``(duration_s, watts)`` phases starting when the
  simulator is built; with ``repeat=True`` the trace loops, otherwise the device sits at the
  model's idle watts once the trace ends. Scripted power has no noise: the trace is the truth.
- **load** (no trace): ``idle_w + (power_limit_w - idle_w) * utilization``, where utilization is
  the CPU activity of the processes attached to the device (CPU seconds of each process and its
  descendants over wall seconds, summed, capped at 1.0) as a stand-in for GPU work. A process
  attached inside another attached process's tree (``profiler run``'s child and the hooked
  training process it started) is counted once, with that tree (under the outer pid). A test may
  fix a process's load instead (:meth:`SimulatedNVML.set_process_load`). It is
  recomputed when a query arrives and at least ``load_period_s`` has passed since the last
  recompute, from the CPU used since then; the new level holds from that moment on, so power
  follows load one period late and stays piecewise constant. Multiplicative noise
  ``N(0, noise)`` from a seeded ``random.Random`` is applied to the active part (above
  ``idle_w``) while at least one attached process is alive, clamped to
  ``[idle_w, power_limit_w]``. With no living attached process, or no load, the device draws
  exactly ``idle_w``.

Per-process activity (load mode only): each process's load drives its part of the active power,
the simulator records each one's exact share (:meth:`SimulatedNVML.exact_process_energy_j`,
:meth:`SimulatedNVML.exact_idle_energy_j`) and ``nvmlDeviceGetProcessUtilization`` reports it as
NVML does (see :mod:`profiler.sensors.simulated_activity`). A scripted trace is the device's power
without processes: its per-process activity is unknown, and ``nvmlDeviceGetProcessUtilization``
raises NVMLError_NotSupported there (the equal-split fallback).

MIG mode (``mig=``: instance profiles on every device) and its ``pynvml`` calls are in
:mod:`profiler.sensors.simulated_mig`; a process attached to an instance
(``attach_process(pid, index, instance=gpu_instance_id)``) is listed with that
``gpuInstanceId``, and its load drives the parent's power as any process's.

``nvmlDeviceGetFieldValues`` (instantaneous power, the energy counter) and an energy counter
that advances in increments like a real one (``set_counter_update_s``) are in
:mod:`profiler.sensors.simulated_fields`.

Everything this module produces is simulated: callers label it so (``SIMULATED = True``).
"""

from __future__ import annotations

import random
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
import pynvml

from profiler.sensors.procs import ProcessTable, process_tree_cpu_seconds
from profiler.sensors.simulated_activity import (
    ACTIVITY_PERIOD_S,
    ProcessShares,
    SimulatedActivityCalls,
)
from profiler.sensors.simulated_fields import SimulatedFieldCalls
from profiler.sensors.simulated_mig import (
    NOT_MIG,
    MigLayout,
    SimulatedHandle,
    SimulatedMigCalls,
    SimulatedMigHandle,
    parse_mig,
    place_process,
)
from profiler.sensors.simulated_power import (
    DEFAULT_MODEL,
    GPU_MODELS,
    MIB,
    GpuModel,
    Phase,
    RecordedPower,
    ScriptedPower,
    checked_model,
    model_named,
    per_device_traces,
)

BASE_MEMORY_BYTES = 400 * MIB
"""GPU memory in bytes a device reports used with no process on it (driver and context)."""
DRIVER_VERSION = "550.54.15"
PROCESS_LIST_TTL_S = 0.5
"""How long the list of a device's living processes is reused before psutil is asked again."""
_NOT_MIG = NOT_MIG  # gpuInstanceId / computeInstanceId of a process on a non-MIG GPU


# ---- records shaped like pynvml's return values


@dataclass(frozen=True)
class MemoryInfo:
    """``nvmlDeviceGetMemoryInfo`` result, bytes."""

    total: int
    free: int
    used: int


@dataclass(frozen=True)
class Utilization:
    """``nvmlDeviceGetUtilizationRates`` result, integer percent."""

    gpu: int
    memory: int


@dataclass(frozen=True)
class SimulatedProcess:
    """One ``nvmlDeviceGetComputeRunningProcesses`` entry; ``usedGpuMemory`` in bytes or None."""

    pid: int
    usedGpuMemory: int | None
    gpuInstanceId: int = _NOT_MIG
    computeInstanceId: int = _NOT_MIG


@dataclass
class _Device:
    index: int
    model: GpuModel
    uuid: str
    power: ScriptedPower | RecordedPower
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> given bytes or None
    cpu_prev_s: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds at last look
    last_recompute_s: float = 0.0
    utilization: float = 0.0  # load mode: ratio 0..1 from attached processes' CPU
    counter_supported: bool = True
    lost: bool = False
    counter_base_j: float = 0.0  # energy at the last simulated driver reload
    counter_offset_mj: int = 0
    counter_resets: int = 0  # simulated driver reloads so far (part of the counter's epoch)
    living: tuple[float, list[SimulatedProcess]] | None = None  # (when, processes) last looked up
    shares: ProcessShares | None = None  # load mode: each process's part of the power
    activity_supported: bool = True  # False: nvmlDeviceGetProcessUtilization -> NotSupported
    info_call: bool = True  # False: nvmlDeviceGetProcessesUtilizationInfo -> FunctionNotFound
    mig: MigLayout | None = None  # MIG mode: its instances

    @property
    def load_mode(self) -> bool:
        return isinstance(self.power, RecordedPower)


def _error(code: int) -> pynvml.NVMLError:
    """The real pynvml exception for an NVML return code (the matching subclass)."""
    return pynvml.NVMLError(code)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return psutil.pid_exists(pid)


def _rss_bytes(pid: int) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class SimulatedNVML(SimulatedActivityCalls, SimulatedMigCalls, SimulatedFieldCalls):
    """A drop-in stand-in for the ``pynvml`` module driving ``count`` simulated GPUs of ``model``
    (a name in ``GPU_MODELS``, or a ``GpuModel``: the simulated AMD GPU passes its own).

    ``clock`` gives monotonic seconds (a fake clock makes tests exact). ``traces`` selects the
    scripted power model (one trace per device, or a single trace for all; a ``None`` entry puts
    that device in load mode); ``noise`` is the load-mode relative standard deviation;
    ``energy_offset_mj`` is added to every energy counter, as a real counter counts from driver
    load; ``activity_period_s`` is how often (clock seconds) per-process utilization samples are
    taken; ``mig`` puts every device in MIG mode with these instance profiles (e.g.
    ``("3g.40gb", "2g.20gb")``, see :mod:`profiler.sensors.simulated_mig`);
    ``idle_power_known=False`` hides the model's idle watts (``simulated_idle_power_w``), as on
    real hardware. Thread-safe.
    """

    SIMULATED = True

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_NoPermission = pynvml.NVMLError_NoPermission
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    NVMLError_InvalidArgument = pynvml.NVMLError_InvalidArgument
    NVMLError_NotFound = pynvml.NVMLError_NotFound
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVML_SUCCESS = pynvml.NVML_SUCCESS

    def __init__(
        self,
        model: str | GpuModel = DEFAULT_MODEL,
        count: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        traces: Sequence[Any] | None = None,
        repeat: bool = False,
        noise: float = 0.015,
        seed: int = 0,
        load_period_s: float = 0.05,
        energy_offset_mj: int = 0,
        activity_period_s: float = ACTIVITY_PERIOD_S,
        mig: Sequence[str] | None = None,
        idle_power_known: bool = True,
    ) -> None:
        name = model.name if isinstance(model, GpuModel) else model_named(model)
        name = checked_model(name, model, list(GPU_MODELS), count)
        if noise < 0 or load_period_s < 0:
            raise ValueError("noise and load_period_s must be >= 0")
        self.model = model if isinstance(model, GpuModel) else GPU_MODELS[name]
        self.mig = None if mig is None else parse_mig(name, ",".join(mig))
        self.noise, self.load_period_s = float(noise), float(load_period_s)
        self._table: tuple[float, ProcessTable] | None = None  # (when, scan) for load mode
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._init_count = 0
        self._hang_s: dict[int, float] = {}  # device index -> seconds its reads block
        self._fixed_load: dict[int, float] = {}  # pid -> load ratio set by a test
        self.activity_period_s = float(activity_period_s)
        self.idle_power_known = idle_power_known  # False: as a real GPU, no idle figure given
        # Names this simulator's energy counters: a daemon restarted on the same simulator
        # (in-process tests) reads the same counters; a new simulator's counters start over.
        self.token = uuidlib.uuid4().hex[:12]
        self.t0_s = clock()
        per_device = per_device_traces(traces, count)
        self._devices = [
            self._new_device(i, per_device[i], repeat, int(energy_offset_mj)) for i in range(count)
        ]

    def _new_device(
        self, index: int, trace: Sequence[Phase] | None, repeat: bool, offset_mj: int
    ) -> _Device:
        m = self.model
        shares = None
        if trace is None:
            power: ScriptedPower | RecordedPower = RecordedPower(self.t0_s, m.idle_w)
            shares = ProcessShares(self.t0_s, self.activity_period_s)
        else:
            power = ScriptedPower(self.t0_s, trace, m.idle_w, repeat)
        uuid = f"GPU-5137a7ed-0000-4000-8000-{index:012x}"
        mig = None if self.mig is None else MigLayout.build(m.name, index, self.mig)
        return _Device(
            index,
            m,
            uuid,
            power,
            last_recompute_s=self.t0_s,
            counter_offset_mj=offset_mj,
            shares=shares,
            mig=mig,
        )

    # ---- library

    def nvmlInit(self) -> None:
        with self._lock:
            self._init_count += 1

    def nvmlShutdown(self) -> None:
        with self._lock:
            if self._init_count == 0:
                raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
            self._init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        with self._lock:
            self._check_init()
            return DRIVER_VERSION

    def nvmlDeviceGetCount(self) -> int:
        with self._lock:
            self._check_init()
            return len(self._devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimulatedHandle:
        with self._lock:
            self._check_init()
            if not (isinstance(index, int) and 0 <= index < len(self._devices)):
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return SimulatedHandle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> SimulatedHandle:
        with self._lock:
            self._check_init()
            text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            for dev in self._devices:
                if dev.uuid == text:
                    return SimulatedHandle(dev.index)
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    # ---- device queries (pynvml units)

    def nvmlDeviceGetName(self, handle: SimulatedHandle | SimulatedMigHandle) -> str:
        with self._lock:
            if isinstance(handle, SimulatedMigHandle):
                return self._mig_name(handle)
            return self._device(handle).model.nvml_name

    def nvmlDeviceGetUUID(self, handle: SimulatedHandle | SimulatedMigHandle) -> str:
        with self._lock:
            if isinstance(handle, SimulatedMigHandle):
                return self._parent_of(handle)[1].uuid
            return self._device(handle).uuid

    def nvmlDeviceGetIndex(self, handle: SimulatedHandle) -> int:
        with self._lock:
            return self._device(handle).index

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: SimulatedHandle) -> int:
        """Power limit in milliwatts."""
        with self._lock:
            return round(self._device(handle).model.power_limit_w * 1000)

    def nvmlDeviceGetPowerUsage(self, handle: SimulatedHandle) -> int:
        """Power now in milliwatts (instantaneous: the model's level at this clock time)."""
        self._maybe_hang(handle)
        with self._lock:
            dev, now = self._device_now(handle)
            return round(dev.power.power_at(now) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: SimulatedHandle) -> int:
        """Energy in millijoules since the (simulated) driver loaded: the floor of the exact
        integral plus ``energy_offset_mj``."""
        self._maybe_hang(handle)
        with self._lock:
            dev, now = self._device_now(handle)
            if not dev.counter_supported:
                raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return self._counter_mj(dev, now)  # simulated_fields: update period

    def simulated_counter_epoch(self, handle: SimulatedHandle) -> str:
        """Not pynvml: what the device's energy counter counts from, as a string that changes
        when the counter restarts (a new simulator, or :meth:`reset_energy_counter`). Readings
        with the same epoch measure the energy between them exactly; the real NVML sensor uses
        the boot id instead."""
        with self._lock:
            dev = self._device(handle)
            return f"sim-{self.token}.{dev.counter_resets}"

    def nvmlDeviceGetMemoryInfo(self, handle: SimulatedHandle | SimulatedMigHandle) -> MemoryInfo:
        """Memory in bytes: a small base plus the listed processes' memory, capped at total (on
        a MIG handle: the instance's memory and its processes')."""
        with self._lock:
            if isinstance(handle, SimulatedMigHandle):
                total, procs = self._mig_memory(handle)
            else:
                dev = self._device(handle)
                total = dev.model.memory_bytes
                procs = self._living_processes(dev)
            used = min(total, BASE_MEMORY_BYTES + sum(p.usedGpuMemory or 0 for p in procs))
            return MemoryInfo(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: SimulatedHandle) -> Utilization:
        """Percent of time busy. Load mode: the attached processes' CPU ratio; scripted mode:
        where power sits between idle and the limit. Memory utilization is modelled as half."""
        with self._lock:
            dev, now = self._device_now(handle)
            if dev.load_mode:
                ratio = dev.utilization if dev.processes else 0.0
            else:
                m = dev.model
                ratio = (dev.power.power_at(now) - m.idle_w) / (m.power_limit_w - m.idle_w)
            percent = round(100 * min(1.0, max(0.0, ratio)))
            return Utilization(gpu=percent, memory=percent // 2)

    def nvmlDeviceGetComputeRunningProcesses(
        self, handle: SimulatedHandle
    ) -> list[SimulatedProcess]:
        """Attached processes still alive; ``usedGpuMemory`` is the figure given to
        ``attach_process`` (bytes), else the process's resident memory as a stand-in."""
        with self._lock:
            return self._living_processes(self._device(handle))

    def simulated_energy_j(self, handle: SimulatedHandle) -> float:
        """Not pynvml: the exact energy in joules device ``handle`` drew since the simulator was
        built (load brought up to date; no offset, resets or rounding): what another vendor's
        simulated counter (:mod:`profiler.sensors.simulated_amd`) is drawn from."""
        with self._lock:
            dev, now = self._device_now(handle)
            return dev.power.energy_at(now)

    def simulated_idle_power_w(self, handle: SimulatedHandle) -> float:
        """Not pynvml: the device model's idle power in watts (what it draws with no load).
        Answers NotSupported when built with ``idle_power_known=False``, so the daemon measures
        the floor as on a real GPU."""
        if not self.idle_power_known:
            raise self.NVMLError_NotSupported()
        with self._lock:
            return self._device(handle).model.idle_w

    # ---- simulator controls (not part of pynvml)

    def attach_process(
        self,
        pid: int,
        index: int,
        used_memory_bytes: int | None = None,
        *,
        instance: int | None = None,
    ) -> None:
        """Tell the simulator that process ``pid`` runs on device ``index`` (in MIG mode: in its
        GPU instance ``instance``, a ``gpu_instance_id``; ValueError when it has none such)."""
        with self._lock:
            dev = self._devices[index]
            place_process(dev.mig, index, pid, instance)
            dev.processes[pid] = used_memory_bytes
            dev.living = None
            cpu_s = process_tree_cpu_seconds(pid)
            if cpu_s is not None:
                dev.cpu_prev_s[pid] = cpu_s

    def detach_process(self, pid: int) -> None:
        """Forget process ``pid`` on every device."""
        with self._lock:
            for dev in self._devices:
                dev.processes.pop(pid, None)
                dev.cpu_prev_s.pop(pid, None)
                dev.living = None
                if dev.mig is not None:
                    dev.mig.instance_of.pop(pid, None)

    def set_energy_counter_supported(self, index: int, supported: bool) -> None:
        """False: ``nvmlDeviceGetTotalEnergyConsumption`` raises NVMLError_NotSupported."""
        with self._lock:
            self._devices[index].counter_supported = supported

    def set_lost(self, index: int, lost: bool) -> None:
        """True: every call on that device's handle raises NVMLError_GpuIsLost."""
        with self._lock:
            self._devices[index].lost = lost

    def set_hang(self, index: int, seconds: float) -> None:
        """Simulate a stuck driver: power and energy reads of device ``index`` block for
        ``seconds`` of real time (0 ends it) before answering; other devices answer at once."""
        with self._lock:
            self._hang_s[index] = seconds

    def _maybe_hang(self, handle: SimulatedHandle) -> None:
        seconds = self._hang_s.get(getattr(handle, "index", -1), 0.0)
        if seconds > 0:
            time.sleep(seconds)

    def reset_energy_counter(self, index: int) -> None:
        """Simulate a driver reload: the energy counter restarts from 0 mJ (the exact integral
        from ``exact_energy_j`` is unaffected)."""
        with self._lock:
            dev = self._devices[index]
            dev.counter_base_j = dev.power.energy_at(self._clock())
            dev.counter_offset_mj = 0
            dev.counter_resets += 1

    def exact_energy_j(self, index: int, t0_s: float, t1_s: float) -> float:
        """Ground truth: joules drawn by device ``index`` between clock times ``t0_s <= t1_s``.

        Both times must lie within the simulator's life (not before it was built, not after the
        clock's current reading) and, in load mode, within the last ``RETENTION_S`` seconds.
        """
        with self._lock:
            dev = self._checked(index, t0_s, t1_s)
            return dev.power.energy_at(t1_s) - dev.power.energy_at(t0_s)

    def exact_idle_energy_j(self, index: int, t0_s: float, t1_s: float) -> float:
        """Ground truth: the idle part (joules) of device ``index``'s energy over
        ``[t0_s, t1_s]``: the model's idle watts x the time (a scripted trace's phases below the
        idle watts count whole). Same time bounds as :meth:`exact_energy_j`."""
        with self._lock:
            dev = self._checked(index, t0_s, t1_s)
            if isinstance(dev.power, ScriptedPower):
                below = dev.power.clipped(dev.model.idle_w)
                return below.energy_at(t1_s) - below.energy_at(t0_s)
            return dev.model.idle_w * (t1_s - t0_s)

    def _checked(self, index: int, t0_s: float, t1_s: float) -> _Device:
        """Device ``index``, once ``t0_s <= t1_s`` lie within the power history it keeps."""
        dev = self._devices[index]
        now = self._clock()
        oldest = dev.power.oldest_s if dev.load_mode else self.t0_s
        if not oldest <= t0_s <= t1_s <= now:
            raise ValueError(
                f"need {oldest} <= t0_s <= t1_s <= {now} (clock seconds), "
                f"got t0_s={t0_s}, t1_s={t1_s}"
            )
        return dev

    def exact_power_w(self, index: int, t_s: float) -> float:
        """Ground truth: watts of device ``index`` at clock time ``t_s`` (as modelled so far)."""
        with self._lock:
            return self._devices[index].power.power_at(t_s)

    # ---- internals

    def _check_init(self) -> None:
        if self._init_count == 0:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)

    def _device(self, handle: object) -> _Device:
        self._check_init()
        if isinstance(handle, SimulatedMigHandle):  # no power, energy or activity per instance
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not isinstance(handle, SimulatedHandle) or not 0 <= handle.index < len(self._devices):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dev = self._devices[handle.index]
        if dev.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return dev

    def _device_now(self, handle: SimulatedHandle) -> tuple[_Device, float]:
        """The device, the clock now, and the load-mode power brought up to date."""
        dev = self._device(handle)
        now = self._clock()
        if dev.load_mode and now - dev.last_recompute_s >= self.load_period_s:
            self._recompute_load(dev, now)
        return dev, now

    def _process_table(self) -> ProcessTable:
        """The host's processes, scanned at most once per ``load_period_s`` of real time (one
        scan serves every device of a sampling pass)."""
        now = time.monotonic()
        if self._table is None or now - self._table[0] >= self.load_period_s:
            self._table = (now, ProcessTable.read())
        return self._table[1]

    def _recompute_load(self, dev: _Device, now: float) -> None:
        wall_s = now - dev.last_recompute_s
        loads: dict[int, float] = {}  # outermost living pid -> its load (ratio)
        table = self._process_table() if dev.processes else ProcessTable({})
        outermost = table.outermost(dev.processes)
        for pid in list(dev.processes):
            if pid not in outermost:  # inside another attached process's tree: counted there
                dev.cpu_prev_s.pop(pid, None)
                continue
            cpu_s = table.tree_cpu_seconds(pid)
            if cpu_s is None:
                dev.cpu_prev_s.pop(pid, None)
                continue
            busy_s = max(0.0, cpu_s - dev.cpu_prev_s.get(pid, cpu_s))
            dev.cpu_prev_s[pid] = cpu_s
            fixed = self._fixed_load.get(pid)
            loads[pid] = fixed if fixed is not None else busy_s / wall_s if wall_s > 0 else 0.0
        dev.utilization = min(1.0, sum(loads.values()))
        dev.last_recompute_s = now
        watts = self._load_watts(dev.model, dev.utilization) if loads else dev.model.idle_w
        power = dev.power
        assert isinstance(power, RecordedPower) and dev.shares is not None  # load mode
        power.set(now, watts)
        dev.shares.record(now, dev.model.idle_w, watts, loads)

    def _load_watts(self, m: GpuModel, utilization: float) -> float:
        """Watts at ``utilization`` (ratio 0..1): idle plus the active part, the noise on the
        active part only (so a device without load draws exactly its idle watts)."""
        active_w = (m.power_limit_w - m.idle_w) * utilization
        if self.noise > 0 and active_w > 0:
            active_w *= 1.0 + self._rng.gauss(0.0, self.noise)
        return min(m.power_limit_w, max(m.idle_w, m.idle_w + active_w))

    def _living_processes(self, dev: _Device) -> list[SimulatedProcess]:
        """The device's processes that still run, looked up at most every
        :data:`PROCESS_LIST_TTL_S` seconds (of real time: processes are real) or when the
        attached set changes; NVML, too, lists what its last look saw."""
        now = time.monotonic()
        cached = dev.living
        if cached is not None and now - cached[0] < PROCESS_LIST_TTL_S:
            return cached[1]
        out = []
        for pid, given in list(dev.processes.items()):
            if not _alive(pid):  # ended: forget it, so a reused pid is not listed
                dev.processes.pop(pid)
                dev.cpu_prev_s.pop(pid, None)
                continue
            instance = dev.mig.instance_of.get(pid) if dev.mig is not None else None
            out.append(
                SimulatedProcess(
                    pid,
                    given if given is not None else _rss_bytes(pid),
                    gpuInstanceId=_NOT_MIG if instance is None else instance,
                    computeInstanceId=_NOT_MIG if instance is None else 0,
                )
            )
        dev.living = (now, out)
        return out
