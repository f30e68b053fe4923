"""Review of the ledger's durability and restart code: a recovery file the ledger cannot take yet
at start (kept, its newer rows restored, merged later, never merged twice), a ledger that cannot
be re-opened or repaired (one line, the daemon lives on), and steps counted as unrecorded only
when a restart explains them."""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

import pytest
from inprocess import advance, hello, make_daemon

from hooks import wire
from hooks.client import Client
from profiler.config import Config
from profiler.daemon import persist
from profiler.ingest.messages import Bye, StepBatch
from profiler.ledger.recovery import read_recovery_records, recovery_path
from profiler.ledger.store import Ledger, LedgerError

TRACE = [[(100.0, 300.0)]]


def steps(clock, first: int, n: int) -> tuple:
    return tuple((i, clock.now + 0.01 * (i - first), clock.now + 0.01 * (i - first + 1), 4, None)
                 for i in range(first, first + n))  # fmt: skip


class ReadOnlyLedger(Ledger):
    """A ledger whose file takes no writes (SQLite's query_only): a full or read-only disk."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        self.db.execute("PRAGMA query_only = ON")


def leave_recovery(tmp_path: Path, *, end: bool) -> float:
    """A daemon flushes 50 steps of run ``r`` to the ledger, then its ledger takes no writes:
    100 more steps (and the bye when ``end``) go to the recovery file at its final flush.
    Returns the run's GPU energy then."""
    d, _sim, clock = make_daemon(tmp_path, TRACE)
    pid = os.getpid()
    d.sample()
    d.handle(hello("r", pid, clock.now))
    d.handle(StepBatch("r", pid, steps(clock, 1, 50), 0))
    advance(d, clock, 1.0)
    assert d.flush()
    d.ledger.db.execute("PRAGMA query_only = ON")
    d.handle(StepBatch("r", pid, steps(clock, 51, 100), 0))
    advance(d, clock, 70.0)  # into a new minute
    if end:
        d.handle(Bye("r", pid, "finished", clock.now))
        advance(d, clock, 1.0)
    energy = d.runs["r"].total_gpu_energy_j
    assert not d.final_flush().ok
    assert recovery_path(d.config).exists()
    assert d.ledger.run("r")["steps"] == 50  # the ledger's row is stale
    d.ledger.close()
    return energy


def rollup_sums(ledger: Ledger, run_id: str) -> tuple[int, float]:
    row = ledger.db.execute(
        "SELECT sum(steps), sum(gpu_energy_j) FROM rollups WHERE run_id = ?", (run_id,)
    ).fetchone()
    return row[0], row[1]


def test_a_recovery_merge_that_fails_at_start_is_kept_and_merged_by_a_later_flush(
    tmp_path, monkeypatch
):
    energy = leave_recovery(tmp_path, end=True)
    monkeypatch.setattr(persist, "Ledger", ReadOnlyLedger)
    d2, _sim, _clock = make_daemon(tmp_path, TRACE)  # raised AttributeError before the fix
    path = recovery_path(d2.config)
    assert path.exists() and d2.persist.recovery_pending
    assert not d2.flush()  # the ledger still takes nothing: the file stays
    assert path.exists() and "cannot merge" in d2.persist.last_flush_error
    d2.ledger.db.execute("PRAGMA query_only = OFF")  # space again
    assert d2.flush()
    assert not path.exists()
    row = d2.ledger.run("r")
    assert row["steps"] == 150 and row["samples"] == 600 and row["status"] == "finished"
    assert row["gpu_energy_j"] == pytest.approx(energy)
    assert rollup_sums(d2.ledger, "r")[0] == 150
    assert rollup_sums(d2.ledger, "r")[1] == pytest.approx(energy)


