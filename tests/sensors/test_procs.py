"""The process-tree table (/proc) and the process-tree helpers (profiler.sensors.procs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from profiler.sensors.procs import (
    ProcessTable,
    ProcStat,
    ancestor_pids,
    outermost_pids,
    process_tree_cpu_seconds,
    process_tree_rss_bytes,
)

# The child burns 0.1 s of CPU, starts a grandchild that burns 0.2 s, reports its pid, then both
# wait on stdin. CPU time (process_time), not wall time, so the figures hold on a busy machine.
BURN = "import time\nwhile time.process_time() < {s}: pass\n"
GRANDCHILD = BURN.format(s=0.2) + "import sys\nsys.stdin.read()\n"
CHILD = (
    "import subprocess, sys\n"
    + BURN.format(s=0.1)
    + f"g = subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}], stdin=subprocess.PIPE)\n"
    + "print(g.pid, flush=True)\n"
    + "sys.stdin.read()\n"
    + "g.stdin.close()\n"
    + "g.wait()\n"
)
# The child starts a grandchild that burns 0.2 s and exits; the child reaps it and waits.
REAPER = (
    "import subprocess, sys\n"
    + f"subprocess.run([sys.executable, '-c', {BURN.format(s=0.2)!r}], check=True)\n"
    + "print('reaped', flush=True)\n"
    + "sys.stdin.read()\n"
)


def _own_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@pytest.fixture
def family() -> Iterator[tuple[subprocess.Popen[str], int]]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        deadline = time.monotonic() + 5.0
        while _own_cpu(grandchild) < 0.19 and time.monotonic() < deadline:
            time.sleep(0.01)  # the grandchild is still burning its 0.2 s
        yield child, grandchild
    finally:
        child.communicate(timeout=10)  # closes stdin: both exit


def test_tree_cpu_seconds_counts_living_descendants(
    family: tuple[subprocess.Popen[str], int],
) -> None:
    child, grandchild = family
    parts = _own_cpu(child.pid) + _own_cpu(grandchild)
    total = process_tree_cpu_seconds(child.pid)
    assert total is not None
    assert total >= parts >= 0.25  # 0.1 s + 0.2 s burnt, counted in 10 ms ticks
    assert process_tree_cpu_seconds(grandchild) == pytest.approx(_own_cpu(grandchild), abs=0.02)


def test_tree_rss_counts_living_descendants(family: tuple[subprocess.Popen[str], int]) -> None:
    child, grandchild = family
    own = psutil.Process(child.pid).memory_info().rss
    other = psutil.Process(grandchild).memory_info().rss
    total = process_tree_rss_bytes(child.pid)
    assert total is not None
    assert total == pytest.approx(own + other, rel=0.2)
    assert total > own


def test_tree_cpu_seconds_keeps_reaped_children() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", REAPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "reaped"
        assert psutil.Process(child.pid).children(recursive=True) == []
        total = process_tree_cpu_seconds(child.pid)
        assert total is not None and total >= 0.17
    finally:
        child.communicate(timeout=10)


def test_gone_process_is_none() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert process_tree_rss_bytes(gone.pid) is None
    assert process_tree_cpu_seconds(gone.pid) is None


def _stat(pid: int, comm: str, ppid: int, ticks: tuple[int, int, int, int], rss_pages: int) -> str:
    """A /proc/<pid>/stat line with the fields ProcessTable reads (the rest zero)."""
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(t) for t in ticks] + ["0"] * 6
    fields += [str(rss_pages)] + ["0"] * 27
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


def test_process_table_reads_a_proc_tree_from_files(tmp_path: Path) -> None:
    """A fixture /proc: 10 -> 11 -> 12, and 13 beside them; a command name with spaces and
    parentheses; an entry that is not a process, one whose stat vanished, one unreadable."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    for pid, comm, ppid, ticks, rss in (
        (10, "python", 1, (100, 50, 30, 20), 1000),
        (11, "pt_data_worker (0) :)", 10, (10, 10, 0, 0), 200),
        (12, "grand", 11, (5, 5, 0, 0), 100),
        (13, "other", 1, (999, 0, 0, 0), 5),
    ):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(_stat(pid, comm, ppid, ticks, rss))
    (tmp_path / "self").mkdir()
    (tmp_path / "14").mkdir()  # gone: no stat file any more
    (tmp_path / "15").mkdir()
    (tmp_path / "15" / "stat").write_text("garbage")
    table = ProcessTable.read(tmp_path)
    assert sorted(table.stats) == [10, 11, 12, 13]
    assert table.stats[11] == ProcStat(10, 20 / tick, 200 * page)
    assert sorted(table.descendants(10)) == [11, 12]
    assert table.ancestors(12) == [11, 10] and table.ancestors(99) is None
    assert table.tree_cpu_seconds(10) == pytest.approx((200 + 20 + 10) / tick)
    assert table.tree_rss_bytes(11) == 300 * page
    assert table.tree_cpu_seconds(14) is None and table.tree_rss_bytes(99) is None
    assert table.outermost({10, 12, 13}) == {10, 13}
    assert table.outermost({12, 99}) == {12, 99}  # one it cannot place is kept
    assert ProcessTable.read(tmp_path / "missing").stats == {}


