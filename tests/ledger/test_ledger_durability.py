"""The ledger survives what happens to its file: a full disk, a table dropped, the file deleted or
replaced under a running daemon, a daemon SIGKILLed before its flush. Nothing already recorded is
lost, a write that failed is never reported as done (``profiler stop`` says what was not written
and where it went), and readers of a broken ledger get one line, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, run_cli, start_daemon, wait_for
from inprocess import advance, hello, make_daemon

from profiler.ingest.messages import Bye, StepBatch
from profiler.ledger.recovery import recovery_path
from profiler.ledger.store import Ledger, LedgerError

TRAIN = textwrap.dedent(
    """
    import sys, time
    from hooks.client import Client
    run_id, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    client = Client(run_id, {"name": run_id, "batch_size": 4, "devices": ["0"]}, autostart=False)
    client.ready.wait(20)
    for i in range(1, n + 1):
        start = time.monotonic()
        time.sleep(pause)
        client.step(i, start, time.monotonic(), 4)
    client.close()
    print("dropped", client.dropped_total, "errors", client.errors, flush=True)
    """
)


def train(env: dict[str, str], run_id: str, steps: int, pause: float = 0.0) -> subprocess.Popen:
    """A hooked process (the hooks' own client, no framework) sending ``steps`` steps of 4
    samples each."""
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN, run_id, str(steps), str(pause)],
        env=dict(env, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def trained(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "dropped 0 errors 0" in out, out


def log_text(home: Path) -> str:
    return (home / "test-daemon.log").read_text()


def run_row(home: Path, run_id: str) -> dict | None:
    ledger = Ledger(home / "ledger.sqlite", readonly=True)
    try:
        return ledger.run(run_id)
    finally:
        ledger.close()


def wait_running(d, run_id: str, steps: int) -> None:
    """Until the daemon's /metrics shows ``steps`` steps of the run (in memory)."""
    from conftest import sample_value

    wait_for(
        lambda: (sample_value(d.metrics(), "profiler_run_steps_total", run=run_id) or 0) >= steps,
        what=f"{steps} steps of {run_id}",
    )


def stop(d) -> subprocess.CompletedProcess:
    out = run_cli(d.env, "stop")
    d.proc.wait(20)
    return out


def one_line(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


# ---- item 3: a full disk, a final flush that fails -------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 4 MiB tmpfs as the daemon's home (root only: skipped elsewhere)."""
    mount = tmp_path / "home"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    """Fill the file system of ``directory`` to the last byte."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def test_disk_full_at_stop_loses_nothing_and_stop_says_so(tiny_tmpfs):
    """Home on a tiny tmpfs, filled before training: the ledger refuses writes once the pages it
    had are used up (at the latest at stop); the daemon then frees the space it set aside at
    start and writes everything."""
    d = start_daemon(tiny_tmpfs)
    try:
        fill(tiny_tmpfs)
        trained(train(d.env, "full", 200))
        wait_running(d, "full", 200)
        out = stop(d)
    finally:
        if d.proc.poll() is None:
            d.stop()
    assert out.returncode == 0, (out.stdout, out.stderr, log_text(tiny_tmpfs))
    assert "ledger flushed" in out.stdout
    row = run_row(tiny_tmpfs, "full")
    assert row is not None and row["steps"] == 200 and row["samples"] == 800, row
    # the ledger refused writes while the disk was full, and took them once the reserve was
    # freed (the log is on that disk too: the failure's own line may not have been written, the
    # recovery's line is, since the reserve freed room)
    assert "ledger writes work again after" in log_text(tiny_tmpfs)


def test_a_final_flush_refused_goes_to_the_recovery_file_and_stop_fails(tmp_path):
    """The ledger replaced by a file that is not a ledger: the daemon refuses to write into it,
    keeps the run, and at stop writes it to the recovery file; `stop` exits 1 with one line
    naming the file; the next daemon (the foreign file moved aside) merges it exactly."""
    home = tmp_path / "home"
    d = start_daemon(home)
    ledger = home / "ledger.sqlite"
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{ledger}{suffix}").unlink(missing_ok=True)
        foreign = sqlite3.connect(ledger)
        foreign.execute("CREATE TABLE precious (x)")
        foreign.commit()
        foreign.close()
        trained(train(d.env, "refused", 200))
        wait_running(d, "refused", 200)
        out = stop(d)
    finally:
        if d.proc.poll() is None:
            d.stop()
    line = one_line(out)
    assert out.returncode == 1, (out.stdout, out.stderr)
    recovery = home / "ledger.sqlite.recovery.jsonl"
    assert "refused" in line and str(recovery) in line and "not written" not in out.stdout
    assert "ledger flushed" not in out.stdout + out.stderr
    assert recovery.stat().st_mode & 0o777 == 0o600
    assert sqlite3.connect(ledger).execute("SELECT name FROM sqlite_master").fetchall() == [
        ("precious",)
    ]  # left intact
    ledger.rename(tmp_path / "precious.sqlite")
    d2 = start_daemon(home)
    try:
        row = run_row(home, "refused")
        assert row is not None and row["steps"] == 200 and row["samples"] == 800, row
        assert not recovery.exists()
        assert "merged" in log_text(home)
        out = stop(d2)
        assert out.returncode == 0 and "ledger flushed" in out.stdout, out.stderr
    finally:
        if d2.proc.poll() is None:
            d2.stop()


def test_final_flush_failing_writes_the_recovery_file_and_the_next_daemon_merges_it(tmp_path):
    """In one process: a ledger that takes no writes at the final flush; what was
    held goes to the recovery file, exactly; a new daemon on the home merges it, rollups too."""
    d, _sim, clock = make_daemon(tmp_path, [[(100.0, 300.0)]])
    pid = os.getpid()
    d.sample()
    d.handle(hello("held", pid, clock.now))
    advance(d, clock, 1.0)
    assert d.flush()
    d.ledger.db.execute("PRAGMA query_only = ON")  # the file takes no writes from now on
    rows = tuple((i, clock.now + 0.01 * i, clock.now + 0.01 * (i + 1), 4, None)
                 for i in range(1, 151))  # fmt: skip
    d.handle(StepBatch("held", pid, rows, 0))
    advance(d, clock, 120.0)  # new minutes: the file must grow
    d.handle(Bye("held", pid, "finished", clock.now))
    advance(d, clock, 1.0)
    energy = d.runs["held"].total_gpu_energy_j
    outcome = d.final_flush()
    assert not outcome.ok
    path = recovery_path(d.config)
    assert str(path) in outcome.message and "held" in outcome.message
    assert "merges" in outcome.message
    assert not d.ledger.run("held")["steps"]
    d.ledger.close()
    d2, _sim2, _clock2 = make_daemon(tmp_path, [[(100.0, 300.0)]])
    row = d2.ledger.run("held")
    assert row["steps"] == 150 and row["samples"] == 600 and row["status"] == "finished"
    assert row["gpu_energy_j"] == pytest.approx(energy)
    sums = d2.ledger.db.execute(
        "SELECT sum(steps), sum(gpu_energy_j) FROM rollups WHERE run_id = 'held'"
    ).fetchone()
    assert sums[0] == 150 and sums[1] == pytest.approx(energy)
    assert not path.exists()


# ---- item 7: the ledger deleted under a running daemon ---------------------------------------


def test_a_ledger_deleted_under_the_daemon_is_recreated_with_what_it_holds(tmp_path):
    home = tmp_path / "home"
    d = start_daemon(home)
    try:
        trained(train(d.env, "before", 50))
        wait_for(lambda: (r := run_row(home, "before")) and r["status"] == "finished",
                 what="run before to be written")  # fmt: skip
        for path in home.glob("ledger.sqlite*"):
            path.unlink()
        trained(train(d.env, "after", 120))
        wait_running(d, "after", 120)
        out = stop(d)
    finally:
        if d.proc.poll() is None:
            d.stop()
    assert out.returncode == 0 and "ledger flushed" in out.stdout, out.stderr
    after, before = run_row(home, "after"), run_row(home, "before")
    assert after is not None and after["steps"] == 120 and after["samples"] == 480, after
    # the finished run was still in memory: written again
    assert before is not None and before["steps"] == 50, before
    log = log_text(home)
    assert log.count("was deleted while the daemon ran") == 1, log
    assert "Traceback" not in log


# ---- item 8: a table dropped ------------------------------------------------------------------


@pytest.mark.parametrize("table", ["runs", "pricing_history", "rollups", "run_devices",
                                   "idle_rollups"])  # fmt: skip
def test_a_table_dropped_while_the_daemon_runs_is_recreated_and_the_run_written(
    tmp_path, caplog, table
):
    d, _sim, clock = make_daemon(tmp_path, [[(100.0, 300.0)]])
    pid = os.getpid()
    d.sample()
    d.handle(hello("t", pid, clock.now))
    advance(d, clock, 1.0)
    assert d.flush()
    d.ledger.db.execute(f"DROP TABLE {table}")
    caplog.set_level(logging.WARNING, logger="profiler.daemon.persist")
    rows = tuple((i, clock.now + 0.01 * i, clock.now + 0.01 * (i + 1), 4, None)
                 for i in range(1, 301))  # fmt: skip
    d.handle(StepBatch("t", pid, rows, 0))
    advance(d, clock, 5.0)
    d.handle(Bye("t", pid, "finished", clock.now))
    advance(d, clock, 1.0)
    assert d.flush()
    row = d.ledger.run("t")
    assert row["steps"] == 300 and row["status"] == "finished"
    assert row["gpu_energy_j"] == pytest.approx(d.runs["t"].total_gpu_energy_j)
    if table in ("runs", "run_devices"):
        assert row["devices"][0]["energy_j"] == pytest.approx(row["gpu_energy_j"])
    steps = d.ledger.db.execute("SELECT sum(steps) FROM rollups WHERE run_id='t'").fetchone()[0]
    assert steps == (300 if table != "rollups" else 300)  # the steps came after the drop
    lines = [r.message for r in caplog.records if "table" in r.message]
    if table != "pricing_history":  # pricing is written at open, not at flushes
        assert len(lines) == 1 and table in lines[0], lines
    assert not Ledger(d.config.ledger).missing_tables()


@pytest.mark.parametrize("table", ["runs", "pricing_history", "rollups"])
def test_a_daemon_starts_on_a_ledger_with_a_table_dropped_and_repairs_it(tmp_path, table):
    home = tmp_path / "home"
    home.mkdir()
    ledger = Ledger(home / "ledger.sqlite")
    ledger.db.execute(f"DROP TABLE {table}")
    ledger.close()
    d = start_daemon(home)
    try:
        log = log_text(home)
        assert "Traceback" not in log
        assert f"had lost its {table} table" in log, log
        trained(train(d.env, "repaired", 30))
        out = stop(d)
        assert out.returncode == 0, out.stderr
    finally:
        if d.proc.poll() is None:
            d.stop()
    assert run_row(home, "repaired")["steps"] == 30


@pytest.mark.parametrize("table", ["runs", "rollups", "run_devices", "pricing_history"])
@pytest.mark.parametrize("command", [["runs"], ["runs", "--json"], ["report"],
                                     ["report", "--format", "focus"]])  # fmt: skip
def test_readers_of_a_ledger_missing_a_table_say_one_line(tmp_path, table, command):
    home = tmp_path / "home"
    home.mkdir()
    ledger = Ledger(home / "ledger.sqlite")
    ledger.db.execute(f"DROP TABLE {table}")
    ledger.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")}
    env["PROFILER_HOME"] = str(home)
    out = run_cli(env, *command)
    line = one_line(out)
    assert out.returncode != 0
    assert table in line and "ledger.sqlite" in line, line


@pytest.mark.parametrize("command", [["runs"], ["report"]])
def test_readers_of_a_corrupt_ledger_say_one_line(tmp_path, command):
    home = tmp_path / "home"
    home.mkdir()
    ledger = Ledger(home / "ledger.sqlite")
    ledger.write([{"id": f"r{i}", "name": "n", "status": "finished", "started_at": 1.7e9,
                   "meta": {"pad": "x" * 3000}} for i in range(40)], [], [], [])  # fmt: skip
    ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    raw = bytearray((home / "ledger.sqlite").read_bytes())
    raw[8192:40960] = b"\xff" * (40960 - 8192)  # pages of the runs table's b-tree
    (home / "ledger.sqlite").write_bytes(bytes(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")}
    env["PROFILER_HOME"] = str(home)
    out = run_cli(env, *command)
    one_line(out)
    assert out.returncode != 0


def test_a_readonly_ledger_missing_a_table_is_refused_with_what_to_do(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.db.execute("DROP TABLE rollups")
    ledger.close()
    with pytest.raises(LedgerError, match="missing its rollups table: start the daemon"):
        Ledger(tmp_path / "l.sqlite", readonly=True)
    repaired = Ledger(tmp_path / "l.sqlite")
    assert repaired.repaired == ("rollups",)
    repaired.close()
    assert Ledger(tmp_path / "l.sqlite", readonly=True).rollups("x") == []


# ---- item 10: steps the killed daemon had not flushed -----------------------------------------


def test_steps_a_sigkilled_daemon_had_not_flushed_are_counted_after_restart(tmp_path):
    """The daemon flushes every 5 s; SIGKILLed a few seconds into the run it takes unflushed
    steps with it. The hook's hello tells the next daemon how many steps it sent: the run's
    steps equal the steps trained, and those without timing are counted (unrecorded_steps)."""
    home = tmp_path / "home"
    d = start_daemon(home, PROFILER_FLUSH_INTERVAL="5")
    proc = train(d.env, "killed", 600, 0.01)
    try:
        wait_for(lambda: run_row(home, "killed") is not None, what="the first flush")
        wait_running(d, "killed", (run_row(home, "killed")["steps"] or 0) + 50)
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
        d2 = start_daemon(home, PROFILER_FLUSH_INTERVAL="5")
        trained(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        row = wait_for(lambda: (r := run_row(home, "killed")) and r["status"] != "running" and r,
                       what="the run to end")  # fmt: skip
        assert row["steps"] == 600 and row["samples"] == 2400, row
        assert row["dropped_steps"] == 0
        assert row["meta"]["unrecorded_steps"] >= 50, row["meta"]
        runs = json.loads(run_cli(d2.env, "runs", "--json").stdout)
        assert runs[0]["unrecorded_steps"] == row["meta"]["unrecorded_steps"]
    finally:
        d2.stop()
