"""CPU accounting: the host's CPU energy (from the CPU sensor's zones) shared among runs by the
CPU time of their process trees, and each run's CPU seconds and resident memory. Plain
arithmetic over a process table the caller reads: no I/O here.

Energy in joules, CPU time in seconds, memory in bytes, times in unix seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from profiler.accounting.energy import split_cpu_energy
from profiler.accounting.rollups import RollupFor, add_priced
from profiler.accounting.runs import ProcessInfo, Run
from profiler.sensors.base import CpuSample

if TYPE_CHECKING:
    from profiler.cost.meter import CostMeter

BORN_WITH_RUN_S = 1.0  # a process created at most this long before its run began is its own


class ProcessTree(Protocol):
    """The host's processes at one moment (:class:`profiler.sensors.procs.ProcessTable`)."""

    def outermost(self, pids: Iterable[int]) -> set[int]: ...

    def tree_cpu_seconds(self, pid: int) -> float | None: ...

    def tree_rss_bytes(self, pid: int) -> int | None: ...


@dataclass
class CpuAccount:
    """The host's CPU energy as last read, and what was already shared out of it."""

    energy_j: dict[str, tuple[float, str]] = field(default_factory=dict)  # zone -> (J, source)
    total_j: float | None = None  # host CPU joules since start (all zones)
    source: str = ""
    mark: tuple[float, float] | None = None  # (cpu joules, busy cpu seconds) at the last share
    proc_cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU s at the last check

    def observe(self, samples: list[CpuSample], total_j: float | None) -> None:
        """Take one CPU sensor reading: every zone's cumulative joules, and ``total_j``, the
        host's total over the zones (None when the zones do not give one)."""
        for s in samples:
            self.energy_j[s.zone] = (s.energy_j, s.source)
        if total_j is not None and samples:
            self.total_j = total_j
            self.source = samples[0].source

    def forget(self, pid: int) -> None:
        """``pid``'s run ended: its next CPU reading (if the pid comes back) is a new baseline."""
        self.proc_cpu.pop(pid, None)

    def account(
        self,
        runs: dict[str, Run],
        table: ProcessTree,
        busy: float,
        *,
        rollup_for: RollupFor,
        cost_meter: CostMeter,
        minute_wall: float,
    ) -> None:
        """Give runs their share of host CPU energy since the last call, by CPU time (run at
        the process-check rate), add the CPU time to the run's, and refresh each run's
        resident memory. Each process tree counts once: a process inside the tree of another
        process of the same run (the hooked training under ``profiler run``'s child) is
        counted with that tree, not again. ``table``: the host's processes now; ``busy``: the
        host's busy CPU seconds now; ``minute_wall``: unix seconds, the energy's minute."""
        run_cpu: dict[str, float] = {}
        for run in runs.values():
            if not run.live:
                continue
            seconds, rss = 0.0, 0
            active = [p for p in run.processes.values() if not (p.said_bye or p.gone)]
            outermost = table.outermost(p.pid for p in active)
            for proc in active:
                if proc.pid not in outermost:  # counted with its ancestor's tree
                    self.proc_cpu.pop(proc.pid, None)  # a fresh baseline if it stands alone
                    continue
                cpu = table.tree_cpu_seconds(proc.pid)
                prev = self.proc_cpu.get(proc.pid)
                if prev is None and born_with(proc, run):
                    prev = 0.0  # all of its CPU time is the run's (profiler run's child)
                if cpu is not None:
                    if prev is not None and cpu >= prev:
                        seconds += cpu - prev
                    self.proc_cpu[proc.pid] = cpu
                rss += table.tree_rss_bytes(proc.pid) or 0
            run.host_rss_bytes = rss
            run_cpu[run.id] = seconds
            if seconds:
                run.cpu_seconds += seconds
                run.dirty = True
        if self.mark is not None and self.total_j is not None:
            energy_j = self.total_j - self.mark[0]
            shares = split_cpu_energy(energy_j, busy - self.mark[1], run_cpu)
            for run_id, joules in shares.items():
                run = runs[run_id]
                run.cpu_energy_j += joules
                run.cpu_energy_source = self.source
                rollup = rollup_for(run_id, minute_wall)
                rollup.cpu_energy_j += joules
                add_priced(rollup, cost_meter.cpu_energy(run.cost, joules))
                run.dirty = True
        if self.total_j is not None:
            self.mark = (self.total_j, busy)


def born_with(proc: ProcessInfo, run: Run) -> bool:
    """Whether ``proc`` was started for the run (``profiler run``'s child, created just before
    its ``hello``), so that all its CPU time counts; an older process (attached, or hooked
    after a long start-up) counts from when the daemon first read it."""
    return proc.create_time is not None and proc.create_time >= run.started_at - BORN_WITH_RUN_S