def test_the_table_matches_psutil_for_this_process() -> None:
    me = psutil.Process()
    table = ProcessTable.read()
    t = me.cpu_times()
    assert table.stats[me.pid].ppid == me.ppid()
    assert table.stats[me.pid].cpu_s == pytest.approx(
        t.user + t.system + t.children_user + t.children_system, abs=0.5
    )
    assert table.tree_rss_bytes(me.pid) == pytest.approx(me.memory_info().rss, rel=0.2)


def test_a_pid_reused_during_the_scan_cannot_make_the_tree_loop() -> None:
    table = ProcessTable({100: ProcStat(200, 1.0, 10), 200: ProcStat(100, 2.0, 20)})
    assert table.descendants(100) == [200]
    assert table.tree_cpu_seconds(100) == pytest.approx(3.0)
    assert table.ancestors(100) == [200]


def test_process_tree_helpers(process_tree):
    child, grandchild = process_tree
    assert ancestor_pids(grandchild)[:2] == [child.pid, os.getpid()]
    assert outermost_pids({child.pid, grandchild}) == {child.pid}
    assert outermost_pids({grandchild}) == {grandchild}
    assert outermost_pids({child.pid, grandchild, os.getpid()}) == {os.getpid()}
    assert ancestor_pids(2**22 + 1) == []


def _write_proc(root: Path, pid: int, ppid: int, ticks: int = 0, rss: int = 1) -> None:
    (root / str(pid)).mkdir(exist_ok=True)
    (root / str(pid) / "stat").write_text(_stat(pid, "p", ppid, (ticks, 0, 0, 0), rss))


def test_the_scanner_reads_every_parent_once_and_fresh_figures_only_for_the_trees_asked_for(
    tmp_path: Path,
) -> None:
    """ProcessScanner (the daemon's once-a-second CPU accounting): a pid's parent is read once,
    when the pid first appears; each scan then reads only the trees of ``roots``. A fixture
    /proc: 10 -> 11 -> 12, and 13 beside them."""
    from profiler.sensors.procs import ProcessScanner

    tick = os.sysconf("SC_CLK_TCK")
    for pid, ppid, ticks in ((10, 1, 100), (11, 10, 10), (12, 11, 5), (13, 1, 999)):
        _write_proc(tmp_path, pid, ppid, ticks)
    scanner = ProcessScanner(tmp_path)
    table = scanner.read([10])
    assert scanner.last_reads == 4  # every process once
    assert sorted(table.stats) == [10, 11, 12]  # figures only for the tree asked for
    assert table.tree_cpu_seconds(10) == pytest.approx(115 / tick)
    assert table.ancestors(12) == [11, 10] and table.ancestors(13) == []
    assert table.outermost({10, 12, 13}) == {10, 13}

    _write_proc(tmp_path, 11, 10, ticks=50)  # it ran: fresh figures for the tree
    (tmp_path / "13" / "stat").write_text("garbage")  # not read again: its parent is known
    _write_proc(tmp_path, 16, 12, ticks=7)  # a new process, a great-grandchild of 10
    table = scanner.read([10])
    assert scanner.last_reads == 4  # 10, 11, 12 and the new 16; not 13
    assert sorted(table.stats) == [10, 11, 12, 16]
    assert table.tree_cpu_seconds(10) == pytest.approx((100 + 50 + 5 + 7) / tick)
    assert table.ancestors(13) == []

    # 11 exits: its children are reparented (to 1 here), so they are read again
    for name in ("stat",):
        (tmp_path / "11" / name).unlink()
    (tmp_path / "11").rmdir()
    _write_proc(tmp_path, 12, 1, ticks=5)
    table = scanner.read([10])
    assert sorted(table.stats) == [10]
    assert table.ancestors(16) == [12]
    assert table.tree_cpu_seconds(12) is None  # not asked for: no figures
    assert scanner.read([]).stats == {}
    assert ProcessScanner(tmp_path / "missing").read([10]).stats == {}


def test_the_scanner_reads_every_process_again_now_and_then(tmp_path: Path) -> None:
    """A pid reused between two scans keeps the parent read for the process before it until
    the scanner's full re-read (every ``full_every`` scans)."""
    from profiler.sensors.procs import ProcessScanner

    _write_proc(tmp_path, 10, 1)
    _write_proc(tmp_path, 13, 1)
    scanner = ProcessScanner(tmp_path, full_every=3)
    assert scanner.read([10]).descendants(10) == []
    _write_proc(tmp_path, 13, 10)  # pid 13 died and came back as a child of 10
    assert scanner.read([10]).descendants(10) == []  # not seen yet
    assert scanner.read([10]).descendants(10) == []
    assert scanner.read([10]).descendants(10) == [13]  # the third scan after the first: all
    assert scanner.last_reads == 2


def test_the_scanner_matches_a_full_scan_on_the_real_proc(
    family: tuple[subprocess.Popen[str], int],
) -> None:
    from profiler.sensors.procs import ProcessScanner

    child, grandchild = family
    scanner = ProcessScanner()
    scanner.read([child.pid])
    table = scanner.read([child.pid])
    full = ProcessTable.read()
    assert scanner.last_reads < len(full.stats)  # the second scan reads the tree, not the host
    assert table.descendants(child.pid) == [grandchild]
    assert table.tree_cpu_seconds(child.pid) == pytest.approx(
        full.tree_cpu_seconds(child.pid), abs=0.05
    )
    assert table.ancestors(grandchild) == full.ancestors(grandchild)
    assert table.ancestors(os.getpid()) == full.ancestors(os.getpid())
