"""GPU samples from NVML (module ``pynvml`` of the ``nvidia-ml-py`` distribution), or from the
simulated GPU through the very same calls.

Energy: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules, Volta
and newer) is used where the device supports it (probed once per device at start); otherwise
``nvmlDeviceGetPowerUsage`` (milliwatts) is integrated with the trapezoidal rule between
consecutive samples, so sample at 10 Hz or faster. On Ampere (not GA100) and newer parts
``GetPowerUsage`` is a 1 s average, which smooths short peaks in the integrated figure. Each
sample says which source its energy came from. On that polling path power is also read at
50 Hz between samples (``NVML_FI_DEV_POWER_INSTANT`` where the driver has it), on a thread of
its own, and integrated through those readings (:mod:`profiler.sensors.nvml_power`); the
source stays ``"power_integration"`` and :meth:`NvmlSensor.describe` gives the rate.

Each counter-sourced sample also carries the driver's raw counter (``counter_j``) and the
counter's epoch (``counter_id``): ``<uuid>@boot-<boot id>`` on real NVML. The counter counts from
driver load; the driver cannot be reloaded, nor the GPU reset, while a process holds the GPU, and
a reboot changes the boot id; so two readings of one epoch taken while a run's processes lived
throughout measure the energy between them, across a daemon restart too. A counter found lower
than a reading of its epoch (a reload while no process held the GPU) is not comparable.

Per-process activity (``GpuSample.process_activity``): ``nvmlDeviceGetProcessesUtilizationInfo``
(newer drivers), else ``nvmlDeviceGetProcessUtilization``, is read at most once a second per
device, in the same bounded pass as the other calls (see :mod:`profiler.sensors.nvml_activity`);
samples in between carry None. NotFound (no sample newer than the last one seen: no process was
busy in the period) is a reading, ``{}``. A device that answers NotSupported (or an nvidia-ml-py
without either call) has no per-process activity: a missing capability, not an error, so it is
not counted in ``errors``; it is not asked again, its samples carry ``activity_source=None`` (the
equal split) and :meth:`NvmlSensor.describe` says so.

MIG (:mod:`profiler.sensors.nvml_mig`): a GPU in MIG mode has its instances enumerated at
start; each sample carries them (``GpuSample.mig_instances``) and each process its instance
(``GpuProcess.gpu_instance_id``). Energy and power stay the parent's (NVML has none per instance).

NVML errors are mapped once, here: a field a device does not support is ``None``; a device that
fails a core read (energy or power; ``GpuIsLost`` on any read) is left out of that sample and
counted in ``errors`` as ``"gpu<index>:<NVML error name>"``. ``sample()`` never raises NVMLError.

``pynvml`` is imported only when a real NVML sensor is built, never at module import.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from profiler.sensors.base import (
    GpuProcess,
    GpuSample,
    MigInstance,
    SensorUnavailable,
    power_step_j,
)
from profiler.sensors.nvml_activity import (
    NVML_ACTIVITY,
    SIMULATED_ACTIVITY,
    ActivityState,
    NoActivityCall,
    read_process_samples,
)
from profiler.sensors.nvml_mig import describe_mig, instance_id, read_mig_instances
from profiler.sensors.nvml_power import POWER_POLL_HZ, PowerPoller
from profiler.sensors.reader import CallReader, boot_id

log = logging.getLogger(__name__)

COUNTER = "counter"
POWER_INTEGRATION = "power_integration"
NO_ENERGY = "none"
"""``energy_source`` of a device that reports neither an energy counter nor power."""
CALL_TIMEOUT_S = 0.5
"""How long one sampling pass waits for a device's NVML calls before leaving it out."""
POLL_S = 0.05
"""How often a pass that has not finished is checked for a device over its time (seconds)."""