def test_a_running_run_is_restored_from_the_newer_rows_of_an_unmerged_recovery_file(
    tmp_path, monkeypatch
):
    """The merge fails at start: the run continues from the recovery file's row (150 steps),
    not the ledger's stale one (50), and the merge at a later flush is not overwritten."""
    leave_recovery(tmp_path, end=False)
    monkeypatch.setattr(persist, "Ledger", ReadOnlyLedger)
    d2, _sim, clock = make_daemon(tmp_path, TRACE)
    pid = os.getpid()
    assert d2.runs["r"].steps == 150  # was 50 before the fix
    d2.sample()
    d2.handle(StepBatch("r", pid, steps(clock, 151, 20), 0))
    advance(d2, clock, 1.0)
    d2.ledger.db.execute("PRAGMA query_only = OFF")
    assert d2.flush()
    row = d2.ledger.run("r")
    assert row["steps"] == 170 and row["samples"] == 680 and row["status"] == "running", row
    assert rollup_sums(d2.ledger, "r")[0] == 170


def test_a_merged_recovery_file_that_cannot_be_removed_is_never_merged_twice(tmp_path, monkeypatch):
    energy = leave_recovery(tmp_path, end=True)
    path = recovery_path(Config(home=tmp_path))
    assert len(read_recovery_records(path)[0]) == 1
    real_unlink = Path.unlink

    def refusing_unlink(self: Path, missing_ok: bool = False) -> None:
        if self == path:
            raise PermissionError(1, "Operation not permitted", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refusing_unlink)
    d2, _sim, _clock = make_daemon(tmp_path, TRACE)  # the OSError escaped before the fix
    assert path.exists() and not d2.persist.recovery_pending
    assert d2.flush()
    d2.ledger.close()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    d3, _sim, _clock = make_daemon(tmp_path, TRACE)  # finds it merged: removes it
    assert not path.exists()
    steps_sum, energy_sum = rollup_sums(d3.ledger, "r")
    assert steps_sum == 150 and energy_sum == pytest.approx(energy)  # counted once
    assert d3.ledger.run("r")["steps"] == 150
    assert d3.ledger.db.execute("SELECT count(*) FROM recovery_merges").fetchone()[0] == 1


def test_a_ledger_that_cannot_recreate_a_dropped_table_says_one_line(tmp_path):
    """A table dropped on a disk that has become read-only (a read-only bind mount): opening
    the ledger for writing is refused with one line (no sqlite3 error escapes)."""
    home = tmp_path / "home"
    home.mkdir()
    ledger = Ledger(home / "ledger.sqlite")
    ledger.db.execute("DROP TABLE rollups")
    ledger.close()
    keeper = sqlite3.connect(home / "ledger.sqlite")  # keeps the -wal and -shm files there
    keeper.execute("SELECT count(*) FROM runs").fetchone()
    if os.system(f"mount --bind {home} {home} && mount -o remount,ro,bind {home} 2>/dev/null"):
        os.system(f"umount -l {home} 2>/dev/null")
        pytest.skip("cannot make a read-only bind mount here")
    try:
        with pytest.raises(LedgerError, match="missing its rollups table") as e:
            Ledger(home / "ledger.sqlite")
        assert "\n" not in str(e.value)
    finally:
        os.system(f"umount -l {home}")
        keeper.close()


def test_a_ledger_path_turned_into_a_directory_fails_the_flush_then_recovers(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, TRACE)
    pid = os.getpid()
    d.sample()
    d.handle(hello("dir", pid, clock.now))
    d.handle(StepBatch("dir", pid, steps(clock, 1, 30), 0))
    advance(d, clock, 1.0)
    assert d.flush()
    ledger = d.config.ledger
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    ledger.mkdir()
    assert not d.flush() and not d.flush()
    assert d.health["ledger_write_errors"] == 2
    ledger.rmdir()
    assert d.flush()
    assert d.ledger.run("dir")["steps"] == 30


