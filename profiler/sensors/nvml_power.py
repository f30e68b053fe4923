"""Fast power readings for GPUs without an energy counter (the polling path), integrated by
trapezoid between the sensor's samples.

A GPU older than Volta has no NVML energy counter: its energy is the integral of power readings.
At the 10 Hz sample, training's busy/idle phases (tens of ms) alias: the error of one run was up
to 8 % (issue 19). So :class:`PowerPoller` reads those devices' power at ``rate_hz`` (default
:data:`POWER_POLL_HZ`, 50 Hz) in between, on its own bounded thread (one daemon thread for all
devices; started only for devices on the polling path, so a counter GPU costs nothing), and
:meth:`PowerPoller.integrate_j` integrates every reading between two samples by the trapezoidal
rule. The energy source stays ``"power_integration"``; :meth:`PowerPoller.describe` says the
rate (the sensor's ``describe()`` line). The readings integrated go on with the sample
(``GpuSample.power_points``): the daemon puts them on the device's energy curve, so that a step
inside a 10 Hz interval gets the energy that fell in it, not a share of the interval's.

Which reading: ``nvmlDeviceGetFieldValues`` with ``NVML_FI_DEV_POWER_INSTANT`` (scope GPU) where
the driver has it (NVML 12.2+; probed at start: a call that fails, or an entry answering
anything but success, turns it off for that device), else ``nvmlDeviceGetPowerUsage``. Both
are milliwatts. On Ampere (not GA100) and newer parts ``GetPowerUsage`` is a 1 s average
(smoothed, not aliased); those parts have the energy counter anyway, so the polling path is
for older GPUs, whose ``GetPowerUsage`` is instantaneous.

A fast reading that fails (any NVML error) is simply not taken: the 10 Hz sample still reads
power and counts its errors, so the integral falls back to the sample's own readings for that
span. A call that hangs holds up only this thread, never the sampler: the integral then uses the
readings it has. With a clock other than ``time.monotonic`` (tests and benchmarks on a simulated
clock) no thread is started: the caller drives :meth:`PowerPoller.poll`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

POWER_POLL_HZ = 50.0
"""How often (Hz) a GPU without an energy counter has its power read between samples."""
MAX_READINGS = 500
"""Readings kept per device between two samples (10 s at 50 Hz): a sampler that stalls longer
loses the oldest, never grows memory."""
FIELD_POWER_INSTANT = 186  # pynvml.NVML_FI_DEV_POWER_INSTANT
POWER_SCOPE_GPU = 0  # pynvml.NVML_POWER_SCOPE_GPU


class PowerPoller:
    """Reads the power of the given devices (``handles``: device index -> NVML handle) at
    ``rate_hz`` and keeps the readings (monotonic seconds from ``clock``, watts) until the
    sampler integrates them. Thread-safe."""

    def __init__(
        self,
        nvml: Any,
        handles: dict[int, Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        rate_hz: float = POWER_POLL_HZ,
    ) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz!r}")
        self._nvml = nvml
        self._handles = dict(handles)
        self._clock = clock
        self.rate_hz = float(rate_hz)
        self._field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", FIELD_POWER_INSTANT)
        self._scope = getattr(nvml, "NVML_POWER_SCOPE_GPU", POWER_SCOPE_GPU)
        self._success = getattr(nvml, "NVML_SUCCESS", 0)
        self._instant = {i: hasattr(nvml, "nvmlDeviceGetFieldValues") for i in self._handles}
        self._readings: dict[int, deque[tuple[float, float]]] = {
            i: deque(maxlen=MAX_READINGS) for i in self._handles
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reads = 0  # fast readings taken (all devices)
        for index in self._handles:  # probe: POWER_INSTANT, else GetPowerUsage
            self._read_w(index)

    @property
    def devices(self) -> list[int]:
        """The device indexes polled."""
        return sorted(self._handles)

    def method(self, index: int) -> str:
        """``"power_instant"`` (FieldValues) or ``"power_usage"`` for device ``index``."""
        return "power_instant" if self._instant.get(index) else "power_usage"

    def describe(self) -> str:
        """E.g. ``power read at 50 Hz (gpu 0: power_instant)`` for the sensor's line."""
        if not self._handles:
            return ""
        gpus = ", ".join(f"gpu {i}: {self.method(i)}" for i in self.devices)
        return f"power read at {self.rate_hz:g} Hz ({gpus})"

    def start(self) -> None:
        """Poll on a daemon thread named ``nvml-power`` until :meth:`close` (no-op when there is
        nothing to poll or it already runs)."""
        if self._thread is not None or not self._handles:
            return
        self._thread = threading.Thread(target=self._run, name="nvml-power", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (it ends after its current reading; not waited for: a hung call)."""
        self._stop.set()

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.poll()
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (a slow call, a busy CPU): do not burst to catch up
                next_t, delay = time.monotonic(), 0.0
            if self._stop.wait(delay):
                return

    def poll(self) -> None:
        """Read every device's power once and keep the readings."""
        for index in self._handles:
            watts = self._read_w(index)
            if watts is None:
                continue
            t_s = self._clock()
            with self._lock:
                self._readings[index].append((t_s, watts))
                self.reads += 1

    def _read_w(self, index: int) -> float | None:
        """One power reading of device ``index`` in watts; None when it fails."""
        nv, handle = self._nvml, self._handles[index]
        if self._instant[index]:
            try:
                value = nv.nvmlDeviceGetFieldValues(handle, [(self._field_id, self._scope)])[0]
            except nv.NVMLError as e:  # NotSupported, FunctionNotFound (an old driver), ...
                self._instant[index] = False  # GetPowerUsage from now on: the same milliwatts
                log.info("GPU %d: NVML field values unavailable (%s); polling GetPowerUsage",
                         index, e)  # fmt: skip
            else:
                if value.nvmlReturn == self._success:
                    return _field_number(value) / 1000
                self._instant[index] = False  # the driver has no POWER_INSTANT
                log.info("GPU %d: no NVML_FI_DEV_POWER_INSTANT; polling GetPowerUsage", index)
        try:
            return float(nv.nvmlDeviceGetPowerUsage(handle)) / 1000
        except nv.NVMLError:
            return None

    def integrate_j(self, index: int, t0_s: float, w0: float, t1_s: float, w1: float) -> float:
        """Joules of device ``index`` from the sample ``(t0_s, w0)`` to the sample ``(t1_s,
        w1)`` (seconds, watts): the trapezoid through the fast readings taken strictly between
        them and the two samples' own readings. Readings up to ``t1_s`` are consumed."""
        return self.integrate(index, t0_s, w0, t1_s, w1)[0]

    def integrate(
        self, index: int, t0_s: float, w0: float, t1_s: float, w1: float
    ) -> tuple[float, tuple[tuple[float, float], ...]]:
        """:meth:`integrate_j` and the fast readings ``(t_s, watts)`` it went through, oldest
        first (the sample's ``power_points``: where in the interval the energy fell)."""
        with self._lock:
            buf = self._readings.get(index)
            inside: list[tuple[float, float]] = []
            while buf:
                t, w = buf[0]
                if t > t1_s:
                    break
                buf.popleft()
                if t > t0_s and t < t1_s:
                    inside.append((t, w))
        return trapezoid_j([(t0_s, w0), *inside, (t1_s, w1)]), tuple(inside)


def trapezoid_j(points: Iterable[tuple[float, float]]) -> float:
    """The trapezoidal integral (joules) of ``(seconds, watts)`` points in time order."""
    total, prev = 0.0, None
    for t, w in points:
        if prev is not None and t > prev[0]:
            total += (prev[1] + w) / 2 * (t - prev[0])
        prev = (t, w)
    return total


def _field_number(value: Any) -> float:
    """The number in a ``c_nvmlFieldValue_t`` by its ``valueType`` (NVML_VALUE_TYPE_*)."""
    kind = int(value.valueType)
    attr = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    return float(getattr(value.value, attr.get(kind, "uiVal")))
