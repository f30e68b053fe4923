"""The simulated GPU's physical side: the GPU models it can play (power envelope, memory), the
``simulated[:MODEL[:COUNT]]`` spec, and the power timelines whose exact integral its energy counter
reports (scripted traces, and power recorded as the load sets it). The ``pynvml`` surface over
them is :class:`profiler.sensors.simulated.SimulatedNVML`.

Times are clock seconds, power in watts, energy in joules (since the timeline's start), memory in
bytes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIB = 1024**2
GIB = 1024**3
RETENTION_S = 3600.0
"""Seconds of load-mode power history kept for ``exact_energy_j`` (older energy stays in totals)."""
DEFAULT_MODEL = "A100-SXM4-40GB"
MAX_COUNT = 64
_COMPACT_AT = 1024  # drop expired load-mode segments in batches of at least this many

Phase = tuple[float, float]
"""One phase of a scripted trace: ``(duration_s, watts)``."""


@dataclass(frozen=True)
class GpuModel:
    """A GPU model's power envelope (watts) and memory size (bytes)."""

    name: str
    power_limit_w: float
    idle_w: float
    memory_bytes: int

    @property
    def nvml_name(self) -> str:
        """The name as ``nvmlDeviceGetName`` prints it."""
        return f"NVIDIA {self.name}"


GPU_MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("A100-SXM4-40GB", power_limit_w=400.0, idle_w=55.0, memory_bytes=40 * GIB),
        GpuModel("A100-SXM4-80GB", power_limit_w=400.0, idle_w=60.0, memory_bytes=80 * GIB),
        GpuModel("H100-SXM5-80GB", power_limit_w=700.0, idle_w=70.0, memory_bytes=80 * GIB),
        GpuModel("H100-PCIe-80GB", power_limit_w=350.0, idle_w=50.0, memory_bytes=80 * GIB),
        GpuModel("L4", power_limit_w=72.0, idle_w=16.0, memory_bytes=24 * GIB),
        GpuModel("T4", power_limit_w=70.0, idle_w=10.0, memory_bytes=16 * GIB),
        GpuModel("V100-SXM2-32GB", power_limit_w=300.0, idle_w=40.0, memory_bytes=32 * GIB),
    )
}


def parse_simulated_spec(spec: str) -> tuple[str, int]:
    """``"simulated[:MODEL[:COUNT]]"`` -> ``(model name, device count)``; ValueError if invalid.

    The model is matched case-insensitively; an empty model means the default A100-SXM4-40GB.
    """
    return parse_model_count(spec, "simulated", GPU_MODELS, DEFAULT_MODEL)


def parse_model_count(
    spec: str,
    prefix: str,
    models: Sequence[str],
    default: str,
    *,
    what: str = "GPU",
    count_note: str = "",
) -> tuple[str, int]:
    """``"PREFIX[:MODEL[:COUNT]]"`` -> ``(model name in models, count)``, the model matched
    case-insensitively, empty meaning ``default``; ValueError naming the spec and the allowed
    models (``what``: the kind of GPU in the message; ``count_note``: what COUNT counts)."""
    parts = spec.strip().split(":")
    allowed = ", ".join(models)
    if parts[0].lower() != prefix or len(parts) > 3:
        raise ValueError(
            f"gpu spec {spec!r}: expected {prefix}[:MODEL[:COUNT]] (models: {allowed})"
        )
    model = named_in(models, parts[1]) if len(parts) > 1 and parts[1] else default
    if model is None:
        raise ValueError(
            f"gpu spec {spec!r}: unknown simulated {what} model {parts[1]!r}; "
            f"allowed models: {allowed}"
        )
    count = 1
    if len(parts) == 3:
        try:
            count = int(parts[2])
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(
                f"gpu spec {spec!r}: COUNT{count_note} must be an integer from 1 to {MAX_COUNT}, "
                f"got {parts[2]!r}"
            )
    return model, count


def model_named(text: str) -> str | None:
    return named_in(GPU_MODELS, text)


def named_in(models: Sequence[str], text: str) -> str | None:
    """The name in ``models`` that ``text`` is, case-insensitively; None when none is."""
    wanted = text.strip().lower()
    return next((name for name in models if name.lower() == wanted), None)


def checked_model(name: str | None, model: object, allowed: Sequence[str], count: int,
                  kind: str = "GPU") -> str:  # fmt: skip
    """``name``, the model found for ``model``; ValueError when none was (naming the
    ``allowed`` models of this ``kind``) or when ``count`` is not from 1 to ``MAX_COUNT``."""
    if name is None:
        raise ValueError(f"unknown {kind} model {model!r}; allowed models: {', '.join(allowed)}")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be from 1 to {MAX_COUNT}, got {count!r}")
    return name


# ---- power timelines: power_at(t_s) in watts, energy_at(t_s) in joules since the start