@dataclass(frozen=True)
class GpuDevice:
    """A GPU as enumerated at start: power limit in watts, memory in bytes (None: unsupported)."""

    index: int
    uuid: str
    name: str
    power_limit_w: float | None
    memory_total_bytes: int | None
    energy_source: str
    idle_power_w: float | None = None
    mig_instances: tuple[MigInstance, ...] = ()  # MIG mode: its instances (nvml_mig)


@dataclass
class _DeviceState:
    """A device and its running energy figure (joules since the sensor started)."""

    info: GpuDevice
    handle: Any
    counter_supported: bool
    activity: ActivityState
    energy_j: float = 0.0
    last_counter_mj: int | None = None
    last_power_w: float | None = None
    last_t_s: float | None = None
    power_points: tuple[tuple[float, float], ...] = ()  # the fast readings of this sample


class _SkipDevice(Exception):
    """Internal: the device cannot be read in this sample (already counted in ``errors``)."""


@dataclass
class _Pass:
    """The devices one reader goes through in turn, and how far it got (``lock`` guards the
    fields the sampler and the reader both touch)."""

    devices: list[_DeviceState]
    samples: list[GpuSample] = field(default_factory=list)
    current: _DeviceState | None = None  # the device whose calls are under way
    current_since: float = 0.0  # since when (monotonic seconds)
    done: int = 0  # devices finished (read, or skipped for an error)
    abandoned: bool = False  # the sampler stopped waiting: go no further
    lock: threading.Lock = field(default_factory=threading.Lock)


def nvml_error_name(error: BaseException) -> str:
    """``NVMLError_GpuIsLost`` -> ``"GpuIsLost"``; an unmapped code -> ``"NVMLError<code>"``."""
    name = type(error).__name__
    if name.startswith("NVMLError_"):
        return name[len("NVMLError_") :]
    return f"NVMLError{getattr(error, 'value', '')}"


