"""GPU samples from AMD Instinct GPUs through ``amdsmi`` (ROCm 6.x Python binding), or from the
simulated AMD GPU (:class:`profiler.sensors.simulated_amd.SimulatedAmdSmi`) through the very same
calls.

Energy: ``amdsmi_get_energy_count`` gives an accumulator in ticks of ``counter_resolution``
microjoules (older bindings give the ticks under ``power``); the energy between two readings is
the tick difference times the resolution. Power is the first number among
``current_socket_power`` (MI300), ``average_socket_power`` (MI200) and ``socket_power`` (watts;
``"N/A"`` is unknown, never 0). Each sample says where its energy came from
(``energy_source``), and the quirks of the counter are handled per device:

- **Frozen counter** (ROCm amdsmi issues 22, 38): over each window of at least
  :data:`SANITY_WINDOW_S` seconds in which integrating power gives at least
  :data:`SANITY_MIN_J` joules, the counter must have moved at least :data:`SANITY_RATIO` of that
  (the check Zeus makes at start, made here on every window, so a counter that freezes later is
  caught too). A counter that fails it is dropped for good on that device: the window is
  re-counted from power, and the device's energy comes from power integration from then on
  (``energy_source = "power_integration"``, counted once as ``gpu<i>:CounterFrozen``).
- **Counter going backwards** (issue 115, a wrap or reset): re-based; that interval is estimated
  from power (``gpu<i>:CounterReset``).
- **Energy not supported** (VM guests: NOT_SUPPORTED at start): power integration, labelled.
- **A package's second die reading 0** (MI250X: amdsmi lists each GCD; the package's power and
  energy are reported on the first one, the second's counter reads 0 and its power ``"N/A"``): a
  device whose counter reads 0 and that reports no power, listed right after a measured device,
  is that device's second die. The package's energy and power are counted once and split
  equally between its dies (each die's sample carries its share, its power limit too), so a run
  on one GCD gets half its package, a run on both the whole, never twice and never zero.

Per-process activity: none on AMD (``activity_source=None``: a device's energy is split equally
between its processes). Processes come from ``amdsmi_get_gpu_process_list`` at most once a second
per device (amdsmi asks for calls at least 1 s apart), which leaves out the daemon's own pid.

amdsmi errors (``AmdSmiLibraryException``) are mapped once, here: NOT_SUPPORTED is ``None``; a
device that fails a core read (energy or, without a counter, power) is left out of that sample
and counted in ``errors`` as ``"gpu<index>:<AMDSMI status name>"``. A whole pass runs on a
reader thread and is waited for at most ``call_timeout_s`` per device (a hung driver call);
``sample()`` never raises AmdSmiLibraryException.

``amdsmi`` is imported only when a real amdsmi sensor is built; a broken install (``OSError`` or
``KeyError``: libamd_smi.so missing; ``AttributeError``: amdsmi and ROCm versions differ) is a
one-line SensorUnavailable naming the cause.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any

from profiler.sensors.base import GpuProcess, GpuSample, SensorUnavailable, power_step_j
from profiler.sensors.nvml import (
    CALL_TIMEOUT_S,
    COUNTER,
    NO_ENERGY,
    POWER_INTEGRATION,
    GpuDevice,
)
from profiler.sensors.reader import CallReader, boot_id

log = logging.getLogger(__name__)

VENDOR = "amd"
SANITY_WINDOW_S = 1.0
"""Seconds of readings over which the energy counter is checked against power x time."""
SANITY_MIN_J = 1.0
"""Joules of integrated power a window needs before the counter is judged on it."""
SANITY_RATIO = 0.25
"""The counter must move at least this share of the integrated power over a window."""
PROCESS_PERIOD_S = 1.0
"""Seconds between two process lists of one device (amdsmi: at least 1 s apart)."""
POWER_FIELDS = ("current_socket_power", "average_socket_power", "socket_power")
MB = 1024**2
STATUS_NOT_SUPPORTED = 2
STATUS_NAMES = {
    1: "INVAL", 2: "NOT_SUPPORTED", 3: "NOT_YET_IMPLEMENTED", 6: "DRM_ERROR", 7: "API_FAILED",
    8: "TIMEOUT", 9: "RETRY", 10: "NO_PERM", 12: "IO", 14: "FILE_ERROR", 18: "INIT_ERROR",
    30: "BUSY", 31: "NOT_FOUND", 32: "NOT_INIT", 34: "DRIVER_NOT_LOADED", 40: "NO_DATA",
    51: "NO_DRV", 54: "AMDGPU_RESTART_ERR",
}  # fmt: skip
"""amdsmi status codes (``amdsmi_wrapper.AMDSMI_STATUS_*``) by name, for ``errors`` keys."""


def amdsmi_error_name(error: BaseException) -> str:
    """An ``AmdSmiLibraryException``'s status name (``"NOT_SUPPORTED"``), or ``"AMDSMI<code>"``."""
    get = getattr(error, "get_error_code", None)
    code = get() if callable(get) else None
    return STATUS_NAMES.get(code, f"AMDSMI{code}") if isinstance(code, int) else "AMDSMIError"


