"""The daemon control client (profiler.daemon.control): a running daemon is proven by the lock
it holds, else by its recorded start time and program, never by a pid alone. Real daemon."""

import json
import subprocess
from pathlib import Path

from profiler.daemon.lock import LockState, lock_state


def test_the_daemon_is_proven_by_its_lock_or_else_its_start_time_and_program(daemon):
    from profiler.daemon.control import _proven

    lock = daemon.home / "daemon.lock"
    status = json.loads((daemon.home / "daemon.json").read_text())
    assert lock_state(lock) == LockState(True, daemon.proc.pid)  # from /proc/locks
    hidden = lock_state(lock, proc_locks=Path("/nonexistent"))  # holder not listed
    assert hidden == LockState(True, None)
    assert _proven(hidden, status) and _proven(lock_state(lock), status)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        for lie in ({"pid": victim.pid}, dict(status, pid=victim.pid), dict(status, pid=1)):
            assert not _proven(hidden, lie) and not _proven(lock_state(lock), lie), lie
        # without /proc/locks, the recorded start time must match too (a reused pid fails)
        assert not _proven(hidden, dict(status, start_ticks=status["start_ticks"] + 1))
    finally:
        victim.kill()
        victim.wait()