class NvmlSensor:
    """Samples every GPU that ``nvml`` (the ``pynvml`` module or a ``SimulatedNVML``) lists.

    ``clock`` gives monotonic seconds. Raises SensorUnavailable when NVML does not initialise.
    """

    def __init__(
        self,
        nvml: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        call_timeout_s: float = CALL_TIMEOUT_S,
        power_poll_hz: float | None = POWER_POLL_HZ,
    ) -> None:
        self._nvml = _import_pynvml() if nvml is None else nvml
        self._clock = clock
        self.call_timeout_s = call_timeout_s
        self._reader: CallReader | None = None
        self._stuck: dict[int, Future[Any]] = {}  # device index -> its call still running
        self.source = "simulated" if getattr(self._nvml, "SIMULATED", False) else "nvml"
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = False
        self._power: PowerPoller | None = None
        self._epoch_of = getattr(self._nvml, "simulated_counter_epoch", None)
        self._boot_id = None if self._epoch_of is not None else boot_id()
        _init_nvml(self._nvml)
        try:
            self.driver_version = str(_text(self._nvml.nvmlSystemGetDriverVersion()))
            count = self._nvml.nvmlDeviceGetCount()
        except self._nvml.NVMLError as e:
            self.close()
            raise SensorUnavailable(f"NVML initialised but could not list GPUs ({e})") from e
        self._devices = [d for d in (self._open_device(i) for i in range(count)) if d is not None]
        self._power = self._power_poller(power_poll_hz)  # nvml_power: the polling path

    @property
    def simulated(self) -> bool:
        return self.source == "simulated"

    @property
    def devices(self) -> list[GpuDevice]:
        """The GPUs this sensor reads, as enumerated at start."""
        return [d.info for d in self._devices]

    def describe(self) -> str:
        """One line for logs and status, e.g. ``NVML 550.54.15: 2 x NVIDIA A100-SXM4-40GB ...``."""
        if not self._devices:
            return f"{self._label()}: no GPU"
        names = Counter(d.info.name for d in self._devices)
        models = ", ".join(f"{n} x {name}" for name, n in names.items())
        sources = ", ".join(sorted({d.info.energy_source for d in self._devices}))
        text = f"{self._label()}: {models}; energy from {sources}"
        without = [str(d.info.index) for d in self._devices if d.activity.source is None]
        if without:
            gpus = f"{'gpu' if len(without) == 1 else 'gpus'} {', '.join(without)}"
            text += f"; per-process activity: not supported on {gpus} (equal split)"
        for d in self._devices:
            if d.info.mig_instances:
                text += f"; gpu {d.info.index} MIG: {describe_mig(d.info.mig_instances)}"
        if self._power is not None:
            text += f"; {self._power.describe()}"
        return text

    def _power_poller(self, rate_hz: float | None) -> PowerPoller | None:
        """A :class:`PowerPoller` for the devices without an energy counter (None: none, or
        ``rate_hz`` None); its thread runs only on the real monotonic clock."""
        polled = {
            d.info.index: d.handle
            for d in self._devices
            if d.info.energy_source == POWER_INTEGRATION
        }
        if rate_hz is None or not polled:
            return None
        poller = PowerPoller(self._nvml, polled, clock=self._clock, rate_hz=rate_hz)
        if self._clock is time.monotonic:
            poller.start()
        return poller

    def poll_power(self) -> None:
        """Take one fast power reading of every device on the polling path (what the poller's
        thread does at its rate; tests and benchmarks on a simulated clock call it)."""
        if self._power is not None:
            self._power.poll()

    def _label(self) -> str:
        if self.simulated:
            return "SIMULATED GPU (a power model, not hardware)"
        return f"NVML, driver {self.driver_version}"

    # ---- start

    def _open_device(self, index: int) -> _DeviceState | None:
        """Enumerate one device and take its energy baseline; None (logged, counted) if it fails."""
        nv = self._nvml
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = str(_text(nv.nvmlDeviceGetUUID(handle)))
            name = str(_text(nv.nvmlDeviceGetName(handle)))
        except nv.NVMLError as e:
            self.errors[f"gpu{index}:{nvml_error_name(e)}"] += 1
            log.warning("GPU %d left out: NVML could not open it (%s)", index, e)
            return None
        limit_mw = self._optional(nv.nvmlDeviceGetEnforcedPowerLimit, handle)
        memory = self._optional(nv.nvmlDeviceGetMemoryInfo, handle)
        counter_mj = self._optional(nv.nvmlDeviceGetTotalEnergyConsumption, handle)
        power_mw = self._optional(nv.nvmlDeviceGetPowerUsage, handle)
        idle_w = getattr(nv, "simulated_idle_power_w", None)  # the simulator's model figure
        t_s = self._clock()
        supported = counter_mj is not None
        source = COUNTER if supported else POWER_INTEGRATION if power_mw is not None else NO_ENERGY
        info = GpuDevice(
            index=index,
            uuid=uuid,
            name=name,
            power_limit_w=None if limit_mw is None else limit_mw / 1000,
            memory_total_bytes=None if memory is None else int(memory.total),
            energy_source=source,
            idle_power_w=None if idle_w is None else self._optional(idle_w, handle),
            mig_instances=read_mig_instances(nv, handle, index),
        )
        activity = ActivityState(SIMULATED_ACTIVITY if self.simulated else NVML_ACTIVITY)
        state = _DeviceState(
            info,
            handle,
            counter_supported=supported,
            activity=activity,
            last_counter_mj=counter_mj,
            last_power_w=None if power_mw is None else power_mw / 1000,
            last_t_s=t_s,
        )
        try:  # the samples already buffered are from before the start: only mark them seen
            self._read_activity(state, t_s)
        except _SkipDevice:
            pass
        return state

    def _optional(self, fn: Callable[[Any], Any], handle: Any) -> Any:
        """A read at start: None when it fails for any NVML reason."""
        try:
            return fn(handle)
        except self._nvml.NVMLError:
            return None

    # ---- sampling

    def sample(self) -> list[GpuSample]:
        """Read every device once; a device that cannot be read is left out (see ``errors``).

        One reader thread goes through the devices in turn (a thread per device would cost a
        thread wake-up per device per sample). When a device's calls take longer than
        ``call_timeout_s`` (a hung driver call; each device has its own budget, counted from
        when its calls start), that device is counted once as ``gpu<index>:Timeout`` and left
        out until its call returns (its energy counter then covers the gap); the reader stuck
        in it is abandoned and the devices after it are read by a fresh one. So a pass waits
        at most ``call_timeout_s`` per device that hangs in it, and usually not at all."""
        with self._lock:
            if self._closed:
                return []
            todo = []
            for dev in self._devices:
                index = dev.info.index
                stuck = self._stuck.get(index)
                if stuck is not None:
                    if not stuck.done():
                        continue
                    del self._stuck[index]
                    log.warning("GPU %d answers again after a hung NVML call", index)
                todo.append(dev)
            out: list[GpuSample] = []
            while todo:
                if self._reader is None:
                    self._reader = CallReader("nvml-reader")
                work = _Pass(todo)
                future = self._reader.submit(lambda work=work: self._read_pass(work))
                hung = self._wait_for(work, future)
                with work.lock:
                    work.abandoned = True
                    out.extend(work.samples)
                    done = work.done
                if hung is None:  # finished, or stalled between devices: read next pass
                    return out
                index = hung.info.index
                self._stuck[index] = future
                self.errors[f"gpu{index}:Timeout"] += 1
                log.warning(
                    "GPU %d: an NVML call took over %g s; sampling the other GPUs without it",
                    index,
                    self.call_timeout_s,
                )
                self._reader.retire()
                self._reader = None
                todo = work.devices[done + 1 :]
            return out

    def _wait_for(self, work: _Pass, future: Future[Any]) -> _DeviceState | None:
        """Wait for a pass while it makes progress: None once it is done (or has made no
        progress at all for ``call_timeout_s``: a reader not scheduled), else the device whose
        calls have run for ``call_timeout_s`` (hung). Each device gets its own
        ``call_timeout_s``, however many come before it."""
        step = min(POLL_S, self.call_timeout_s)
        seen, since = (None, -1), time.monotonic()
        while True:
            try:
                future.result(timeout=step)
                return None
            except FutureTimeout:
                pass
            with work.lock:
                state = (work.current, work.done)
                started = work.current_since
            now = time.monotonic()
            if state != seen:
                seen, since = state, now
            current = state[0]
            if current is not None and now - started >= self.call_timeout_s:
                return current
            if current is None and now - since >= self.call_timeout_s:
                return None

    def _read_pass(self, work: _Pass) -> None:
        """Read ``work.devices`` in turn (on the reader thread), appending to ``work.samples``;
        stop early once the sampler has abandoned the pass."""
        for dev in work.devices:
            with work.lock:
                if work.abandoned:
                    return
                work.current = dev
                work.current_since = time.monotonic()
            try:
                sample = self._sample_device(dev)
            except _SkipDevice:
                sample = None
            with work.lock:
                if work.abandoned:  # this call outlived the wait: its result comes too late
                    return
                if sample is not None:
                    work.samples.append(sample)
                work.done += 1
                work.current = None

    def _sample_device(self, dev: _DeviceState) -> GpuSample:
        nv = self._nvml
        counter_mj = None
        if dev.counter_supported:
            counter_mj = self._read(dev, nv.nvmlDeviceGetTotalEnergyConsumption, core=True)
        power_mw = self._read(dev, nv.nvmlDeviceGetPowerUsage, core=True)
        t_s = self._clock()
        power_w = None if power_mw is None else power_mw / 1000
        energy_j, source = self._advance_energy(dev, counter_mj, power_w, t_s)
        counter_j = counter_id = None
        if source == COUNTER and counter_mj is not None:
            counter_j, counter_id = counter_mj / 1000, self._counter_id(dev)
        memory = self._read(dev, nv.nvmlDeviceGetMemoryInfo)
        rates = self._read(dev, nv.nvmlDeviceGetUtilizationRates)
        procs = self._read(dev, nv.nvmlDeviceGetComputeRunningProcesses) or []
        activity = self._read_activity(dev, t_s)
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
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=info.memory_total_bytes if memory is None else int(memory.total),
            utilization_ratio=None if rates is None else rates.gpu / 100,
            processes=tuple(
                GpuProcess(int(p.pid), p.usedGpuMemory, instance_id(p, info.mig_instances))
                for p in procs
            ),
            simulated=self.simulated,
            counter_j=counter_j,
            counter_id=counter_id,
            process_activity=activity,
            activity_source=dev.activity.source,
            idle_power_w=info.idle_power_w,
            mig_instances=info.mig_instances,
            power_points=dev.power_points,
        )

    def _read_activity(self, dev: _DeviceState, t_s: float) -> dict[int, float] | None:
        """This device's per-process activity since its last reading (pid -> mean SM
        utilization, ratio) when a reading is due (:data:`ACTIVITY_PERIOD_S`): ``{}`` when NVML
        has no newer sample (NotFound: no process was busy); None when not due or not read.
        NotSupported (or a pynvml without either call) turns the device's activity off for good,
        logged once and not counted as an error (a missing capability); GpuIsLost skips the
        device; other errors count."""
        state = dev.activity
        if not state.due(t_s):
            return None
        state.last_read_s = t_s
        nv = self._nvml
        try:  # nvmlDeviceGetProcessesUtilizationInfo, else nvmlDeviceGetProcessUtilization
            samples = read_process_samples(nv, dev.handle, state)
        except nv.NVMLError_NotFound:  # no sample since the last reading: nobody was busy
            return state.take(())
        except (nv.NVMLError_NotSupported, NoActivityCall) as e:
            state.source = None
            log.info(
                "GPU %d: no per-process utilization (%s); its energy is split equally",
                dev.info.index,
                "nvidia-ml-py lacks the calls"
                if isinstance(e, NoActivityCall)
                else "NVML: NotSupported",
            )
            return None
        except nv.NVMLError as e:
            if getattr(e, "value", None) == nv.NVML_SUCCESS:  # pynvml: no sample to size for
                return state.take(())
            key = f"gpu{dev.info.index}:{nvml_error_name(e)}"
            self.errors[key] += 1
            if isinstance(e, nv.NVMLError_GpuIsLost):
                raise _SkipDevice(key) from e
            return None
        return state.take(samples)

    def _counter_id(self, dev: _DeviceState) -> str | None:
        """The epoch of the device's energy counter (see the module docstring); None when it
        cannot be told (no boot id), so that no reading is compared across sensors."""
        if self._epoch_of is not None:  # the simulator: its own counter, reset by tests
            epoch = self._read(dev, self._epoch_of)
            return None if epoch is None else f"{dev.info.uuid}@{epoch}"
        if self._boot_id is None:
            return None
        return f"{dev.info.uuid}@boot-{self._boot_id}"

    def _read(self, dev: _DeviceState, fn: Callable[[Any], Any], *, core: bool = False) -> Any:
        """Call one NVML read on ``dev``: NotSupported -> None; other errors are counted, and
        skip the device when ``core`` or when the GPU is lost, else give None."""
        nv = self._nvml
        try:
            return fn(dev.handle)
        except nv.NVMLError_NotSupported:
            return None
        except nv.NVMLError as e:
            key = f"gpu{dev.info.index}:{nvml_error_name(e)}"
            self.errors[key] += 1
            if core or isinstance(e, nv.NVMLError_GpuIsLost):
                raise _SkipDevice(key) from e
            return None

    def _advance_energy(
        self, dev: _DeviceState, counter_mj: int | None, power_w: float | None, t_s: float
    ) -> tuple[float | None, str]:
        """Add this interval's joules to ``dev.energy_j``; return (cumulative joules, source).
        Sets ``dev.power_points`` to the fast readings integrated (``()``: none)."""
        dev.power_points = ()
        if dev.counter_supported and counter_mj is None:  # the counter stopped being supported
            dev.counter_supported = False
            self.errors[f"gpu{dev.info.index}:CounterNotSupported"] += 1
        if dev.counter_supported:
            assert counter_mj is not None and dev.last_counter_mj is not None
            if counter_mj >= dev.last_counter_mj:
                dev.energy_j += (counter_mj - dev.last_counter_mj) / 1000
            else:  # driver reload: re-base; estimate this interval from power instead
                self.errors[f"gpu{dev.info.index}:CounterReset"] += 1
                dev.energy_j += power_step_j(dev.last_power_w, dev.last_t_s, power_w, t_s)
            dev.last_counter_mj = counter_mj
            source = COUNTER
        elif power_w is not None:
            dev.energy_j += self._polled_j(dev, power_w, t_s)
            source = POWER_INTEGRATION
        else:
            source = NO_ENERGY
        if power_w is not None:
            dev.last_power_w, dev.last_t_s = power_w, t_s
        return (dev.energy_j if source != NO_ENERGY else None), source

    def _polled_j(self, dev: _DeviceState, power_w: float, t_s: float) -> float:
        """Joules since the last power reading, through the poller's fast readings when it
        polls this device (:mod:`profiler.sensors.nvml_power`), else the plain trapezoid."""
        if self._power is None or dev.last_power_w is None or dev.last_t_s is None:
            return power_step_j(dev.last_power_w, dev.last_t_s, power_w, t_s)
        index, t0 = dev.info.index, dev.last_t_s
        joules, dev.power_points = self._power.integrate(index, t0, dev.last_power_w, t_s, power_w)
        return joules

    # ---- processes and shutdown

    def attach_process(self, pid: int, devices: Sequence[int | str]) -> None:
        """Tell a simulated GPU that ``pid`` runs on ``devices`` (indexes, or ``MIG-`` uuids of
        its instances); no-op on real NVML, which lists compute processes itself."""
        attach = getattr(self._nvml, "attach_process", None)
        if self.simulated and attach is not None:
            instances = {
                m.uuid: (d.info.index, m) for d in self._devices for m in d.info.mig_instances
            }
            for device in devices:
                if isinstance(device, int):
                    attach(pid, device)
                elif device in instances:
                    index, mig = instances[device]
                    attach(pid, index, instance=mig.gpu_instance_id)

    def detach_process(self, pid: int) -> None:
        """Undo ``attach_process`` on a simulated GPU; no-op on real NVML."""
        detach = getattr(self._nvml, "detach_process", None)
        if self.simulated and detach is not None:
            detach(pid)

    def close(self) -> None:
        """Shut NVML down (once; later calls do nothing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._power is not None:
            self._power.close()
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as e:
            log.debug("nvmlShutdown failed: %s", e)


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as e:
        raise SensorUnavailable(
            f"NVML did not initialise (module pynvml not importable: {e}); "
            "install the nvidia-ml-py package"
        ) from e
    return pynvml


def _init_nvml(nvml: Any) -> None:
    """``nvmlInit``, or SensorUnavailable naming NVML's reason."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        if isinstance(e, nvml.NVMLError_NoPermission):
            consequence = "no permission to use the NVIDIA driver"
        else:
            consequence = "no NVIDIA driver found"
        raise SensorUnavailable(f"NVML did not initialise ({e}): {consequence}") from e


def _text(value: str | bytes) -> str:
    """NVML strings are ``str`` in nvidia-ml-py 12+, ``bytes`` in old releases."""
    return value.decode() if isinstance(value, bytes) else value
