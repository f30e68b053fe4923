"""Per-step energy over a window of steps: what 10 Hz samples can tell about short steps.

A step shorter than the sampling interval cannot be resolved: its figure is interpolated and
its bound (:func:`profiler.accounting.energy.step_bound_j`) is larger than its energy. The
steps of a window of at least :data:`STEP_WINDOW_S` seconds, taken together, are resolved: the
window's bound comes from its two edges only, so relative to the window's energy it shrinks as
the window grows. Each run keeps its latest closed window (:class:`StepWindow`): joules per step
(and per sample, with the run's batch size) and the bound of that mean, in the ledger's run meta
(``step_window``) and ``profiler runs --json`` (``step_energy_window``).

A window's energy is the run's GPU energy from its first step's start to its last step's end,
the time between steps included (data loading, host work: part of what a step costs), divided
by its steps: the run's share of each device's energy over the span (all of it alone on a
device; on a shared one, its share of the steps' energy). Where the run is alone on its
devices the truth lies within the bound whatever power did between samples (the counter
path). Plain arithmetic: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from profiler.accounting.energy import EnergyCurve, step_bound_j

STEP_WINDOW_S = 10.0
"""A window closes once its steps span at least this many seconds (a hundred 10 Hz samples:
its bound is then about two sampling intervals' energy over the window's)."""


@dataclass(frozen=True)
class StepWindow:
    """The steps of one window: ``steps`` steps from ``start_mono`` to ``end_mono`` (monotonic
    seconds) used ``joules`` of GPU energy in all (the time between them included), within
    ``bound_j`` joules of the truth;
    ``samples_per_step`` is the run's batch size (None: unknown)."""

    start_mono: float
    end_mono: float
    steps: int
    joules: float
    bound_j: float
    samples_per_step: int | None = None

    @property
    def joules_per_step(self) -> float:
        """Mean GPU joules per step over the window."""
        return self.joules / self.steps

    @property
    def bound_per_step_j(self) -> float:
        """How far :attr:`joules_per_step` may be from the truth (joules)."""
        return self.bound_j / self.steps

    @property
    def joules_per_sample(self) -> float | None:
        """Mean GPU joules per sample (None without a batch size)."""
        if not self.samples_per_step:
            return None
        return self.joules_per_step / self.samples_per_step

    def to_meta(self) -> dict[str, float | int | None]:
        """The public form (ledger meta, ``profiler runs --json``)."""
        return {
            "start_mono": self.start_mono,
            "end_mono": self.end_mono,
            "seconds": self.end_mono - self.start_mono,
            "steps": self.steps,
            "joules_per_step": self.joules_per_step,
            "bound_joules_per_step": self.bound_per_step_j,
            "joules_per_sample": self.joules_per_sample,
        }


@dataclass
class WindowAccumulator:
    """The open window of a run: its steps so far and, per device, the run's joules in them
    and the device's (their ratio is the run's share of the device)."""

    start_mono: float | None = None
    end_mono: float = 0.0
    steps: int = 0
    joules_by_device: dict[str, float] = field(default_factory=dict)
    whole_by_device: dict[str, float] = field(default_factory=dict)

    def add(
        self,
        start_mono: float,
        end_mono: float,
        parts: Mapping[str, float],
        wholes: Mapping[str, float],
    ) -> None:
        """One resolved step from ``start_mono`` to ``end_mono``: per device uuid the run's
        joules in it (``parts``) and the device's (``wholes``)."""
        if self.start_mono is None:
            self.start_mono = start_mono
        self.end_mono = max(self.end_mono, end_mono)
        self.steps += 1
        for uuid, joules in parts.items():
            self.joules_by_device[uuid] = self.joules_by_device.get(uuid, 0.0) + joules
            self.whole_by_device[uuid] = self.whole_by_device.get(uuid, 0.0) + wholes[uuid]

    @property
    def full(self) -> bool:
        """True once the window's steps span :data:`STEP_WINDOW_S` seconds."""
        return self.start_mono is not None and self.end_mono - self.start_mono >= STEP_WINDOW_S

    def close(
        self, curves: Mapping[str, EnergyCurve], samples_per_step: int | None
    ) -> StepWindow | None:
        """Close the window (a new one starts) and return it: its joules and their bound from
        each device's curve (``curves``: uuid -> curve). None when it has no step, or when a
        device's curve no longer covers it (or is gone): its bound is then unknown."""
        start = self.start_mono
        if start is None or self.steps == 0:
            return None
        end, joules, bound = self.end_mono, 0.0, 0.0
        known = True
        for uuid, part in self.joules_by_device.items():
            curve = curves.get(uuid)
            if curve is None or not (curve.covers(start) and curve.covers(end)):
                known = False
                break
            whole = self.whole_by_device[uuid]
            share = part / whole if whole > 0 else 1.0
            run_j = curve.energy_between(start, end) * share
            b = step_bound_j(curve, start, end, run_j)
            if b is None:
                known = False
                break
            joules, bound = joules + run_j, bound + b
        window = StepWindow(start, end, self.steps, joules, bound, samples_per_step)
        self.start_mono, self.end_mono, self.steps = None, 0.0, 0
        self.joules_by_device, self.whole_by_device = {}, {}
        return window if known else None
