"""The home's daemon lock (profiler.daemon.lock): who holds it, read from /proc/locks or tested
without taking it, and which command lines are a daemon's. Real processes and real flocks."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from conftest import wait_for

from profiler.daemon.lock import LockState, lock_state


def test_the_holder_of_a_flock_is_read_without_taking_it(tmp_path):
    path = tmp_path / "daemon.lock"
    assert lock_state(path) == LockState(False)  # no file: nobody holds it
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert lock_state(path) == LockState(True, os.getpid())  # from /proc/locks
        hidden = lock_state(path, proc_locks=Path("/nonexistent"))  # holder not listed
        assert hidden == LockState(True, None)
        fcntl.flock(f, fcntl.LOCK_UN)
        assert lock_state(path) == LockState(False)
        assert lock_state(path, proc_locks=Path("/nonexistent")) == LockState(False)


def test_only_the_daemon_subcommand_looks_like_a_daemon():
    # Before: any argument `profiler` matched, so `profiler run ...` "looked like" a daemon.
    from profiler.daemon.lock import looks_like_daemon

    py = sys.executable
    script = "import time; time.sleep(60)"
    cases = {
        # how the daemon is started: hooks/client.py and cli start_background, the console
        # script (deploy/systemd, the Dockerfile's ENTRYPOINT + CMD), bench.sim_daemon
        ("-m", "profiler", "daemon"): True,
        ("/opt/ml-profiler/bin/profiler", "daemon"): True,
        ("/usr/local/bin/profiler", "--config", "/etc/p.toml", "daemon"): True,
        ("-m", "bench.sim_daemon", "--trace", "t"): True,
        ("-m", "profiler", "run", "--", "sleep", "60"): False,
        ("/usr/local/bin/profiler", "run", "--name", "daemon", "--", "x"): False,
        ("/usr/local/bin/profiler", "--config", "daemon", "status"): False,
        ("train.py", "--out", "daemon.lock"): False,
        ("train.py", "daemon"): False,
    }
    for args, expected in cases.items():
        # a real process with this command line (python ignores what follows -c's script)
        proc = subprocess.Popen([py, "-c", script, *args])
        try:
            got = wait_for(lambda p=proc.pid, a=args: _cmdline_of(p, a), what="its cmdline")
            assert got and looks_like_daemon(proc.pid) is expected, args
        finally:
            proc.kill()
            proc.wait()


def _cmdline_of(pid: int, args: tuple[str, ...]) -> bool:
    return Path(f"/proc/{pid}/cmdline").read_bytes().endswith("\0".join(args).encode() + b"\0")
