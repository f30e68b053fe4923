"""A simulated AMD Instinct GPU with the ``amdsmi`` Python API, so the real amdsmi sensor code
(:mod:`profiler.sensors.amdsmi`) runs without one.

``SimulatedAmdSmi`` is used exactly like the ``amdsmi`` module as far as the sensor uses it: the
same function names and argument shapes, the same units (energy as accumulator ticks times
``counter_resolution`` microjoules, power in watts, the power cap in microwatts, memory in MB,
activity in percent) and the same ways of saying "unknown" (the string ``"N/A"``) and of failing
(:class:`AmdSmiLibraryException` with ``get_error_code()``).

The physics is the simulated NVIDIA GPU's, not a copy: each AMD package is one device of an
internal :class:`~profiler.sensors.simulated.SimulatedNVML` built on the package's power envelope
(:class:`~profiler.sensors.simulated_power.GpuModel`), so the load mode (attached processes' CPU
activity as the load, seeded noise), the scripted traces and the exact integrals are the ones the
NVML side is tested with.

Models (``simulated-amd[:MODEL[:COUNT]]``, COUNT counting packages):

- **MI300X** (default): one amdsmi processor per OAM package, 750 W, 192 GB. Power under
  ``current_socket_power`` (``average_socket_power`` is ``"N/A"``, as on MI300 parts).
- **MI250X**: two amdsmi processors per OAM package, one per GCD (as amdsmi lists them), 560 W
  and 128 GB per package (64 GB per GCD). Power under ``average_socket_power``
  (``current_socket_power`` is ``"N/A"``, as on MI200 parts). As on the hardware, the package's
  power and energy are reported on its first GCD: the second GCD's energy counter reads 0 and its
  power fields ``"N/A"`` (switchable: :meth:`SimulatedAmdSmi.set_second_die_zero`; off, each
  GCD reports half its package). The ground truth of a GCD (``exact_energy_j``) is half its
  package; ``exact_package_energy_j`` is the package.

The idle watts are this simulator's assumptions (no measurement behind them), as the NVIDIA
models' are.

Quirks switchable per processor (each seen on real parts, see the amdsmi section of the notes):
a frozen energy counter (:meth:`set_counter_frozen`), a counter going backwards
(:meth:`reset_energy_counter`), fields reading ``"N/A"`` (:meth:`set_not_available`), energy not
supported (a VM guest: :meth:`set_energy_supported`, ``AmdSmiLibraryException`` NOT_SUPPORTED).

Everything this module produces is simulated: callers label it so (``SIMULATED = True``).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from profiler.sensors.simulated import BASE_MEMORY_BYTES, SimulatedHandle, SimulatedNVML
from profiler.sensors.simulated_activity import ACTIVITY_PERIOD_S
from profiler.sensors.simulated_power import (
    GIB,
    GpuModel,
    checked_model,
    named_in,
    parse_model_count,
    per_device_traces,
)

MB = 1024**2
"""amdsmi's MB (VRAM figures are in units of 2**20 bytes)."""
COUNTER_RESOLUTION_UJ = 15.259
"""Microjoules per energy-accumulator tick, as amdsmi reports it on MI200/MI300 parts."""
NA = "N/A"
DEFAULT_AMD_MODEL = "MI300X"

# amdsmi status codes (amdsmi_wrapper.AMDSMI_STATUS_*)
STATUS_INVAL = 1
STATUS_NOT_SUPPORTED = 2
STATUS_NOT_INIT = 32


@dataclass(frozen=True)
class AmdModel:
    """An AMD Instinct model: its package (power envelope in watts, memory in bytes), how many
    amdsmi processors (dies) each package shows, and which power field carries the reading."""

    name: str
    market_name: str
    package: GpuModel
    dies: int
    power_field: str


