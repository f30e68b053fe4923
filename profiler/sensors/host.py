"""Host-side figures from psutil: an estimated CPU energy when RAPL is missing, process-tree
memory and CPU time, and the choice between RAPL and the estimate.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from profiler.sensors.base import CpuSample, CpuSensor, SensorUnavailable
from profiler.sensors.rapl import RaplSensor

SOURCE = "estimated"
IDLE_FRACTION = 0.12
"""Share of TDP drawn at 0 % load (an assumption: idle package power of current server and desktop
parts is roughly 10-15 % of TDP)."""
TDP_W_PER_LOGICAL_CPU = 10.0
"""Assumed watts of TDP per logical CPU when the TDP is not given."""
TDP_MIN_W = 15.0
TDP_MAX_W = 250.0
"""Bounds of the assumed TDP in watts (a laptop part ... a large server socket)."""

_PROCESS_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def default_tdp_w(logical_cpus: int | None = None) -> float:
    """Assumed TDP in watts: 10 W per logical CPU, clamped to [15, 250] W.

    An assumption, not a measurement: pass ``tdp_w`` (config ``cpu_tdp_w``) to set the real
    figure from the CPU's datasheet.
    """
    n = logical_cpus if logical_cpus is not None else (psutil.cpu_count(logical=True) or 1)
    return min(TDP_MAX_W, max(TDP_MIN_W, TDP_W_PER_LOGICAL_CPU * n))


class HostSensor:
    """Estimated cumulative CPU energy in joules from TDP x load, for machines without RAPL.

    Power model (watts): ``P = tdp_w * (IDLE_FRACTION + (1 - IDLE_FRACTION) * load)``, with
    ``load`` the system-wide CPU utilization (0..1) since the previous sample, from
    ``cpu_percent(interval=None)`` (non-blocking; primed once here, since its first call says
    0.0). Integration: rectangle rule, ``E += P(load) * dt``. Because the model is linear in load
    and ``load`` is already the mean utilization over the interval, this is the exact integral of
    the model over the interval (a trapezoid between point powers would not be).

    ``psutil.cpu_percent(interval=None)`` keeps one reference point per thread: another caller
    on the sampling thread shortens this sensor's interval (the figure stays a fair estimate).
    """

    source = SOURCE

    def __init__(
        self,
        *,
        tdp_w: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        cpu_percent: Callable[..., float] = psutil.cpu_percent,
    ) -> None:
        if tdp_w is not None and tdp_w <= 0:
            raise ValueError(f"tdp_w must be positive watts, got {tdp_w}")
        self.tdp_assumed = tdp_w is None
        self.tdp_w = float(tdp_w) if tdp_w is not None else default_tdp_w()
        self.idle_fraction = IDLE_FRACTION
        self.clock = clock
        self._cpu_percent = cpu_percent
        self.errors: Counter[str] = Counter()
        self.energy_j = 0.0
        self.last_utilization_ratio: float | None = None
        self.last_power_w: float | None = None
        self._cpu_percent(interval=None)  # prime: the next call measures from here
        self._last_t = clock()

    def power_w(self, load: float) -> float:
        """Modelled power in watts at a utilization ratio ``load`` (clamped to 0..1)."""
        load = min(1.0, max(0.0, load))
        return self.tdp_w * (self.idle_fraction + (1.0 - self.idle_fraction) * load)

    def sample(self) -> list[CpuSample]:
        """Cumulative estimated joules since the sensor was made, as one zone ``"cpu"``."""
        t_s = self.clock()
        load = min(1.0, max(0.0, float(self._cpu_percent(interval=None)) / 100.0))
        dt = t_s - self._last_t
        power = self.power_w(load)
        if dt > 0:
            self.energy_j += power * dt
            self._last_t = t_s
        self.last_utilization_ratio = load
        self.last_power_w = power
        return [CpuSample(zone="cpu", t_s=t_s, energy_j=self.energy_j, source=SOURCE)]

    def describe(self) -> str:
        """The model in words, e.g. ``estimated from TDP 20 W x load``."""
        how = (
            f"assumed {TDP_W_PER_LOGICAL_CPU:g} W per logical CPU, clamped to "
            f"{TDP_MIN_W:g}-{TDP_MAX_W:g} W; set cpu_tdp_w"
            if self.tdp_assumed
            else "configured"
        )
        return (
            f"estimated from TDP {self.tdp_w:g} W ({how}) x load, "
            f"idle {self.idle_fraction:.0%} of TDP"
        )


# ---- process trees


@dataclass(frozen=True)
class ProcStat:
    """One process as ``/proc/<pid>/stat`` shows it. CPU in seconds, memory in bytes."""

    ppid: int
    cpu_s: float  # user + system of the process and of its reaped children (cutime, cstime)
    rss_bytes: int


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def parse_stat(text: str) -> ProcStat:
    """A ``/proc/<pid>/stat`` line -> :class:`ProcStat`; ValueError when it is not one. The
    command name (field 2) may hold spaces and parentheses, so fields are counted from the
    last ``)``."""
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime 14-17, rss (pages) 24
    ticks = sum(int(f) for f in fields[11:15])
    return ProcStat(int(fields[1]), ticks / _CLK_TCK, int(fields[21]) * _PAGE_BYTES)


class ProcessTable:
    """Every process of the host read at one moment (one pass over ``/proc/*/stat``): parents,
    CPU seconds and resident bytes, so that the daemon's once-a-second accounting of all its
    runs' process trees, and its lookups of a GPU process's ancestors, cost one scan of
    ``/proc`` instead of one per run and per query.

    Processes that vanish or cannot be read during the scan are left out. Zombies (exited, not
    yet reaped) stay in until reaped, with their CPU time: once reaped, that time moves into
    the parent's ``cutime``/``cstime``, so a tree's total counts it once either way."""

    def __init__(self, stats: dict[int, ProcStat]) -> None:
        self.stats = stats
        self._children: dict[int, list[int]] | None = None

    @classmethod
    def read(cls, proc_root: str | Path = "/proc") -> ProcessTable:
        stats: dict[int, ProcStat] = {}
        root = Path(proc_root)
        try:
            names = os.listdir(root)
        except OSError:
            return cls(stats)
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(root / name / "stat", encoding="ascii", errors="replace") as f:
                    stats[int(name)] = parse_stat(f.read())
            except (OSError, ValueError, IndexError):
                continue  # gone while we looked, or not readable
        return cls(stats)

    def _children_of(self) -> dict[int, list[int]]:
        if self._children is None:
            children: dict[int, list[int]] = {}
            for pid, stat in self.stats.items():
                children.setdefault(stat.ppid, []).append(pid)
            self._children = children
        return self._children

    def descendants(self, pid: int) -> list[int]:
        """The living descendants of ``pid`` (children first)."""
        children = self._children_of()
        out, todo, seen = [], list(children.get(pid, ())), {pid}
        while todo:
            child = todo.pop()
            if child in seen:  # a pid reused during the scan can make a cycle
                continue
            seen.add(child)
            out.append(child)
            todo.extend(children.get(child, ()))
        return out

    def ancestors(self, pid: int) -> list[int] | None:
        """The ancestors of ``pid``, its parent first, up to (not including) pid 1 or 0; None
        when ``pid`` is not in the table (it started after the scan)."""
        stat = self.stats.get(pid)
        if stat is None:
            return None
        out: list[int] = []
        ppid = stat.ppid
        while ppid > 1 and len(out) < MAX_ANCESTRY and ppid != pid and ppid not in out:
            out.append(ppid)  # (a pid reused during the scan can make a cycle: stop there)
            parent = self.stats.get(ppid)
            if parent is None:
                break
            ppid = parent.ppid
        return out

    def tree_cpu_seconds(self, pid: int) -> float | None:
        """CPU seconds (user + system) of ``pid`` and its descendants; None if ``pid`` is not
        in the table. Each process's reaped children (``cutime``/``cstime``) are included, which
        keeps the time of workers that exited (a DataLoader worker) without counting anyone
        twice. Time of orphans reparented away from the tree is missed."""
        if pid not in self.stats:
            return None
        return sum(self.stats[p].cpu_s for p in (pid, *self.descendants(pid)))

    def tree_rss_bytes(self, pid: int) -> int | None:
        """Resident bytes of ``pid`` plus its descendants; None if ``pid`` is not in the table.
        Shared pages count once per process (RSS, not PSS), so this can overstate."""
        if pid not in self.stats:
            return None
        return sum(self.stats[p].rss_bytes for p in (pid, *self.descendants(pid)))

    def outermost(self, pids: Iterable[int]) -> set[int]:
        """The pids of ``pids`` that are not descendants of another one of them: summing
        :meth:`tree_cpu_seconds` over these counts every process once, where the set holds a
        process and its child (``profiler run``'s child and a hooked training process it
        started). A pid not in the table is kept."""
        pids = set(pids)
        if len(pids) < 2:
            return pids
        return {pid for pid in pids if pids.isdisjoint(self.ancestors(pid) or ())}


def process_tree_rss_bytes(pid: int) -> int | None:
    """:meth:`ProcessTable.tree_rss_bytes` from a fresh scan of ``/proc``."""
    return ProcessTable.read().tree_rss_bytes(pid)


def process_tree_cpu_seconds(pid: int) -> float | None:
    """:meth:`ProcessTable.tree_cpu_seconds` from a fresh scan of ``/proc``."""
    return ProcessTable.read().tree_cpu_seconds(pid)


MAX_ANCESTRY = 64  # parents followed at most (a safety bound; real trees are a few deep)


def ancestor_pids(pid: int) -> list[int]:
    """The living ancestors of ``pid``, its parent first, up to (not including) pid 1 or 0;
    empty when ``pid`` cannot be seen. Reads one ``/proc/<pid>/stat`` per level (for a pid
    that a :class:`ProcessTable` does not hold yet)."""
    out: list[int] = []
    try:
        ppid = psutil.Process(pid).ppid()
        while ppid > 1 and len(out) < MAX_ANCESTRY:
            out.append(ppid)
            ppid = psutil.Process(ppid).ppid()
    except _PROCESS_GONE:
        pass
    return out


def outermost_pids(pids: Iterable[int]) -> set[int]:
    """:meth:`ProcessTable.outermost` from a fresh scan of ``/proc``."""
    return ProcessTable.read().outermost(pids)


# ---- discovery


def discover_cpu_sensor(
    *,
    root: str | Path = "/sys/class/powercap",
    tdp_w: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[CpuSensor, str]:
    """RAPL if it can be read, else the TDP x load estimate; with one line saying which and why."""
    try:
        rapl = RaplSensor(root, clock=clock)
    except SensorUnavailable as e:
        host = HostSensor(tdp_w=tdp_w, clock=clock)
        return host, f"CPU energy: {host.describe()} (RAPL unavailable: {e})"
    return rapl, rapl.describe()
