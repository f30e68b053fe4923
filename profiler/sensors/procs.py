"""The host's process table and pid helpers, from ``/proc`` and psutil: one scan of every process
(parents, CPU seconds, resident bytes) for the daemon's accounting and the simulated GPU's load,
process-tree figures, ancestry, and whether a pid still names the process it named (its create
time). CPU in seconds, memory in bytes, times in unix seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

_PROCESS_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


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

    def __init__(self, stats: dict[int, ProcStat], parents: dict[int, int] | None = None) -> None:
        """``stats``: the processes read (pid -> figures); ``parents``: pid -> parent pid of
        every process known, where that is more than ``stats`` (:class:`ProcessScanner`:
        figures for some trees, parents for all); by default the parents in ``stats``."""
        self.stats = stats
        self.parents = parents if parents is not None else {p: s.ppid for p, s in stats.items()}
        self._children: dict[int, list[int]] | None = None

    @classmethod
    def read(cls, proc_root: str | Path = "/proc") -> ProcessTable:
        stats: dict[int, ProcStat] = {}
        root = str(proc_root)
        try:
            names = os.listdir(root)
        except OSError:
            return cls(stats)
        for name in names:
            if name.isdigit():
                stat = read_stat(root, int(name))
                if stat is not None:  # else gone while we looked, or not readable
                    stats[int(name)] = stat
        return cls(stats)

    def _children_of(self) -> dict[int, list[int]]:
        if self._children is None:
            children: dict[int, list[int]] = {}
            for pid, ppid in self.parents.items():
                children.setdefault(ppid, []).append(pid)
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
        parents = self.parents
        ppid = parents.get(pid)
        if ppid is None:
            return None
        out: list[int] = []
        while ppid > 1 and len(out) < MAX_ANCESTRY and ppid != pid and ppid not in out:
            out.append(ppid)  # (a pid reused during the scan can make a cycle: stop there)
            parent = parents.get(ppid)
            if parent is None:
                break
            ppid = parent
        return out

    def tree_cpu_seconds(self, pid: int) -> float | None:
        """CPU seconds (user + system) of ``pid`` and its descendants; None if ``pid`` is not
        in the table. Each process's reaped children (``cutime``/``cstime``) are included, which
        keeps the time of workers that exited (a DataLoader worker) without counting anyone
        twice. Time of orphans reparented away from the tree is missed."""
        if pid not in self.stats:
            return None
        stats = self.stats
        return sum(stats[p].cpu_s for p in (pid, *self.descendants(pid)) if p in stats)

    def tree_rss_bytes(self, pid: int) -> int | None:
        """Resident bytes of ``pid`` plus its descendants; None if ``pid`` is not in the table.
        Shared pages count once per process (RSS, not PSS), so this can overstate."""
        if pid not in self.stats:
            return None
        stats = self.stats
        return sum(stats[p].rss_bytes for p in (pid, *self.descendants(pid)) if p in stats)

    def outermost(self, pids: Iterable[int]) -> set[int]:
        """The pids of ``pids`` that are not descendants of another one of them: summing
        :meth:`tree_cpu_seconds` over these counts every process once, where the set holds a
        process and its child (``profiler run``'s child and a hooked training process it
        started). A pid not in the table is kept."""
        pids = set(pids)
        if len(pids) < 2:
            return pids
        return {pid for pid in pids if pids.isdisjoint(self.ancestors(pid) or ())}


def read_stat(proc_root: str, pid: int) -> ProcStat | None:
    """``<proc_root>/<pid>/stat`` parsed; None when the process is gone or it cannot be read."""
    try:
        fd = os.open(f"{proc_root}/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        return parse_stat(data.decode("ascii", errors="replace"))
    except (OSError, ValueError, IndexError):
        return None


class ProcessScanner:
    """The host's process table for the daemon's once-a-second CPU accounting, read for less
    than a whole scan of ``/proc`` each time: a process's parent is read once, when its pid
    first appears (and again when its parent exits: it was reparented), and CPU and memory
    figures are read fresh only for the process trees asked for (:meth:`read`'s ``roots``).
    Every ``full_every`` scans (the first included) every process is read again, so a pid that
    exited and was reused between two scans carries a wrong parent for at most that many
    scans. ``last_reads`` counts the ``stat`` files the last scan read."""

    def __init__(self, proc_root: str | Path = "/proc", *, full_every: int = 30) -> None:
        self.root = str(proc_root)
        self.full_every = max(1, full_every)
        self.last_reads = 0
        self._parents: dict[int, int] = {}
        self._scans = 0

    def read(self, roots: Iterable[int]) -> ProcessTable:
        """A table with every living process's parent, and figures (:class:`ProcStat`) for
        ``roots`` and their descendants (a root that is gone is left out)."""
        try:
            pids = {int(n) for n in os.listdir(self.root) if n.isdigit()}
        except OSError:
            self._parents.clear()
            return ProcessTable({})
        full = self._scans % self.full_every == 0
        self._scans += 1
        parents = self._parents
        gone = parents.keys() - pids
        for pid in gone:
            del parents[pid]
        if full:
            todo = pids
        else:  # new pids, and those whose parent exited (reparented)
            todo = (pids - parents.keys()) | {p for p, ppid in parents.items() if ppid in gone}
        stats: dict[int, ProcStat] = {}
        for pid in todo:
            stat = read_stat(self.root, pid)
            if stat is None:
                parents.pop(pid, None)
            else:
                stats[pid] = stat
                parents[pid] = stat.ppid
        reads = len(todo)
        table = ProcessTable({}, dict(parents))
        tree = [p for r in set(roots) if r in parents for p in (r, *table.descendants(r))]
        for pid in tree:
            if pid not in stats:
                reads += 1
                stat = read_stat(self.root, pid)
                if stat is not None:
                    stats[pid] = stat
                    parents[pid] = stat.ppid  # the next scan's (a reparented member)
        self.last_reads = reads
        table.stats = {pid: stats[pid] for pid in tree if pid in stats}
        return table


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


# ---- pids


def create_time(pid: int) -> float | None:
    """The start time of process ``pid`` (unix seconds, as psutil gives it), or None when there is
    no such process (or it cannot be read)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def owner_uid(pid: int) -> int | None:
    """The real uid of process ``pid``, or None when there is no such process."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def alive(pid: int, create_time: float | None) -> bool:
    """Whether process ``pid`` lives (not a zombie) and is the one created at ``create_time``
    (unix seconds; None: any process of that pid), not a later process given the same pid."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.01
    except (psutil.Error, OSError):
        return False
