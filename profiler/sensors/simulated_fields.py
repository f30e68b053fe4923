"""The simulated GPU's ``nvmlDeviceGetFieldValues`` and its realistic energy counter (a mixin of
:class:`profiler.sensors.simulated.SimulatedNVML`).

``nvmlDeviceGetFieldValues(handle, field_ids)`` answers as pynvml does: an array of
``pynvml.c_nvmlFieldValue_t`` (each entry has its own ``nvmlReturn``; the call itself fails only
for a bad handle or a lost GPU), for

- ``NVML_FI_DEV_POWER_INSTANT`` (field 186, scope ``NVML_POWER_SCOPE_GPU``): instantaneous power
  in milliwatts (``uiVal``), the model's level at this clock time;
- ``NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (field 83): the energy counter in millijoules
  (``ullVal``), as ``nvmlDeviceGetTotalEnergyConsumption`` reads it.

Any other field answers ``NVML_ERROR_NOT_SUPPORTED`` in its entry; so does POWER_INSTANT after
:meth:`SimulatedFieldCalls.set_power_instant_supported` ``(False)`` (an older driver), and the
energy field where the counter is unsupported. Timestamps are the clock in microseconds.

A realistic counter (:meth:`SimulatedFieldCalls.set_counter_update_s`): real NVML energy
counters advance every few tens of milliseconds, not continuously. With ``counter_update_s=u``
the counter read at time ``t`` is the exact integral up to the last update, ``t0 + floor((t -
t0) / u) * u`` (``t0``: the simulator's start), so a reading lags the truth by up to ``u``
seconds of energy. ``0`` (the default) keeps the continuous counter.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import pynvml

FIELD_POWER_INSTANT = pynvml.NVML_FI_DEV_POWER_INSTANT
FIELD_TOTAL_ENERGY = pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION


class SimulatedFieldCalls:
    """``nvmlDeviceGetFieldValues`` and the counter's update period for the simulator; uses its
    ``_lock``, ``t0_s``, ``_device_now`` and ``_maybe_hang``; its
    ``nvmlDeviceGetTotalEnergyConsumption`` reads :meth:`_counter_mj`."""

    counter_update_s: float = 0.0
    power_instant_supported: bool = True
    _lock: threading.RLock
    t0_s: float

    def set_counter_update_s(self, seconds: float) -> None:
        """Make every energy counter advance only every ``seconds`` of clock time (0:
        continuously). Raises ValueError for a negative or non-finite figure."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"counter_update_s must be a finite number >= 0, got {seconds!r}")
        with self._lock:
            self.counter_update_s = float(seconds)

    def set_power_instant_supported(self, supported: bool) -> None:
        """``False``: ``NVML_FI_DEV_POWER_INSTANT`` answers NotSupported (drivers before NVML
        12.2), so readers fall back to ``nvmlDeviceGetPowerUsage``."""
        with self._lock:
            self.power_instant_supported = bool(supported)

    def _counter_time(self, now: float) -> float:
        """The clock time up to which the energy counter has counted when read at ``now``."""
        u = self.counter_update_s
        if u <= 0:
            return now
        return self.t0_s + math.floor((now - self.t0_s) / u) * u

    def _counter_mj(self, dev: Any, now: float) -> int:
        """A device's energy counter read at ``now``, millijoules: the floor of the exact
        integral up to :meth:`_counter_time` since its last reset, plus its offset."""
        joules = dev.power.energy_at(self._counter_time(now)) - dev.counter_base_j
        return max(0, math.floor(joules * 1000)) + dev.counter_offset_mj

    def nvmlDeviceGetFieldValues(
        self, handle: Any, field_ids: Sequence[int | tuple[int, int]]
    ) -> Any:
        """pynvml's call: an array of ``c_nvmlFieldValue_t``, one per requested field (an id, or
        ``(id, scope)``)."""
        self._maybe_hang(handle)  # type: ignore[attr-defined]
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        with self._lock:
            dev, now = self._device_now(handle)  # type: ignore[attr-defined]
            stamp = int(now * 1e6)
            for i, requested in enumerate(field_ids):
                fid, scope = requested if isinstance(requested, tuple) else (requested, 0)
                v = values[i]
                v.fieldId, v.scopeId, v.timestamp, v.latencyUsec = fid, scope, stamp, 0
                v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                if fid == FIELD_POWER_INSTANT and self.power_instant_supported:
                    v.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                    v.value.uiVal = round(dev.power.power_at(now) * 1000)
                    v.nvmlReturn = pynvml.NVML_SUCCESS
                elif fid == FIELD_TOTAL_ENERGY and dev.counter_supported:
                    v.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                    v.value.ullVal = self._counter_mj(dev, now)
                    v.nvmlReturn = pynvml.NVML_SUCCESS
        return values