@dataclass
class _Window:
    """The counter's joules and the integrated power's joules since ``t0_s`` (sanity check)."""

    t0_s: float
    counter_j: float = 0.0
    power_j: float = 0.0


@dataclass
class _AmdDevice:
    """A device and its running energy figure (joules since the sensor started)."""

    info: GpuDevice
    handle: Any
    mode: str  # COUNTER, POWER_INTEGRATION or NO_ENERGY
    window: _Window
    energy_j: float = 0.0
    last_counter_uj: float | None = None
    last_power_w: float | None = None
    last_t_s: float | None = None
    note: str = ""  # why the device is not on its counter, for describe()
    dies: list[int] = field(default_factory=list)  # indexes of the package's other dies
    die_of: int | None = None  # set on a second die: the index of the die reporting for it
    procs: tuple[GpuProcess, ...] = ()
    procs_read_s: float | None = None


class _SkipDevice(Exception):
    """Internal: the device cannot be read in this sample (already counted in ``errors``)."""


class AmdSmiSensor:
    """Samples every GPU that ``lib`` (the ``amdsmi`` module or a ``SimulatedAmdSmi``) lists.

    ``clock`` gives monotonic seconds. Raises SensorUnavailable when amdsmi does not load or
    initialise, or cannot list its processors.
    """

    vendor = VENDOR

    def __init__(
        self,
        lib: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self._lib = import_amdsmi() if lib is None else lib
        self._clock = clock
        self.call_timeout_s = call_timeout_s
        self.source = "simulated" if getattr(self._lib, "SIMULATED", False) else "amdsmi"
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = False
        self._reader: CallReader | None = None
        self._stuck: Future[Any] | None = None
        self._epoch_of = getattr(self._lib, "simulated_counter_epoch", None)
        self._boot_id = None if self._epoch_of is not None else boot_id()
        error = self._lib.AmdSmiLibraryException
        try:
            self._lib.amdsmi_init(self._lib.AmdSmiInitFlags.INIT_AMD_GPUS)
        except error as e:
            raise SensorUnavailable(
                f"amdsmi did not initialise ({amdsmi_error_name(e)}): no AMD GPU driver (amdgpu) "
                "found"
            ) from e
        try:
            handles = list(self._lib.amdsmi_get_processor_handles())
        except error as e:
            self.close()
            raise SensorUnavailable(
                f"amdsmi initialised but could not list GPUs ({amdsmi_error_name(e)})"
            ) from e
        opened = (self._open_device(i, h) for i, h in enumerate(handles))
        self._devices = [d for d in opened if d is not None]
        self._pair_dies()

    @property
    def simulated(self) -> bool:
        return self.source == "simulated"

    @property
    def devices(self) -> list[GpuDevice]:
        """The GPUs this sensor reads, as enumerated at start."""
        return [d.info for d in self._devices]

    def describe(self) -> str:
        """One line for logs and status, e.g. ``amdsmi: 8 x AMD Instinct MI300X; energy from
        counter``."""
        label = "SIMULATED AMD GPU (a power model, not hardware)" if self.simulated else "amdsmi"
        if not self._devices:
            return f"{label}: no GPU"
        names = Counter(d.info.name for d in self._devices)
        models = ", ".join(f"{n} x {name}" for name, n in names.items())
        sources = ", ".join(sorted({self._source_of(d) for d in self._devices}))
        text = f"{label}: {models}; energy from {sources}"
        notes = [f"gpu {d.info.index}: {d.note}" for d in self._devices if d.note]
        if notes:
            text += "; " + "; ".join(notes)
        return text + "; per-process activity: not on AMD (equal split)"

    def _source_of(self, dev: _AmdDevice) -> str:
        return self._devices[dev.die_of].mode if dev.die_of is not None else dev.mode

    # ---- start

    def _open_device(self, index: int, handle: Any) -> _AmdDevice | None:
        """Enumerate one device and take its energy baseline; None (logged, counted) if it fails."""
        lib = self._lib
        try:
            uuid = str(lib.amdsmi_get_gpu_device_uuid(handle))
            name = str(lib.amdsmi_get_gpu_asic_info(handle)["market_name"])
        except lib.AmdSmiLibraryException as e:
            self.errors[f"gpu{index}:{amdsmi_error_name(e)}"] += 1
            log.warning("GPU %d left out: amdsmi could not open it (%s)", index, e)
            return None
        cap = self._optional(lib.amdsmi_get_power_cap_info, handle)
        vram = self._optional(lib.amdsmi_get_gpu_vram_usage, handle)
        counter_uj = _counter_uj(self._optional(lib.amdsmi_get_energy_count, handle))
        power_w = _power_w(self._optional(lib.amdsmi_get_power_info, handle))
        idle_of = getattr(lib, "simulated_idle_power_w", None)
        t_s = self._clock()
        limit_uw = _number(cap, "power_cap")
        total_mb = _number(vram, "vram_total")
        mode = COUNTER if counter_uj is not None else POWER_INTEGRATION
        if counter_uj is None and power_w is None:
            mode = NO_ENERGY
        info = GpuDevice(
            index=index,
            uuid=uuid,
            name=name,
            power_limit_w=None if limit_uw is None else limit_uw / 1e6,
            memory_total_bytes=None if total_mb is None else int(total_mb * MB),
            energy_source=mode,
            idle_power_w=None if idle_of is None else self._optional(idle_of, handle),
        )
        dev = _AmdDevice(
            info, handle, mode, _Window(t_s), last_counter_uj=counter_uj, last_power_w=power_w,
            last_t_s=t_s,
        )  # fmt: skip
        if counter_uj is None and power_w is not None:
            dev.note = "energy counter not supported (a VM guest?): power integration"
        return dev

    def _pair_dies(self) -> None:
        """Find second dies: a counter reading 0 with no power figure, listed right after a
        measured device of the same model (see the module docstring). Each gets its package's
        share from the die before it, and its own reads of energy and power stop."""
        primary: _AmdDevice | None = None
        for dev in self._devices:
            zero = dev.last_counter_uj == 0 and dev.last_power_w is None
            if zero and primary is not None and primary.info.name == dev.info.name:
                dev.die_of = self._devices.index(primary)
                primary.dies.append(self._devices.index(dev))
                dev.note = f"second die of gpu {primary.info.index}: its package's share"
                continue
            primary = dev if dev.mode != NO_ENERGY else None

    def _optional(self, fn: Callable[[Any], Any], handle: Any) -> Any:
        """A read at start: None when it fails for any amdsmi reason."""
        try:
            return fn(handle)
        except self._lib.AmdSmiLibraryException:
            return None

    # ---- sampling

    def sample(self) -> list[GpuSample]:
        """Read every device once; a device that cannot be read is left out (see ``errors``).

        The pass runs on a reader thread and is waited for at most ``call_timeout_s`` per
        device; a pass that takes longer (a hung driver call) is counted once as
        ``gpu:Timeout`` and abandoned, and no sample is taken until its call returns (the
        energy counters then cover the gap)."""
        with self._lock:
            if self._closed:
                return []
            if self._stuck is not None:
                if not self._stuck.done():
                    return []
                self._stuck = None
                log.warning("amdsmi answers again after a hung call")
            if self._reader is None:
                self._reader = CallReader("amdsmi-reader")
            future = self._reader.submit(self._read_pass)
            try:
                return list(future.result(timeout=self.call_timeout_s * len(self._devices)))
            except FutureTimeout:
                self.errors["gpu:Timeout"] += 1
                log.warning("an amdsmi call took over %g s per GPU", self.call_timeout_s)
                self._stuck = future
                self._reader.retire()
                self._reader = None
                return []

    def _read_pass(self) -> list[GpuSample]:
        """Read every device (on the reader thread), then give each second die its package
        share from the die that reports for it."""
        read: dict[int, GpuSample] = {}
        for pos, dev in enumerate(self._devices):
            try:
                read[pos] = self._sample_device(dev)
            except _SkipDevice:
                pass
        out = []
        for pos, dev in enumerate(self._devices):
            if pos not in read:
                continue
            if dev.die_of is not None:
                reporting = read.get(dev.die_of)
                if reporting is None:  # its package's reading is missing: leave it out too
                    continue
                n = 1 + len(self._devices[dev.die_of].dies)
                out.append(_share(reporting, read[pos], n, f"die{dev.die_of}+{pos}"))
            elif dev.dies:
                out.append(_share(read[pos], read[pos], 1 + len(dev.dies), f"die{pos}"))
            else:
                out.append(read[pos])
        return out

    def _sample_device(self, dev: _AmdDevice) -> GpuSample:
        lib = self._lib
        counter_uj = power_w = None
        if dev.die_of is None:  # a second die's energy and power come from its package
            if dev.mode == COUNTER:
                counter_uj = _counter_uj(self._read(dev, lib.amdsmi_get_energy_count, core=True))
            power = self._read(dev, lib.amdsmi_get_power_info, core=dev.mode != COUNTER)
            power_w = _power_w(power)
        t_s = self._clock()
        energy_j, source = self._advance_energy(dev, counter_uj, power_w, t_s)
        counter_j = counter_id = None
        if source == COUNTER and counter_uj is not None:
            counter_j, counter_id = counter_uj / 1e6, self._counter_id(dev)
        activity = self._read(dev, lib.amdsmi_get_gpu_activity)
        vram = self._read(dev, lib.amdsmi_get_gpu_vram_usage)
        used_mb, total_mb = _number(vram, "vram_used"), _number(vram, "vram_total")
        gfx = _number(activity, "gfx_activity")
        info = dev.info
        return GpuSample(
            index=info.index,
            uuid=info.uuid,
            name=info.name,
            t_s=t_s,
            energy_j=energy_j,
            energy_source=source,
            power_w=power_w,
            power_limit_w=info.power_limit_w,
            memory_used_bytes=None if used_mb is None else int(used_mb * MB),
            memory_total_bytes=info.memory_total_bytes if total_mb is None else int(total_mb * MB),
            utilization_ratio=None if gfx is None else gfx / 100,
            processes=self._processes(dev, t_s),
            simulated=self.simulated,
            counter_j=counter_j,
            counter_id=counter_id,
            process_activity=None,
            activity_source=None,
            idle_power_w=info.idle_power_w,
            vendor=VENDOR,
        )

    def _processes(self, dev: _AmdDevice, t_s: float) -> tuple[GpuProcess, ...]:
        """The device's processes, listed at most every :data:`PROCESS_PERIOD_S` seconds."""
        if dev.procs_read_s is not None and t_s - dev.procs_read_s < PROCESS_PERIOD_S:
            return dev.procs
        listed = self._read(dev, self._lib.amdsmi_get_gpu_process_list)
        dev.procs_read_s = t_s
        if listed is not None:
            procs = []
            for p in listed:
                pid = _int_or_none(p.get("pid")) if isinstance(p, dict) else None
                if pid is None or pid <= 0:  # no usable pid (some amdsmi versions): skipped
                    key = f"gpu{dev.info.index}:process_without_pid"
                    if key not in self.errors:  # counted and logged once per device
                        self.errors[key] += 1
                        log.warning("GPU %d: amdsmi listed a process with no usable pid (%r); "
                                    "such entries are skipped", dev.info.index, p)  # fmt: skip
                    continue
                procs.append(GpuProcess(pid, _int_or_none(p.get("mem"))))
            dev.procs = tuple(procs)
        return dev.procs

    def _counter_id(self, dev: _AmdDevice) -> str | None:
        """The epoch of the device's counter: the simulator's, or ``<uuid>@boot-<boot id>``."""
        if self._epoch_of is not None:
            epoch = self._read(dev, self._epoch_of)
            return None if epoch is None else f"{dev.info.uuid}@{epoch}"
        return None if self._boot_id is None else f"{dev.info.uuid}@boot-{self._boot_id}"

    def _read(self, dev: _AmdDevice, fn: Callable[[Any], Any], *, core: bool = False) -> Any:
        """One amdsmi read on ``dev``: NOT_SUPPORTED -> None; other errors are counted, and
        skip the device when ``core``, else give None."""
        try:
            return fn(dev.handle)
        except self._lib.AmdSmiLibraryException as e:
            name = amdsmi_error_name(e)
            if name == "NOT_SUPPORTED":
                return None
            key = f"gpu{dev.info.index}:{name}"
            self.errors[key] += 1
            if core:
                raise _SkipDevice(key) from e
            return None

    def _advance_energy(
        self, dev: _AmdDevice, counter_uj: float | None, power_w: float | None, t_s: float
    ) -> tuple[float | None, str]:
        """Add this interval's joules to ``dev.energy_j``; return (cumulative joules, source)."""
        power_j = power_step_j(dev.last_power_w, dev.last_t_s, power_w, t_s)
        index = dev.info.index
        if dev.die_of is not None:
            return None, NO_ENERGY  # its package's share is given in _read_pass
        if dev.mode == COUNTER and counter_uj is None:  # stopped being supported
            dev.mode = POWER_INTEGRATION if power_w is not None else NO_ENERGY
            dev.note = "energy counter no longer supported: power integration"
            self.errors[f"gpu{index}:CounterNotSupported"] += 1
        if dev.mode == COUNTER:
            assert counter_uj is not None and dev.last_counter_uj is not None
            if counter_uj >= dev.last_counter_uj:
                counter_j = (counter_uj - dev.last_counter_uj) / 1e6
            else:  # went backwards (a wrap or reset): re-base, this interval from power
                self.errors[f"gpu{index}:CounterReset"] += 1
                counter_j = power_j
            dev.energy_j += counter_j
            dev.last_counter_uj = counter_uj
            self._check_counter(dev, counter_j, power_j, t_s)
        elif dev.mode == POWER_INTEGRATION:
            dev.energy_j += power_j
        if power_w is not None:
            dev.last_power_w, dev.last_t_s = power_w, t_s
        if dev.mode == NO_ENERGY:
            return None, NO_ENERGY
        return dev.energy_j, dev.mode

    def _check_counter(self, dev: _AmdDevice, counter_j: float, power_j: float, t_s: float) -> None:
        """The frozen-counter check (module docstring): once a window is long enough, compare
        what the counter and power x time gave over it; a counter that fell short is dropped
        and the window re-counted from power."""
        w = dev.window
        w.counter_j += counter_j
        w.power_j += power_j
        if t_s - w.t0_s < SANITY_WINDOW_S:
            return
        if w.power_j >= SANITY_MIN_J and w.counter_j < SANITY_RATIO * w.power_j:
            dev.mode = POWER_INTEGRATION
            dev.energy_j += w.power_j - w.counter_j
            dev.note = "energy counter frozen: power integration"
            self.errors[f"gpu{dev.info.index}:CounterFrozen"] += 1
            log.warning(
                "GPU %d: the energy counter gave %.3f J over %.2f s while power x time gave "
                "%.3f J; using power integration for it",
                dev.info.index,
                w.counter_j,
                t_s - w.t0_s,
                w.power_j,
            )
        dev.window = _Window(t_s)

    # ---- processes and shutdown

    def attach_process(self, pid: int, devices: Sequence[int | str]) -> None:
        """Tell a simulated GPU that ``pid`` runs on ``devices`` (indexes, or uuids); no-op on
        amdsmi, which lists processes itself."""
        attach = getattr(self._lib, "attach_process", None)
        if not (self.simulated and attach is not None):
            return
        by_uuid = {d.info.uuid: d.info.index for d in self._devices}
        for device in devices:
            index = by_uuid.get(device) if isinstance(device, str) else device
            if index is not None:
                attach(pid, index)

    def detach_process(self, pid: int) -> None:
        """Undo ``attach_process`` on a simulated GPU; no-op on amdsmi."""
        detach = getattr(self._lib, "detach_process", None)
        if self.simulated and detach is not None:
            detach(pid)

    def close(self) -> None:
        """Shut amdsmi down (once; later calls do nothing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._lib.amdsmi_shut_down()
        except self._lib.AmdSmiLibraryException as e:
            log.debug("amdsmi_shut_down failed: %s", e)


def _share(reporting: GpuSample, own: GpuSample, n: int, part: str) -> GpuSample:
    """``own``'s sample with its package's energy and power (``reporting``'s) divided by the
    package's ``n`` dies; the counter's epoch names the share, so shares are compared only with
    the same share."""

    def part_of(x: float | None) -> float | None:
        return None if x is None else x / n

    return replace(
        own,
        energy_j=part_of(reporting.energy_j),
        energy_source=reporting.energy_source,
        power_w=part_of(reporting.power_w),
        power_limit_w=part_of(reporting.power_limit_w),
        counter_j=part_of(reporting.counter_j),
        counter_id=None if reporting.counter_id is None else f"{reporting.counter_id}/{part}",
    )


def _number(info: Any, key: str) -> float | None:
    """``info[key]`` when it is a number; None for ``"N/A"``, a missing key or no ``info``."""
    if not isinstance(info, dict):
        return None
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _power_w(info: Any) -> float | None:
    """Watts from ``amdsmi_get_power_info``: the first number among :data:`POWER_FIELDS`."""
    for key in POWER_FIELDS:
        value = _number(info, key)
        if value is not None:
            return value
    return None


def _counter_uj(info: Any) -> float | None:
    """Microjoules from ``amdsmi_get_energy_count``: ticks x ``counter_resolution``."""
    ticks = _number(info, "energy_accumulator")
    if ticks is None:
        ticks = _number(info, "power")  # older bindings
    resolution = _number(info, "counter_resolution")
    if ticks is None or resolution is None or resolution <= 0:
        return None
    return ticks * resolution


def import_amdsmi() -> Any:
    """The ``amdsmi`` module, or SensorUnavailable with one line naming why it does not load."""
    quiet = io.StringIO()  # amdsmi prints its own lines when libamd_smi.so is missing
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            import amdsmi
    except ModuleNotFoundError as e:
        raise SensorUnavailable(
            f"amdsmi did not load (module amdsmi not importable: {e}): install the amdsmi "
            "package of your ROCm version"
        ) from e
    except (OSError, KeyError) as e:
        raise SensorUnavailable(
            f"amdsmi did not load (libamd_smi.so not found: {type(e).__name__} {e}): install "
            "ROCm's amd-smi-lib or put its lib directory on LD_LIBRARY_PATH"
        ) from e
    except (AttributeError, ImportError) as e:
        raise SensorUnavailable(
            f"amdsmi did not load (the amdsmi package does not match the installed ROCm: "
            f"{type(e).__name__} {e}): install the amdsmi package of your ROCm version"
        ) from e
    return amdsmi