def test_a_stale_wal_that_cannot_be_removed_fails_the_flush_not_the_daemon(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, TRACE)
    pid = os.getpid()
    d.sample()
    d.handle(hello("wal", pid, clock.now))
    d.handle(StepBatch("wal", pid, steps(clock, 1, 30), 0))
    advance(d, clock, 1.0)
    assert d.flush()
    ledger = d.config.ledger
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    wal = Path(f"{ledger}-wal")
    wal.mkdir()
    (wal / "x").write_text("x")  # unlink raises IsADirectoryError
    assert not d.flush()  # raised before the fix
    assert d.health["ledger_write_errors"] == 1
    (wal / "x").unlink()
    wal.rmdir()
    assert d.flush()
    assert d.ledger.run("wal")["steps"] == 30


# ---- unrecorded steps: only what a restart explains ---------------------------------------------


def sent_hello(run: str, pid: int, mono: float, sent: int):
    msg = hello(run, pid, mono)
    msg.fields["sent"] = (sent, 4 * sent)
    return msg


def test_steps_refused_for_an_unknown_run_are_not_counted_as_unrecorded(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, TRACE)
    pid = os.getpid()
    d.sample()
    d.handle(StepBatch("early", pid, steps(clock, 1, 40), 0))  # before its hello: refused
    assert d.health["messages_unknown_run"] == 1
    d.handle(sent_hello("early", pid, clock.now, 40))
    d.handle(StepBatch("early", pid, steps(clock, 41, 10), 0))
    advance(d, clock, 6.0)
    d.handle(sent_hello("early", pid, clock.now, 50))
    run = d.runs["early"]
    assert run.steps == 10 and run.unrecorded_steps == 0  # 50 and 40 before the fix
    assert d.health["unrecorded_steps"] == 0


def test_a_restored_run_counts_lost_steps_once_at_the_first_hello(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, TRACE)
    pid = os.getpid()
    d.sample()
    d.handle(sent_hello("k", pid, clock.now, 0))
    d.handle(StepBatch("k", pid, steps(clock, 1, 30), 0))
    advance(d, clock, 1.0)
    assert d.flush()
    d.ledger.close()  # "killed": 20 more steps the hook sent never reached a flush
    d2, _sim2, clock2 = make_daemon(tmp_path, TRACE)
    d2.sample()
    d2.handle(sent_hello("k", pid, clock2.now, 50))
    run = d2.runs["k"]
    assert run.steps == 50 and run.unrecorded_steps == 20
    d2.handle(sent_hello("k", pid, clock2.now, 60))  # 10 steps of a later hello, not arrived
    assert run.steps == 50 and run.unrecorded_steps == 20 and d2.health["unrecorded_steps"] == 20


def drain(server: socket.socket) -> None:
    """Read every datagram waiting (the socket's queue is short)."""
    server.setblocking(False)
    while True:
        try:
            server.recv(1 << 20)
        except BlockingIOError:
            return


def test_a_client_taking_over_the_same_run_goes_on_counting_what_was_sent(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(wire.socket_path(home)))
    try:
        first = Client("handover", {"name": "handover"}, home=home, autostart=False)
        assert first.ready.wait(10)
        now = first._last_flush
        for i in range(1, 11):
            first.step(i, now + i, now + i + 0.5, 4)
        first.flush()
        assert first.sent_steps == 10
        first.close(send_bye=False)
        drain(server)
        second = Client("handover", {"name": "handover"}, home=home, autostart=False)
        assert second.ready.wait(10)
        assert (second.sent_steps, second.sent_samples) == (10, 40)  # (0, 0) before the fix
        for i in range(11, 16):
            second.step(i, now + i, now + i + 0.5, 4)
        drain(server)
        second.flush()
        assert second._hello_message()["sent"] == [15, 60]
        second.close(send_bye=False)
        other = Client("another-run", {"name": "another-run"}, home=home, autostart=False)
        assert other.sent_steps == 0
        other.close(send_bye=False)
    finally:
        server.close()
