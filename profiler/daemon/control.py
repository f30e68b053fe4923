"""The daemon's control client: is a daemon running for this home, start one, stop it.

Used by the ``profiler`` command and the demo; it reads the daemon's lock (:mod:`.lock`) and
status file and never imports the daemon itself. The daemon is the process holding
``daemon.lock``; a pid is signalled only when the kernel's lock table (or, where that hides the
holder, the same pid, start time and program) proves it is that process. Every failure is a
:class:`ControlError` whose text is one line for the user.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from hooks.client import spawn_daemon
from profiler.config import Config
from profiler.daemon.lock import (
    HomeUnusable,
    LockState,
    command_line,
    home_error,
    lock_state,
    looks_like_daemon,
    start_ticks,
)


class ControlError(Exception):
    """The daemon cannot be read, started or stopped; ``str()`` is one line for the user."""


def daemon_status(config: Config) -> dict[str, Any] | None:
    """The running daemon's status file, or None when no process holds this home's lock.

    The daemon is the process holding ``daemon.lock`` (:mod:`profiler.daemon.lock`); its status
    file is trusted only when it names that process. When the file is missing, corrupt or names
    another process, the answer holds ``pid`` (the lock holder if it is proven to be a profiler
    daemon, else None), ``home`` and ``status_error`` (why the rest is unknown)."""
    try:
        state = lock_state(config.lock_file)
    except HomeUnusable as e:
        raise ControlError(f"{e}: PROFILER_HOME={config.home} is not usable by you") from None
    error = ""
    for _ in range(50):  # the daemon writes its status file just after taking the lock
        if not state.held:
            return None
        try:
            status = json.loads(config.status_file.read_text())
        except FileNotFoundError:
            error = f"its status file {config.status_file} is missing"
        except OSError as e:
            error = f"its status file {config.status_file} cannot be read ({e.strerror})"
        except ValueError:  # written whole (rename), so corrupt for good: no point waiting
            error = f"its status file {config.status_file} is corrupt"
            break
        else:
            if isinstance(status, dict) and _proven(state, status):
                return status
            error = f"its status file {config.status_file} names another process"
        time.sleep(0.1)
        state = lock_state(config.lock_file)
    pid = state.pid if state.pid is not None and looks_like_daemon(state.pid) else None
    if state.pid is not None and pid is None:
        args = "".join(c if c.isprintable() else " " for c in " ".join(
            command_line(state.pid) or ["?"]))[:60]  # fmt: skip
        error = f"it is held by pid {state.pid} ({args}), which is not a profiler daemon"
    return {"pid": pid, "home": str(config.home), "status_error": error}


def _proven(state: LockState, status: dict[str, Any]) -> bool:
    """Whether ``status`` (a daemon's status file) names the process holding the lock: the pid
    ``/proc/locks`` gives; where it gives none, the same pid, start time and program."""
    pid = status.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return False
    if state.pid is not None:
        return pid == state.pid and looks_like_daemon(pid)
    ticks = status.get("start_ticks")
    return ticks is not None and ticks == start_ticks(pid) and looks_like_daemon(pid)


def start_background(config: Config, timeout_s: float = 20.0) -> tuple[dict[str, Any], bool]:
    """Start ``profiler daemon`` detached (log in ``<home>/daemon.log``) unless one runs; wait
    until it serves (at most ``timeout_s`` seconds, else ControlError). Returns its status and
    whether this call started it. Holds ``<home>/autostart.lock`` meanwhile (as the hooks do),
    so that any number of concurrent starts make one daemon and the others find it running."""
    deadline = time.monotonic() + timeout_s
    try:
        config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(config.home / "autostart.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as e:
        raise ControlError(home_error(config.home, e)) from None
    with os.fdopen(fd, "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ControlError(
                        f"another process has been starting the daemon for over "
                        f"{timeout_s:g} s; see {config.log_file}"
                    ) from None
                time.sleep(0.05)
        status = daemon_status(config)
        if status:
            return status, False
        try:
            proc = spawn_daemon(config.home)
        except OSError as e:
            raise ControlError(home_error(config.home, e)) from None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlError(f"the daemon exited at start: {_last_error(config.log_file)}")
            status = daemon_status(config)
            if status and status.get("pid") == proc.pid:
                return status, True
            time.sleep(0.1)
    raise ControlError(f"the daemon did not start within {timeout_s:g} s; see {config.log_file}")


def _last_error(log_file: Path) -> str:
    """The daemon log's last line, for a daemon that exited at start."""
    try:
        lines = [ln for ln in log_file.read_text().splitlines() if ln.strip()]
    except OSError:
        return f"see {log_file}"
    return (lines[-1] if lines else "no output") + f" (log: {log_file})"


def stop_daemon(config: Config, status: dict[str, Any], timeout_s: float = 15.0) -> int | None:
    """SIGTERM the daemon ``status`` names (a pid :func:`daemon_status` proved to hold the
    lock; never another) and wait until it lets the lock go (at most ``timeout_s`` seconds).
    Returns its pid, or None when it had already gone; ControlError when no proven daemon pid
    is known or it does not stop."""
    pid = status.get("pid")
    if not pid:
        why = status.get("status_error")
        raise ControlError(f"a process holds {config.lock_file}, but none proven to be the "
                           f"daemon ({why}); nothing was signalled")  # fmt: skip
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not lock_state(config.lock_file).held:
            return pid
        time.sleep(0.1)
    raise ControlError(f"daemon pid {pid} did not stop within {timeout_s:g} s; "
                       f"`kill -9 {pid}` forces it")  # fmt: skip
