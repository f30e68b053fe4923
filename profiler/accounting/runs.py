"""Live runs: which processes, ranks and devices belong to which run, their step statistics,
and end detection (every process said ``bye``, or every process is gone).

Times ending in ``_mono`` are seconds on CLOCK_MONOTONIC (the clock hooks send); times ending in
``_at`` are unix seconds.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any

from profiler.accounting.energy import percentile
from profiler.accounting.mig import MigHold
from profiler.accounting.step_window import StepWindow, WindowAccumulator
from profiler.cost.records import RunCost
from profiler.ingest.messages import StepExtras

# Histogram bucket upper bounds.
STEP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STEP_JOULES_BUCKETS = (0.1, 0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
RESERVOIR_SIZE = 4096


@dataclass
class Histogram:
    """Cumulative-bucket histogram (Prometheus style): ``counts[i]`` counts values <= bounds[i]."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs including ``+Inf``, as exposition wants them."""
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            out.append((_fmt_bound(bound), running))
        out.append(("+Inf", self.n))
        return out


def _fmt_bound(bound: float) -> str:
    return repr(float(bound))


def attribution_basis(seconds: dict[str, float]) -> str | None:
    """The basis of a run's GPU energy split from its device-seconds per basis: ``"activity"``
    when all of them were split by measured per-process activity, ``"equal"`` when all equally,
    ``"slices"`` when all by MIG instance size (a MIG GPU without per-process activity),
    ``"mixed"`` when several occur (the seconds of each say how much); None before any."""
    bases = [basis for basis, s in seconds.items() if s > 0]
    if not bases:
        return None
    return bases[0] if len(bases) == 1 else "mixed"


@dataclass
class ProcessInfo:
    """One training process of a run. ``create_time`` (unix seconds) guards against pid reuse."""

    pid: int
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    devices: tuple[str, ...] = ()
    create_time: float | None = None
    said_bye: bool = False
    gone: bool = False
    steps: int = 0
    samples: int = 0
    # Framework memory, latest reading: (allocated, peak allocated, reserved) bytes.
    memory: tuple[int | None, int | None, int | None] | None = None
    # Recorded from outside (``profiler attach``): nobody will say ``bye`` for it, and its exit
    # status cannot be known, so its end ends it as ``finished`` rather than ``lost``.
    attached: bool = False
    # Watched by ``profiler run``, which sends its ``bye`` with the exit status when it ends:
    # found gone, it gets a short grace (``missing_since``, monotonic seconds) for that bye.
    watched: bool = False
    missing_since: float | None = None
    # Its hook's ``sent`` totals were compared with what was recorded (once, at its first hello
    # to this daemon, and only in a run restored from a previous daemon's ledger).
    reconciled: bool = False


@dataclass
class PendingStep:
    """A step whose energy is not known yet (the energy curve does not reach its end)."""

    start_mono: float
    end_mono: float