AMD_MODELS: dict[str, AmdModel] = {
    m.name: m
    for m in (
        AmdModel(
            "MI300X",
            "AMD Instinct MI300X",
            GpuModel("MI300X", power_limit_w=750.0, idle_w=140.0, memory_bytes=192 * GIB),
            dies=1,
            power_field="current_socket_power",
        ),
        AmdModel(
            "MI250X",
            "AMD Instinct MI250X",
            GpuModel("MI250X", power_limit_w=560.0, idle_w=90.0, memory_bytes=128 * GIB),
            dies=2,
            power_field="average_socket_power",
        ),
    )
}
POWER_FIELDS = ("current_socket_power", "average_socket_power", "socket_power")


class AmdSmiInitFlags(IntEnum):
    """``amdsmi.AmdSmiInitFlags`` (the values of amdsmi_wrapper)."""

    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2


class AmdSmiLibraryException(Exception):
    """``amdsmi.AmdSmiLibraryException``: a failed call, ``get_error_code()`` its status."""

    def __init__(self, err_code: int) -> None:
        super().__init__(err_code)
        self.err_code = abs(err_code)

    def get_error_code(self) -> int:
        return self.err_code


def parse_simulated_amd_spec(spec: str) -> tuple[str, int]:
    """``"simulated-amd[:MODEL[:COUNT]]"`` -> ``(model name, package count)``; ValueError, naming
    the spec and the allowed models, if invalid. The model is matched case-insensitively; empty
    means MI300X."""
    return parse_model_count(
        spec, "simulated-amd", AMD_MODELS, DEFAULT_AMD_MODEL, what="AMD GPU",
        count_note=" (packages)",
    )  # fmt: skip


def amd_model_named(text: str) -> str | None:
    return named_in(AMD_MODELS, text)


@dataclass(frozen=True)
class AmdHandle:
    """An opaque processor handle, like amdsmi's ``processor_handle``."""

    index: int


@dataclass
class _Processor:
    """One amdsmi processor (a die) and its switchable quirks."""

    index: int
    package: int
    die: int
    uuid: str
    second_die_zero: bool
    pids: set[int] = field(default_factory=set)
    counter_base_j: float = 0.0  # package-share energy at the last counter reset
    counter_offset_ticks: int = 0
    counter_resets: int = 0
    frozen_ticks: int | None = None  # set: the counter reads this, whatever the energy
    energy_supported: bool = True
    not_available: frozenset[str] = frozenset()
    bad_entries: tuple[Any, ...] = ()  # process-list entries with no usable pid (a quirk)


