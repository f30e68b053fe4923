"""Which process is the daemon of a home: the holder of ``<home>/daemon.lock``, as the kernel
says, never a pid merely written in a file.

The daemon holds an exclusive ``flock`` on ``daemon.lock`` for its whole life. ``/proc/locks``
names the process holding each lock (by device and inode), so the pid found there is proven to
hold this home's lock now; :func:`looks_like_daemon` also checks its command line. The CLI
signals only such a process (``profiler stop``); a pid in ``daemon.json`` is trusted only when it
is that same process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")
# An argument that names a program: `profiler` (the console script or `-m profiler`, which is the
# daemon only with the `daemon` subcommand) or a module/script ending in `daemon`
# (``bench.sim_daemon``); not e.g. ``daemon.lock``, nor a bare ``daemon`` argument.
_PROGRAM_ARG = re.compile(r"(?:^|[/.])(profiler|\w*daemon)(?:\.py)?$")


class HomeUnusable(OSError):
    """The home (or its lock file) cannot be read; ``str()`` is the one-line reason."""


@dataclass(frozen=True)
class LockState:
    """Whether a process holds the home's daemon lock, and which (None: held, but the holder is
    not visible here, e.g. it runs in another pid namespace)."""

    held: bool
    pid: int | None = None


def lock_state(lock_file: Path, proc_locks: Path = PROC_LOCKS) -> LockState:
    """Who holds ``lock_file``'s ``flock``. Read from ``/proc/locks`` without taking the lock (a
    daemon starting at that moment must not find it taken); where it does not list the file
    (unreadable, a holder in another pid namespace, a stacked file system whose device and
    inode differ from ``stat``'s), tested with a non-blocking shared lock, holder unknown (the
    daemon retries its lock briefly for that). Raises :class:`HomeUnusable` when the lock file
    exists but cannot be opened (another user's home)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return LockState(False)
    except OSError as e:
        raise HomeUnusable(e.errno, f"cannot read {lock_file} ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        try:
            table = proc_locks.read_text()
        except OSError:
            table = ""
        pid = _holder(table, os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        if pid is not None:
            return LockState(True, pid)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockState(True, None)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EINVAL):  # a file system without flock
                return LockState(False)
            raise HomeUnusable(e.errno, f"cannot test {lock_file} ({e.strerror})") from None
        return LockState(False)
    finally:
        os.close(fd)


def _holder(text: str, major: int, minor: int, inode: int) -> int | None:
    """The pid ``/proc/locks`` (``text``) gives for an exclusive FLOCK on the file, else None."""
    wanted = f"{major:02x}:{minor:02x}:{inode}"
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2147639 0 EOF"; blocked waiters start with "->"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE":
            if fields[5] == wanted and fields[4].isdigit() and int(fields[4]) > 0:
                return int(fields[4])
    return None


def home_error(home: Path, e: OSError) -> str:
    """One line on why ``home`` cannot hold the daemon's files, and what to do."""
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        why = "it is not a folder"
    else:
        why = e.strerror or str(e)
    return (
        f"PROFILER_HOME={home} cannot be used ({why}); set PROFILER_HOME to a folder you can write"
    )


def command_line(pid: int) -> list[str] | None:
    """The process's arguments, or None when it is gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def looks_like_daemon(pid: int) -> bool:
    """Whether ``pid`` runs the profiler daemon: ``profiler daemon``, ``python -m profiler
    daemon``, or a script/module whose name ends in ``daemon`` (the benchmarks' simulated one)."""
    args = command_line(pid)
    return bool(args) and is_daemon_command(args)


def is_daemon_command(args: list[str]) -> bool:
    """Whether the command line ``args`` runs the daemon: its first argument that names a
    program (:data:`_PROGRAM_ARG`) is ``profiler`` followed by the ``daemon`` subcommand (after
    ``--config FILE`` if given), as ``profiler daemon`` (systemd unit, Dockerfile) and
    ``python -m profiler daemon`` (the hooks' and ``profiler start``'s spawn) run it, or a
    module/script named ``...daemon`` (the benchmarks' ``bench.sim_daemon``). ``profiler run``
    and the other subcommands are not the daemon."""
    for i, arg in enumerate(args):
        found = _PROGRAM_ARG.search(arg)
        if found is None or arg == "daemon":
            continue
        if found.group(1) != "profiler":
            return True
        rest = iter(args[i + 1 :])
        for word in rest:
            if word == "--config":
                next(rest, None)
            elif not word.startswith("-"):
                return word == "daemon"
        return False
    return False


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22):
    with the pid, it names one process for good (a reused pid has another)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None