@dataclass
class Run:
    """A run as the daemon knows it; totals include what a previous daemon recorded."""

    id: str
    name: str
    project: str = ""
    user: str = ""
    framework: str = ""
    framework_version: str = ""
    hook: str = ""
    host: str = ""
    batch_size: int | None = None
    total_steps: int | None = None
    clock: str = "host_monotonic"
    samples_source: str = ""
    memory_source: str = ""
    status: str = "running"
    started_at: float = 0.0
    ended_at: float | None = None
    start_mono: float = 0.0
    last_event_mono: float = 0.0
    end_mono: float | None = None
    # A wall-clock anchor: unix seconds = mono + wall_offset_s.
    wall_offset_s: float = 0.0
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    # The run's steps are the job's steps: the largest count any rank reported (ranks of a
    # data-parallel job step together); samples add up over ranks.
    steps: int = 0
    samples: int = 0
    # Whether anything counts this run's steps: a step-timing hook said hello, or a step
    # arrived. A run of processes no hook times (``profiler run`` without ``--hooks``, a script
    # with no optimizer) has unknown steps and samples (null), never 0. See :attr:`known_steps`.
    steps_known: bool = False
    rank_steps: dict[int, int] = field(default_factory=dict)
    rank_samples: dict[int, int] = field(default_factory=dict)
    # Steps (and their samples) a hook sent that no daemon recorded (a daemon SIGKILLed before
    # its flush): counted in ``steps`` from the hook's own totals, without timing or energy.
    unrecorded_steps: int = 0
    # pid -> (steps, samples) recorded for a process by a previous daemon, until this daemon
    # meets the process again (:meth:`new_process`).
    process_counts: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Restored from a previous daemon's ledger (or recovery file): only then can steps a hook
    # sent be missing for a reason this daemon should count (:meth:`count_unrecorded`).
    restored: bool = False
    timed_steps: int = 0  # steps in the step-time statistics (the lead rank's)
    last_step: int | None = None
    last_loss: float | None = None
    nonfinite_loss_steps: int = 0
    first_nonfinite_step: int | None = None
    nonfinite_since_mono: float | None = None  # end of the first step with a NaN/inf loss
    cost: RunCost = field(default_factory=RunCost)
    # Peak framework memory per rank: (allocated peak, reserved) bytes.
    rank_memory_peak: dict[int, tuple[int, int]] = field(default_factory=dict)
    step_time_sum_s: float = 0.0
    step_time_max_s: float = 0.0
    dropped_steps: int = 0
    gpu_energy_j: dict[str, float] = field(default_factory=dict)  # by device UUID
    gpu_seconds: dict[str, float] = field(default_factory=dict)  # by device UUID
    # Of gpu_energy_j, the run's equal share of its devices' idle power (joules); None while no
    # device it held gave an idle power (the split unknown, not 0).
    gpu_idle_energy_j: float | None = None
    # Device-seconds (of gpu_seconds) whose energy was split by measured per-process activity
    # ("activity") or equally among the holders ("equal"): see profiler.accounting.attribution.
    attribution_s: dict[str, float] = field(default_factory=dict)
    # The MIG instances the run held, by instance uuid (the keys of gpu_energy_j/gpu_seconds
    # for its shares of MIG GPUs): see profiler.accounting.mig.
    mig_instances: dict[str, MigHold] = field(default_factory=dict)
    cpu_energy_j: float = 0.0  # host CPU energy by CPU-time share (joules)
    cpu_energy_source: str = ""  # "rapl" or "estimated"
    host_rss_bytes: int | None = None  # resident memory of the run's process trees
    gpu_power_peak_w: float | None = None
    step_energy_sum_j: float = 0.0
    steps_with_energy: int = 0
    step_seconds: Histogram = field(default_factory=lambda: Histogram(STEP_SECONDS_BUCKETS))
    step_joules: Histogram = field(default_factory=lambda: Histogram(STEP_JOULES_BUCKETS))
    # Per step, how far its energy figure may be from the truth (joules; energy.step_bound_j).
    step_bound_joules: Histogram = field(default_factory=lambda: Histogram(STEP_JOULES_BUCKETS))
    # The latest closed window of steps and the open one (profiler.accounting.step_window).
    step_window: StepWindow | None = None
    step_window_open: WindowAccumulator = field(default_factory=WindowAccumulator)
    pending: list[PendingStep] = field(default_factory=list)
    # Device UUID -> monotonic time from which the run holds it.
    device_since: dict[str, float] = field(default_factory=dict)
    bye_status: str | None = None
    # The budgets that apply to the run as of the daemon's last check (profiler.budget): one
    # dict each (amount, scope, source, on_exceed, warn_at; money in the pricing's currency).
    budgets: list[dict[str, Any]] = field(default_factory=list)
    # The user the run belongs to (kernel uid of the process that opened it, or of the process
    # a proxy opened it for); None without credentials. Other users' messages (root's aside)
    # for the run are refused.
    owner_uid: int | None = None
    # Seconds of the run during which no daemon measured it (started before the daemon, or a
    # daemon restart): its energy there is missing, not zero. A restart gap the GPUs' own
    # energy counters measured (``gap_gpu_energy_j``) is not in it; host CPU energy in such a
    # gap is not measured (the CPU share is split from the daemon's own CPU readings).
    unmeasured_s: float = 0.0
    # GPU joules credited to the run across daemon restart gaps, read from the GPU's energy
    # counter (source "counter", measured, not estimated); already in ``gpu_energy_j``.
    gap_gpu_energy_j: float = 0.0
    # Run metadata from ``hello`` (``meta``): the scheduler's job id, user, account, the pod's
    # name and namespace, ``profiler run --meta``; string -> string, bounded by the decoder.
    meta: dict[str, str] = field(default_factory=dict)
    # CPU seconds (user + system) of the run's process trees, sampled at the process-check
    # rate; each tree is counted once, however many of its processes the run knows.
    cpu_seconds: float = 0.0
    _reservoir: list[float] = field(default_factory=list)
    _seen_durations: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))
    dirty: bool = True

    @property
    def live(self) -> bool:
        return self.status == "running"

    @property
    def known_steps(self) -> int | None:
        """The run's steps, or None when nothing times its steps (unknown, not 0)."""
        return self.steps if self.steps_known else None

    @property
    def known_samples(self) -> int | None:
        """The run's samples, or None when unknown: steps unknown, or the hook counts no samples
        (``samples_source == "none"``: no batch size was given or could be read)."""
        if not self.steps_known or self.samples_source == "none":
            return None
        return self.samples

    @property
    def attribution(self) -> str | None:
        """How the run's GPU energy was split (:func:`attribution_basis`)."""
        return attribution_basis(self.attribution_s)

    @property
    def total_gpu_energy_j(self) -> float:
        return sum(self.gpu_energy_j.values())

    @property
    def total_gpu_seconds(self) -> float:
        return sum(self.gpu_seconds.values())

    def to_wall(self, mono: float) -> float:
        return mono + self.wall_offset_s

    def lead_rank(self) -> int:
        """The rank whose steps time the run (the lowest rank known)."""
        return min((p.rank for p in self.processes.values()), default=0)

    def record_step(
        self,
        proc: ProcessInfo,
        step: int,
        start_mono: float,
        end_mono: float,
        samples: int,
        extras: StepExtras | None = None,
    ) -> float | None:
        """Count one finished step of one process. Every rank's steps and samples are counted;
        step timing, step energy and the loss come from the lead rank only (its step stands for
        the job's step). Returns the step's duration in seconds (the device's clock when the hook
        sent it), or None for a non-lead rank's step."""
        self.steps_known = True
        proc.steps += 1
        proc.samples += samples
        rank = proc.rank
        self.rank_steps[rank] = self.rank_steps.get(rank, 0) + 1
        self.rank_samples[rank] = self.rank_samples.get(rank, 0) + samples
        self.steps = max(self.steps, self.rank_steps[rank])
        self.samples += samples
        self.last_event_mono = max(self.last_event_mono, end_mono)
        self.dirty = True
        if extras is not None and extras.memory is not None:
            proc.memory = extras.memory
            alloc_peak, reserved = extras.memory[1] or 0, extras.memory[2] or 0
            old = self.rank_memory_peak.get(rank, (0, 0))
            self.rank_memory_peak[rank] = (max(old[0], alloc_peak), max(old[1], reserved))
        if rank != self.lead_rank():
            return None
        duration = max(0.0, end_mono - start_mono)
        if extras is not None:
            if extras.dev_s is not None:
                duration = extras.dev_s
            if extras.loss is not None:
                self.last_loss = extras.loss
            if extras.nonfinite:
                self.nonfinite_loss_steps += 1
                if self.first_nonfinite_step is None:
                    self.first_nonfinite_step = self.steps
                    self.nonfinite_since_mono = end_mono
        self.last_step = step
        self.timed_steps += 1
        self.step_time_sum_s += duration
        self.step_time_max_s = max(self.step_time_max_s, duration)
        self.step_seconds.observe(duration)
        self._keep_duration(duration)
        self.pending.append(PendingStep(start_mono, end_mono))
        return duration

    def _keep_duration(self, duration: float) -> None:
        """Reservoir sample of step durations for quantiles (memory stays bounded)."""
        self._seen_durations += 1
        if len(self._reservoir) < RESERVOIR_SIZE:
            self._reservoir.append(duration)
            return
        j = self._rng.randrange(self._seen_durations)
        if j < RESERVOIR_SIZE:
            self._reservoir[j] = duration

    @property
    def step_time_mean_s(self) -> float | None:
        return self.step_time_sum_s / self.timed_steps if self.timed_steps else None

    def step_time_quantile_s(self, q: float) -> float | None:
        return percentile(sorted(self._reservoir), q)

    def seed_durations(self, durations: list[float]) -> None:
        """Restore the quantile reservoir from the ledger after a daemon restart."""
        self._reservoir = list(durations[:RESERVOIR_SIZE])
        self._seen_durations = max(self.steps, len(self._reservoir))

    @property
    def reservoir(self) -> list[float]:
        return list(self._reservoir)

    def new_process(self, pid: int, create_time: float | None) -> ProcessInfo:
        """A process of this run as this daemon first meets it, with the steps and samples a
        previous daemon recorded for it (so its hook's totals can be compared)."""
        steps, samples = self.process_counts.pop(pid, (0, 0))
        return ProcessInfo(pid=pid, create_time=create_time, steps=steps, samples=samples)

    def count_unrecorded(self, proc: ProcessInfo, sent_steps: int, sent_samples: int) -> int:
        """The process's hook says it sent ``sent_steps`` steps with ``sent_samples`` samples
        for this run; what no daemon recorded of them (lost with a daemon killed before its
        flush) is counted now, without timing or energy. Returns the steps added."""
        missing = sent_steps - proc.steps
        if missing <= 0:
            return 0
        samples = max(0, sent_samples - proc.samples)
        proc.steps += missing
        proc.samples += samples
        self.rank_steps[proc.rank] = self.rank_steps.get(proc.rank, 0) + missing
        self.rank_samples[proc.rank] = self.rank_samples.get(proc.rank, 0) + samples
        self.steps = max(self.steps, self.rank_steps[proc.rank])
        self.samples += samples
        self.steps_known = True
        self.unrecorded_steps += missing
        self.dirty = True
        return missing

    def all_processes_done(self) -> bool:
        return bool(self.processes) and all(p.said_bye or p.gone for p in self.processes.values())

    def final_status(self) -> str:
        """How the run ended: the worst ``bye`` status, or ``lost`` if a process vanished."""
        if any(p.gone and not p.said_bye for p in self.processes.values()):
            return "lost"
        return self.bye_status or "finished"