class SimulatedAmdSmi:
    """A stand-in for the ``amdsmi`` module driving ``count`` packages of ``model``.

    ``clock`` gives monotonic seconds; ``traces`` (one per package, or one for all; None: load
    mode), ``repeat``, ``noise``, ``seed``, ``load_period_s`` and ``activity_period_s`` are the
    simulated NVIDIA GPU's (see :class:`~profiler.sensors.simulated.SimulatedNVML`).
    ``energy_offset_ticks`` is added to every counter, as a real one counts from driver load.
    Thread-safe.
    """

    SIMULATED = True
    VENDOR = "amd"
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiInitFlags = AmdSmiInitFlags

    def __init__(
        self,
        model: str = DEFAULT_AMD_MODEL,
        count: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        traces: Sequence[Any] | None = None,
        repeat: bool = False,
        noise: float = 0.015,
        seed: int = 0,
        load_period_s: float = 0.05,
        energy_offset_ticks: int = 1_000_000,
        activity_period_s: float = ACTIVITY_PERIOD_S,
    ) -> None:
        name = checked_model(amd_model_named(model), model, list(AMD_MODELS), count, "AMD GPU")
        self.model = AMD_MODELS[name]
        self._clock = clock
        self._lock = threading.RLock()
        self._init_count = 0
        self._hang_s: dict[int, float] = {}  # processor index -> seconds its reads block
        self.physics = SimulatedNVML(
            self.model.package,
            count,
            clock=clock,
            traces=None if traces is None else per_device_traces(traces, count),
            repeat=repeat,
            noise=noise,
            seed=seed,
            load_period_s=load_period_s,
            activity_period_s=activity_period_s,
        )
        self.physics.nvmlInit()
        self.token = uuidlib.uuid4().hex[:12]
        dies = self.model.dies
        self._procs = [
            _Processor(
                index=i,
                package=i // dies,
                die=i % dies,
                uuid=f"5137a7ed-0000-1000-80{dies:02x}-{i:012x}",
                second_die_zero=dies > 1,
                counter_offset_ticks=int(energy_offset_ticks) if i % dies == 0 else 0,
            )
            for i in range(count * dies)
        ]

    # ---- library

    def amdsmi_init(self, flags: int = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
        with self._lock:
            self._init_count += 1

    def amdsmi_shut_down(self) -> None:
        with self._lock:
            if self._init_count == 0:
                raise AmdSmiLibraryException(STATUS_NOT_INIT)
            self._init_count -= 1

    def amdsmi_get_processor_handles(self) -> list[AmdHandle]:
        with self._lock:
            self._check_init()
            return [AmdHandle(p.index) for p in self._procs]

    # ---- identity

    def amdsmi_get_gpu_device_uuid(self, handle: AmdHandle) -> str:
        with self._lock:
            return self._proc(handle).uuid

    def amdsmi_get_gpu_device_bdf(self, handle: AmdHandle) -> str:
        with self._lock:
            return f"0000:{0x0C + 0x10 * self._proc(handle).index:02x}:00.0"

    def amdsmi_get_gpu_asic_info(self, handle: AmdHandle) -> dict[str, Any]:
        with self._lock:
            self._proc(handle)
            return {
                "market_name": self.model.market_name,
                "vendor_id": "0x1002",
                "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
                "device_id": "0x74a1" if self.model.name == "MI300X" else "0x740c",
                "rev_id": "0x00",
                "asic_serial": NA,
            }

    # ---- readings (amdsmi units)

    def amdsmi_get_energy_count(self, handle: AmdHandle) -> dict[str, Any]:
        """Ticks since the (simulated) driver loaded: the floor of the exact integral of this
        processor's reported share over ``counter_resolution`` microjoules, plus the offset;
        also under ``power``, as older bindings return it."""
        self._maybe_hang(handle)
        with self._lock:
            p = self._proc(handle)
            if not p.energy_supported:
                raise AmdSmiLibraryException(STATUS_NOT_SUPPORTED)
            if p.frozen_ticks is not None:
                ticks = p.frozen_ticks
            else:
                ticks = self._ticks(p)
            return {
                "power": ticks,
                "energy_accumulator": ticks,
                "counter_resolution": COUNTER_RESOLUTION_UJ,
                "timestamp": int(self._clock() * 1e9),
            }

    def amdsmi_get_power_info(self, handle: AmdHandle) -> dict[str, Any]:
        """Watts (integers, as amdsmi gives them) under the model's power field, ``"N/A"`` in
        the others; every field ``"N/A"`` on a second die that reports nothing."""
        with self._lock:
            p = self._proc(handle)
            watts = self._reported_share(p) * self.physics.exact_power_w(
                p.package, self._physics_now(p)
            )
            info: dict[str, Any] = {name: NA for name in POWER_FIELDS}
            if not self._reports_nothing(p):
                info[self.model.power_field] = round(watts)
            info.update(gfx_voltage=NA, soc_voltage=NA, mem_voltage=NA)
            info["power_limit"] = self._cap_uw()
            return self._masked(p, info)

    def amdsmi_get_power_cap_info(self, handle: AmdHandle) -> dict[str, Any]:
        """``power_cap`` in microwatts: the package's (both GCDs of an MI250X say it)."""
        with self._lock:
            p = self._proc(handle)
            cap = self._cap_uw()
            info = {"power_cap": cap, "default_power_cap": cap, "min_power_cap": 0,
                    "max_power_cap": cap, "dpm_cap": NA}  # fmt: skip
            return self._masked(p, info)

    def amdsmi_get_gpu_activity(self, handle: AmdHandle) -> dict[str, Any]:
        """Percent busy: the package's load (both dies of a package show it)."""
        with self._lock:
            p = self._proc(handle)
            util = self.physics.nvmlDeviceGetUtilizationRates(SimulatedHandle(p.package))
            info = {"gfx_activity": util.gpu, "umc_activity": util.memory, "mm_activity": NA}
            return self._masked(p, info)

    def amdsmi_get_gpu_vram_usage(self, handle: AmdHandle) -> dict[str, Any]:
        """MB: a base plus this processor's processes' memory, capped at its size."""
        with self._lock:
            p = self._proc(handle)
            total = self.model.package.memory_bytes // self.model.dies
            procs = self._living(p)
            used = min(total, BASE_MEMORY_BYTES + sum(m or 0 for _pid, m in procs))
            return self._masked(p, {"vram_total": total // MB, "vram_used": used // MB})

    def amdsmi_get_gpu_process_list(self, handle: AmdHandle) -> list[dict[str, Any]]:
        """This processor's living attached processes, leaving out the caller's own pid (as
        amdsmi does). ``engine_usage`` is not modelled: left out."""
        with self._lock:
            p = self._proc(handle)
            me = os.getpid()
            return [
                {"name": NA, "pid": pid, "mem": mem or 0, "memory_usage": {"vram_mem": mem or 0}}
                for pid, mem in self._living(p)
                if pid != me
            ] + list(p.bad_entries)

    def simulated_counter_epoch(self, handle: AmdHandle) -> str:
        """Not amdsmi: what the processor's counter counts from (changes with a reset)."""
        with self._lock:
            p = self._proc(handle)
            return f"sim-amd-{self.token}.{p.index}.{p.counter_resets}"

    def simulated_idle_power_w(self, handle: AmdHandle) -> float:
        """Not amdsmi: the idle watts of this processor's share of its package."""
        with self._lock:
            return self.model.package.idle_w / self.model.dies

    # ---- simulator controls (not amdsmi)

    def attach_process(self, pid: int, index: int, used_memory_bytes: int | None = None) -> None:
        """Process ``pid`` runs on processor ``index`` (it loads that processor's package)."""
        with self._lock:
            p = self._procs[index]
            p.pids.add(pid)
            self.physics.attach_process(pid, p.package, used_memory_bytes)

    def detach_process(self, pid: int) -> None:
        with self._lock:
            for p in self._procs:
                p.pids.discard(pid)
            self.physics.detach_process(pid)

    def set_process_load(self, pid: int, load: float | None) -> None:
        """As :meth:`SimulatedNVML.set_process_load`."""
        self.physics.set_process_load(pid, load)

    def set_counter_frozen(self, index: int, frozen: bool) -> None:
        """True: processor ``index``'s energy counter stops where it is while power goes on."""
        with self._lock:
            p = self._procs[index]
            p.frozen_ticks = self._ticks(p) if frozen else None

    def reset_energy_counter(self, index: int) -> None:
        """The counter goes backwards: it restarts from 0 ticks (the exact integral goes on)."""
        with self._lock:
            p = self._procs[index]
            p.counter_base_j = self._share_energy_j(p)
            p.counter_offset_ticks = 0
            p.counter_resets += 1

    def set_second_die_zero(self, package: int, zero: bool) -> None:
        """True (the MI250X default): the package's first die reports the package's power and
        energy, the second reports 0 energy and ``"N/A"`` power. False: each die reports half."""
        with self._lock:
            for p in self._procs:
                if p.package == package:
                    p.second_die_zero = zero and self.model.dies > 1

    def set_not_available(self, index: int, fields: Iterable[str]) -> None:
        """These fields of processor ``index``'s readings read ``"N/A"`` (e.g.
        ``current_socket_power``, ``gfx_activity``, ``vram_used``, ``power_cap``)."""
        with self._lock:
            self._procs[index].not_available = frozenset(fields)

    def set_bad_process_entries(self, index: int, entries: Sequence[Any]) -> None:
        """Processor ``index``'s process list also gives these ``entries`` (a quirk: an entry
        with no ``pid``, a pid of ``"N/A"``, or no dict at all)."""
        with self._lock:
            self._procs[index].bad_entries = tuple(entries)

    def set_hang(self, index: int, seconds: float) -> None:
        """A stuck driver: energy reads of processor ``index`` block for ``seconds`` of real
        time (0 ends it) before answering."""
        with self._lock:
            self._hang_s[index] = seconds

    def _maybe_hang(self, handle: AmdHandle) -> None:
        seconds = self._hang_s.get(getattr(handle, "index", -1), 0.0)
        if seconds > 0:
            time.sleep(seconds)

    def set_energy_supported(self, index: int, supported: bool) -> None:
        """False: ``amdsmi_get_energy_count`` raises NOT_SUPPORTED (as in a VM guest)."""
        with self._lock:
            self._procs[index].energy_supported = supported

    # ---- ground truth

    def exact_package_energy_j(self, package: int, t0_s: float, t1_s: float) -> float:
        """Joules drawn by package ``package`` between clock times ``t0_s <= t1_s``."""
        return self.physics.exact_energy_j(package, t0_s, t1_s)

    def exact_energy_j(self, index: int, t0_s: float, t1_s: float) -> float:
        """Joules of processor ``index`` between ``t0_s <= t1_s``: its package's energy divided
        by the package's dies (an MI250X GCD is half its package)."""
        p = self._procs[index]
        return self.exact_package_energy_j(p.package, t0_s, t1_s) / self.model.dies

    def exact_process_energy_j(
        self, index: int, pid: int, t0_s: float, t1_s: float
    ) -> float | None:
        """Process ``pid``'s share of processor ``index``'s active energy (see SimulatedNVML)."""
        p = self._procs[index]
        share = self.physics.exact_process_energy_j(p.package, pid, t0_s, t1_s)
        return None if share is None else share / self.model.dies

    def exact_power_w(self, index: int, t_s: float) -> float:
        """Watts of processor ``index`` (its share of its package) at clock time ``t_s``."""
        p = self._procs[index]
        return self.physics.exact_power_w(p.package, t_s) / self.model.dies

    # ---- internals

    def _check_init(self) -> None:
        if self._init_count == 0:
            raise AmdSmiLibraryException(STATUS_NOT_INIT)

    def _proc(self, handle: AmdHandle) -> _Processor:
        self._check_init()
        if not isinstance(handle, AmdHandle) or not 0 <= handle.index < len(self._procs):
            raise AmdSmiLibraryException(STATUS_INVAL)
        return self._procs[handle.index]

    def _physics_now(self, p: _Processor) -> float:
        """The clock now, with the package's load-mode power brought up to date."""
        self.physics.nvmlDeviceGetPowerUsage(SimulatedHandle(p.package))
        return self._clock()

    def _reports_nothing(self, p: _Processor) -> bool:
        """A second die whose package reports on its first die."""
        return p.second_die_zero and p.die > 0

    def _reported_share(self, p: _Processor) -> float:
        """The part of its package's power and energy processor ``p`` reports (0..1)."""
        if self._reports_nothing(p):
            return 0.0
        return 1.0 if p.second_die_zero else 1.0 / self.model.dies

    def _share_energy_j(self, p: _Processor) -> float:
        package_j = self.physics.simulated_energy_j(SimulatedHandle(p.package))
        return package_j * self._reported_share(p)

    def _ticks(self, p: _Processor) -> int:
        joules = self._share_energy_j(p) - p.counter_base_j
        return math.floor(max(0.0, joules) * 1e6 / COUNTER_RESOLUTION_UJ) + p.counter_offset_ticks

    def _cap_uw(self) -> int:
        return round(self.model.package.power_limit_w * 1e6)

    def _living(self, p: _Processor) -> list[tuple[int, int | None]]:
        """(pid, bytes) of this processor's attached processes that still run."""
        listed = self.physics.nvmlDeviceGetComputeRunningProcesses(SimulatedHandle(p.package))
        return [(q.pid, q.usedGpuMemory) for q in listed if q.pid in p.pids]

    @staticmethod
    def _masked(p: _Processor, info: dict[str, Any]) -> dict[str, Any]:
        for name in p.not_available & info.keys():
            info[name] = NA
        return info
