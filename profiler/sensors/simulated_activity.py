"""The simulated GPU's per-process side: how each process's load drives its part of the device's
power, the exact ground truth of each process's share of the active energy, and the per-process
utilization samples ``nvmlDeviceGetProcessUtilization`` returns (refreshed once a period, like
NVML's about once a second).

The model (load mode): with loads ``l_p`` (ratio 0..1 each, CPU activity of the process tree or a
load set by a test) summing to ``L``, the device draws ``idle_w + active_w`` where ``active_w =
(limit_w - idle_w) x min(1, L)`` (times the simulator's noise). Each process's part of the active
power is ``active_w x l_p / L``, and its effective SM utilization is ``l_p x min(1, L) / L`` (its
own load while the device is not saturated, its proportional share once it is). Both are
piecewise constant, set at the same instants as the device's power, so each process's active
energy is an exact integral, and the processes' active energies plus the idle energy
(``idle_w x`` the time) equal the device's energy.

Times are clock seconds (NVML timestamps: clock microseconds), power in watts, energy in joules,
utilization in integer percent in the samples.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pynvml

from profiler.sensors.simulated_power import RETENTION_S, RecordedPower

ACTIVITY_PERIOD_S = 1.0
"""How often (clock seconds) the simulated driver takes a per-process utilization sample."""
SAMPLE_BUFFER = 10
"""How many past sample periods ``nvmlDeviceGetProcessUtilization`` can still return."""


@dataclass(frozen=True)
class ProcessUtilizationSample:
    """One ``nvmlDeviceGetProcessUtilization`` entry, shaped like pynvml's
    ``c_nvmlProcessUtilizationSample_t``: ``timeStamp`` in microseconds (the simulator's clock),
    utilizations in integer percent over the sample period ending then."""

    pid: int
    timeStamp: int
    smUtil: int
    memUtil: int
    encUtil: int = 0
    decUtil: int = 0


@dataclass(frozen=True)
class ProcessUtilizationInfo:
    """One ``nvmlDeviceGetProcessesUtilizationInfo`` entry (newer drivers), shaped like pynvml's
    ``c_nvmlProcessUtilizationInfo_v1_t``: the same figures as
    :class:`ProcessUtilizationSample`, plus JPEG and optical-flow utilization (0 here)."""

    timeStamp: int
    pid: int
    smUtil: int
    memUtil: int
    encUtil: int = 0
    decUtil: int = 0
    jpgUtil: int = 0
    ofaUtil: int = 0

    @classmethod
    def of(cls, s: ProcessUtilizationSample) -> ProcessUtilizationInfo:
        return cls(s.timeStamp, s.pid, s.smUtil, s.memUtil, s.encUtil, s.decUtil)


@dataclass
class _Timelines:
    """One process's effective SM utilization (ratio) and active power (watts) over time."""

    utilization: RecordedPower
    active_w: RecordedPower


class ProcessShares:
    """Every process's part of one load-mode device, recorded as the device's power is set.

    ``t0_s`` is when the device's timeline starts (sample periods count from it); ``period_s``
    is the sampling period of the simulated driver (seconds)."""

    def __init__(self, t0_s: float, period_s: float = ACTIVITY_PERIOD_S) -> None:
        if not period_s > 0:
            raise ValueError(f"the activity sampling period must be > 0 seconds, got {period_s!r}")
        self.t0_s, self.period_s = t0_s, period_s
        self._procs: dict[int, _Timelines] = {}

    def record(self, t_s: float, idle_w: float, watts: float, loads: dict[int, float]) -> None:
        """From ``t_s`` on the device draws ``watts`` with the processes ``loads`` (pid -> ratio,
        the processes counted; others draw nothing): split its active part among them."""
        total = sum(loads.values())
        active_w = max(0.0, watts - idle_w)
        for pid in loads:
            if pid not in self._procs:
                self._procs[pid] = _Timelines(RecordedPower(t_s, 0.0), RecordedPower(t_s, 0.0))
        for pid, lines in list(self._procs.items()):
            load = loads.get(pid, 0.0)
            share = load / total if total > 0 else 0.0
            lines.utilization.set(t_s, share * min(1.0, total))
            lines.active_w.set(t_s, active_w * share)
            if pid not in loads and t_s - lines.active_w.last_change_s > RETENTION_S:
                del self._procs[pid]  # gone for longer than the history kept

    def active_energy_j(self, pid: int, t0_s: float, t1_s: float) -> float:
        """Joules of the device's active energy that process ``pid`` drew in ``[t0_s, t1_s]``
        (0.0 for a process never counted on this device)."""
        lines = self._procs.get(pid)
        if lines is None:
            return 0.0
        return lines.active_w.energy_at(t1_s) - lines.active_w.energy_at(t0_s)

    def mean_utilization(self, pid: int, t0_s: float, t1_s: float) -> float:
        """Process ``pid``'s mean effective SM utilization (ratio) over ``[t0_s, t1_s]``."""
        lines = self._procs.get(pid)
        if lines is None or t1_s <= t0_s:
            return 0.0
        busy_s = lines.utilization.energy_at(t1_s) - lines.utilization.energy_at(t0_s)
        return busy_s / (t1_s - t0_s)

    def samples_since(self, last_seen_us: int, now_s: float) -> list[ProcessUtilizationSample]:
        """The samples taken after ``last_seen_us`` (microseconds) up to ``now_s``, at most
        :data:`SAMPLE_BUFFER` periods back: one per period and process with non-zero
        utilization in it (NVML lists no idle process), oldest first."""
        k_now = math.floor((now_s - self.t0_s) / self.period_s)
        while k_now > 0 and self._boundary(k_now) > now_s:
            k_now -= 1
        out = []
        for k in range(max(1, k_now - SAMPLE_BUFFER + 1), k_now + 1):
            end = self._boundary(k)
            stamp = round(end * 1e6)
            if stamp <= last_seen_us:
                continue
            start = self._boundary(k - 1)
            for pid in sorted(self._procs):
                ratio = self.mean_utilization(pid, start, end)
                if ratio > 0:
                    percent = min(100, round(100 * ratio))
                    out.append(ProcessUtilizationSample(pid, stamp, percent, percent // 2))
        return out

    def _boundary(self, k: int) -> float:
        return self.t0_s + k * self.period_s


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class _ActivityDevice(Protocol):
    """What the mixin needs of a simulated device."""

    shares: ProcessShares | None
    activity_supported: bool
    info_call: bool


class SimulatedActivityCalls:
    """The per-process part of ``SimulatedNVML``'s ``pynvml`` surface (a mixin, as
    :class:`profiler.sensors.simulated_mig.SimulatedMigCalls` is): the utilization samples, the
    switches that turn them off, and each process's exact share of the active energy."""

    _lock: threading.RLock
    _devices: Sequence[_ActivityDevice]
    _fixed_load: dict[int, float]

    def _device(self, handle: object) -> _ActivityDevice: ...  # pragma: no cover - SimulatedNVML's

    def _device_now(
        self, handle: object
    ) -> tuple[_ActivityDevice, float]: ...  # pragma: no cover - SimulatedNVML's

    def _checked(
        self, index: int, t0_s: float, t1_s: float
    ) -> _ActivityDevice: ...  # pragma: no cover - SimulatedNVML's

    def nvmlDeviceGetProcessUtilization(
        self, handle: object, lastSeenTimeStamp: int
    ) -> list[ProcessUtilizationSample]:
        """Per-process utilization samples taken after ``lastSeenTimeStamp`` (microseconds of
        the simulator's clock), as pynvml returns them: one per sample period
        (``activity_period_s``) and process with non-zero utilization, the last ten periods at
        most. NVMLError_NotFound
        when there is none; NVMLError_NotSupported on a scripted device or when switched off
        (:meth:`set_process_utilization_supported`)."""
        return self._utilization_samples(handle, lastSeenTimeStamp)

    def _utilization_samples(self, handle: object, since_us: int) -> list[ProcessUtilizationSample]:
        with self._lock:
            dev, now = self._device_now(handle)
            if dev.shares is None or not dev.activity_supported:
                raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
            samples = dev.shares.samples_since(int(since_us), now)
            if not samples:
                raise _error(pynvml.NVML_ERROR_NOT_FOUND)
            return samples

    def nvmlDeviceGetProcessesUtilizationInfo(
        self, handle: object, timeStamp: int
    ) -> list[ProcessUtilizationInfo]:
        """The newer drivers' call (nvidia-ml-py 12.550+): the same samples as
        :meth:`nvmlDeviceGetProcessUtilization`, as pynvml returns them
        (``c_nvmlProcessUtilizationInfo_v1_t`` entries), the same errors; NVMLError_FunctionNotFound
        when switched off (:meth:`set_processes_utilization_info_supported`: an older driver)."""
        with self._lock:
            if not self._device(handle).info_call:
                raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            samples = self._utilization_samples(handle, timeStamp)
            return [ProcessUtilizationInfo.of(s) for s in samples]

    def set_process_load(self, pid: int, load: float | None) -> None:
        """Fix process ``pid``'s load (ratio >= 0) on every device it is attached to, in place of
        its CPU activity, from the next recompute on; None goes back to its CPU activity. The
        process must still run to count (as any attached process)."""
        with self._lock:
            if load is None:
                self._fixed_load.pop(pid, None)
            elif not (math.isfinite(load) and load >= 0):
                raise ValueError(f"load must be a ratio >= 0, got {load!r}")
            else:
                self._fixed_load[pid] = float(load)

    def set_process_utilization_supported(self, index: int, supported: bool) -> None:
        """False: ``nvmlDeviceGetProcessUtilization`` on device ``index`` raises
        NVMLError_NotSupported (a GPU or driver without per-process utilization)."""
        with self._lock:
            self._devices[index].activity_supported = supported

    def set_processes_utilization_info_supported(self, index: int, supported: bool) -> None:
        """False: ``nvmlDeviceGetProcessesUtilizationInfo`` on device ``index`` raises
        NVMLError_FunctionNotFound (a driver older than the call)."""
        with self._lock:
            self._devices[index].info_call = supported

    def exact_process_energy_j(
        self, index: int, pid: int, t0_s: float, t1_s: float
    ) -> float | None:
        """Ground truth: process ``pid``'s share (joules) of device ``index``'s active energy
        (above idle) over ``[t0_s, t1_s]``: the processes' shares plus
        :meth:`exact_idle_energy_j` equal :meth:`exact_energy_j`. 0.0 for a process that drew
        nothing there (never attached, or counted inside another attached process's tree, whose
        pid carries it); None on a scripted device (its per-process part is unknown)."""
        with self._lock:
            dev = self._checked(index, t0_s, t1_s)
            if dev.shares is None:
                return None
            return dev.shares.active_energy_j(pid, t0_s, t1_s)