class ScriptedPower:
    """Power from a trace of ``(duration_s, watts)`` phases starting at ``t0_s``; energy in
    closed form, so memory stays the size of the trace however long the simulator lives."""

    def __init__(self, t0_s: float, phases: Sequence[Phase], idle_w: float, repeat: bool) -> None:
        if not phases:
            raise ValueError("a scripted trace needs at least one (duration_s, watts) phase")
        self.t0_s, self.idle_w, self.repeat = t0_s, idle_w, repeat
        self._starts: list[float] = []
        self._watts: list[float] = []
        self._energies: list[float] = []  # joules at the start of each phase
        t = e = 0.0
        for duration_s, watts in phases:
            duration_s, watts = float(duration_s), float(watts)
            if not (math.isfinite(duration_s) and duration_s >= 0):
                raise ValueError(f"phase duration must be >= 0 seconds, got {duration_s!r}")
            if not (math.isfinite(watts) and watts >= 0):
                raise ValueError(f"phase power must be >= 0 watts, got {watts!r}")
            self._starts.append(t)
            self._watts.append(watts)
            self._energies.append(e)
            t += duration_s
            e += duration_s * watts
        if t <= 0:
            raise ValueError("a scripted trace must last longer than 0 seconds")
        self.period_s, self.period_j = t, e

    def clipped(self, ceiling_w: float) -> ScriptedPower:
        """The same trace with every phase's power capped at ``ceiling_w`` (watts): its energy is
        the part of this trace's energy below that level (the idle part, for the idle watts)."""
        phases = [
            (
                self._starts[i + 1] - self._starts[i]
                if i + 1 < len(self._starts)
                else self.period_s - self._starts[i],
                min(w, ceiling_w),
            )
            for i, w in enumerate(self._watts)
        ]
        return ScriptedPower(self.t0_s, phases, min(self.idle_w, ceiling_w), self.repeat)

    def power_at(self, t_s: float) -> float:
        tau = max(0.0, t_s - self.t0_s)
        if not self.repeat and tau >= self.period_s:
            return self.idle_w
        return self._watts[self._phase(tau % self.period_s)]

    def energy_at(self, t_s: float) -> float:
        tau = max(0.0, t_s - self.t0_s)
        if self.repeat:
            cycles, rest = divmod(tau, self.period_s)
            return cycles * self.period_j + self._partial(rest)
        if tau >= self.period_s:
            return self.period_j + self.idle_w * (tau - self.period_s)
        return self._partial(tau)

    def _phase(self, tau: float) -> int:
        return bisect.bisect_right(self._starts, tau) - 1

    def _partial(self, tau: float) -> float:
        i = self._phase(tau)
        return self._energies[i] + self._watts[i] * (tau - self._starts[i])


class RecordedPower:
    """Piecewise-constant power recorded as it is set (load mode).

    Segments ``(start_s, watts, joules at start)``; the last one runs to now. Segments that ended
    more than ``RETENTION_S`` ago are dropped, their energy stays in the next segment's total.
    """

    def __init__(self, t0_s: float, watts: float) -> None:
        self._starts = [t0_s]
        self._watts = [watts]
        self._energies = [0.0]

    @property
    def oldest_s(self) -> float:
        """The earliest time (seconds) ``energy_at`` can still answer for."""
        return self._starts[0]

    @property
    def level(self) -> float:
        """The current level (watts, or whatever the timeline records)."""
        return self._watts[-1]

    @property
    def last_change_s(self) -> float:
        """When the current level began (seconds)."""
        return self._starts[-1]

    def set(self, t_s: float, watts: float) -> None:
        """Power is ``watts`` from ``t_s`` on (``t_s`` not before the last change)."""
        t_s = max(t_s, self._starts[-1])
        if watts == self._watts[-1]:
            return
        energy = self.energy_at(t_s)
        if t_s == self._starts[-1]:
            self._watts[-1] = watts
        else:
            self._starts.append(t_s)
            self._watts.append(watts)
            self._energies.append(energy)
        self._expire(t_s - RETENTION_S)

    def power_at(self, t_s: float) -> float:
        return self._watts[self._segment(t_s)]

    def energy_at(self, t_s: float) -> float:
        i = self._segment(t_s)
        return self._energies[i] + self._watts[i] * max(0.0, t_s - self._starts[i])

    def _segment(self, t_s: float) -> int:
        return max(0, bisect.bisect_right(self._starts, t_s) - 1)

    def _expire(self, cutoff_s: float) -> None:
        k = self._segment(cutoff_s)
        if k >= _COMPACT_AT:
            del self._starts[:k], self._watts[:k], self._energies[:k]


def per_device_traces(traces: Sequence[Any] | None, count: int) -> list[Sequence[Phase] | None]:
    """One trace (or None for load mode) per device: a single trace applies to all devices."""
    if traces is None:
        return [None] * count
    if not traces:
        raise ValueError("traces must be None, one trace, or one trace per device")
    first = traces[0]
    if isinstance(first, Sequence) and len(first) == 2 and all(_is_number(x) for x in first):
        return [traces] * count
    if len(traces) != count:
        raise ValueError(f"got {len(traces)} traces for {count} devices: give one or one each")
    return list(traces)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
