"""The sender inside training: batches steps into datagrams, starts the daemon if none listens.

Promises: no method raises into training; a step costs an append and a clock read (a datagram
every ``flush_every`` steps or ``flush_interval_s`` seconds); sends are non-blocking. What the
daemon cannot take now (its queue is full, or it is gone or restarting) stays queued and goes at
a later flush; only past MAX_QUEUED_STEPS, or still queued at exit, are steps dropped, and drops
are counted and reported to the daemon. Connecting and starting the daemon happen on a
background thread, which keeps retrying with backoff when no daemon answers; after a failed send
the next message is preceded by ``hello``, so a restarted daemon knows the run.

Autostart: when no daemon answers on ``<home>/daemon.sock``, the first process to take the lock
``<home>/autostart.lock`` starts ``python -m profiler daemon`` in its own session (it outlives
training, serving later runs); the others wait on the lock and find it running, so N ranks start
exactly one daemon. ``PROFILER_AUTOSTART=0`` turns this off.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from array import array
from pathlib import Path
from typing import Any

from hooks import wire
from hooks.budget import BudgetFlag, read_replies
from hooks.runid import checked_run_id, not_for_new_runs

log = logging.getLogger("hooks")

MAX_QUEUED_STEPS = 100_000
# 1024 packed rows are about 44 kB of base64, under wire.MAX_DATAGRAM_BYTES. Linux queues only
# net.unix.max_dgram_qlen (often 10) datagrams per socket, so big datagrams carry bursts.
STEPS_PER_DATAGRAM = 1024
ENDS_PER_DATAGRAM = 4096  # 32 kB of float64, 44 kB of base64
SEND_BUFFER_BYTES = 1 << 20
AUTOSTART_TIMEOUT_S = 20.0
# With no daemon (autostart off or failed), try again every 0.5 s, backing off to 5 s.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0
CLOSE_WAIT_S = 1.0  # at exit, how long to keep offering queued steps to a busy daemon
BYE_WAIT_S = 0.25  # and then how long the last messages (dropped count, bye) may wait for room


def proxied(run_id: str, env: dict[str, str] | None = None) -> bool:
    """Whether a proxy reports this process's end for run ``run_id``: ``profiler run`` (or a
    Slurm task prolog) sets ``PROFILER_PROXY_PID`` to the pid whose exit it watches and
    ``PROFILER_RUN_ID`` to its run. A hook in that very process then says no ``bye`` (the proxy
    sends it with the exit status), so the run covers the whole process: a second Keras
    ``fit()`` or work after ``handle.stop()`` stays in it. Descendants (other pids) and hooks of
    other runs say ``bye`` as usual."""
    env = os.environ if env is None else env
    here = env.get("PROFILER_PROXY_PID") == str(os.getpid())
    return here and env.get("PROFILER_RUN_ID") == run_id


def spawn_daemon(home: Path) -> subprocess.Popen:
    """Start ``python -m profiler daemon`` for ``home`` in its own session (it outlives the
    caller), with its output appended to ``<home>/daemon.log``."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = dict(os.environ, PROFILER_HOME=str(home))
    fd = os.open(home / "daemon.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "profiler", "daemon"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


# Every client of this process, so that a forked child can silence the ones it inherits.
_clients: weakref.WeakSet[Client] = weakref.WeakSet()

# (pid, run id) -> [steps, samples] the socket took for the daemon from this process for that
# run, over every client that spoke for it: a client taking over the run (a second track())
# goes on counting from there, so a restarted daemon can still count what it lost.
_sent: dict[tuple[int, str], list[int]] = {}


def _silence_inherited() -> None:
    """In a child just forked (``os.fork``, multiprocessing's fork): the clients it inherits
    speak for its parent's runs, so they go quiet for good: no step, ``hello`` or ``bye`` of the
    child ever reaches the parent's run, and the child's exit cannot end it."""
    for client in list(_clients):
        client.forget_inherited()


class Client:
    """One process's connection to the daemon, for one run.

    A client belongs to the process that made it: in a forked child it is silent (it sends
    nothing and its ``close`` says no ``bye``), so the child neither writes into nor ends its
    parent's run. After :meth:`close`, steps handed to it are discarded (not counted as
    dropped: they were never the run's). ``run_id`` is checked against the daemon's rules
    (:func:`hooks.runid.checked_run_id`): an id it would refuse or rewrite is replaced, with one
    warning line."""

    def __init__(
        self,
        run_id: str,
        hello_fields: dict[str, Any],
        *,
        home: Path | None = None,
        autostart: bool | None = None,
        flush_every: int = STEPS_PER_DATAGRAM,
        flush_interval_s: float = 0.1,
    ) -> None:
        self.run_id = checked_run_id(run_id, hello_fields.get("name"))
        self.pid = os.getpid()
        self.home = home or wire.default_home()
        self.path = str(wire.socket_path(self.home))
        self.hello_fields = dict(hello_fields)
        if autostart is None:
            autostart = os.environ.get("PROFILER_AUTOSTART", "1") not in ("0", "false", "no")
        self.autostart = autostart
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        # Queued rows: step, start_s, end_s, samples per row, flat; extras by row index.
        self._values = array("d")
        self._extras: dict[int, dict[str, Any]] = {}
        self._n = 0
        # Consecutive steps known by their end times: (first step, its start, ends, samples).
        self._in_a_row: list[tuple[int, float, array, int]] = []
        self._in_a_row_n = 0
        self.dropped = 0  # steps not delivered, not yet reported
        self.dropped_total = 0
        # Steps and samples the socket took for the daemon (told in every hello, so a daemon
        # restarted after losing some can count them).
        self._sent = _sent.setdefault((self.pid, self.run_id), [0, 0])
        self.errors = 0  # exceptions swallowed at the hook boundary
        self._last_flush = time.monotonic()
        self.since = self._last_flush  # sent in hello: when this process began its run
        self._last_hello = 0.0
        self._lock = threading.Lock()
        self._warned = False
        self.ready = threading.Event()
        self.closed = False
        self._closing = threading.Event()
        self._stale = False  # a send failed: say hello again before the next message
        self._busy = False  # the last failed send found the daemon's queue full (not gone)
        # Budget replies from the daemon (hooks.budget): read by the connect thread once the
        # daemon answers, so the step path only reads budget.stop_at.
        self.budget = BudgetFlag()
        self._reading = False
        self._thread = threading.Thread(target=self._connect, name="profiler-connect", daemon=True)
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:
                pass
            try:  # an abstract address for the daemon's replies, credentials on each
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                self._sock.bind("")
            except OSError:
                pass  # no replies: budgets are not enforced in this process
            self._thread.start()
        except (OSError, RuntimeError) as e:  # out of file descriptors or threads
            self.errors += 1
            self.closed = True
            self._closing.set()
            self._warn(f"cannot open a connection to the profiler daemon ({e}); not recording")
        _clients.add(self)

    @property
    def sent_steps(self) -> int:
        """Steps the socket took for the daemon from this process for this run (every client
        of the run in this process together)."""
        return self._sent[0]

    @property
    def sent_samples(self) -> int:
        """The samples of :attr:`sent_steps`."""
        return self._sent[1]

    # ---- the hot path -------------------------------------------------------------------------

    def step(
        self,
        step: int,
        start_s: float,
        end_s: float,
        samples: int,
        extras: dict[str, Any] | None = None,
    ) -> None:
        """Queue one finished step (times on CLOCK_MONOTONIC, seconds; ``extras`` as in
        :mod:`hooks.wire`)."""
        self._values.extend((step, start_s, end_s, samples))
        if extras:
            self._extras[self._n] = extras
        self._n += 1
        if self._n >= self.flush_every or end_s - self._last_flush >= self.flush_interval_s:
            self.flush()

    def steps_in_a_row(self, first: int, start_s: float, ends: array, samples: int) -> None:
        """Queue ``len(ends)`` consecutive steps, ``first`` onwards: each runs from the previous
        end (``start_s`` for the first) to its entry in ``ends`` (CLOCK_MONOTONIC seconds), with
        ``samples`` each; then flush. The caller hands over ``ends`` and does not touch it
        again."""
        if ends:
            self._in_a_row.append((first, start_s, ends, samples))
            self._in_a_row_n += len(ends)
        self.flush()

    @property
    def queue(self) -> list[list[Any]]:
        """The queued rows as ``[step, start_s, end_s, samples(, extras)]`` (for inspection)."""
        v = self._values
        rows = [[int(v[i]), v[i + 1], v[i + 2], int(v[i + 3])] for i in range(0, len(v), 4)]
        for i, extras in self._extras.items():
            rows[i].append(extras)
        return rows

    def flush(self) -> None:
        """Send what is queued, if the daemon is reachable; never raises. After :meth:`close`
        (or in a forked child), what was handed over since is discarded."""
        if self.closed:
            self._discard()
            return
        try:
            self._flush()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self.errors += 1

    def _take(self, keep: int = 0) -> tuple[array, dict[int, dict[str, Any]]]:
        """Remove and return the queued rows but the newest ``keep``."""
        cut = self._n - keep
        values, extras = self._values[: 4 * cut], self._extras
        self._values = self._values[4 * cut :]
        self._extras = {i - cut: e for i, e in extras.items() if i >= cut}
        self._n = keep
        return values, {i: e for i, e in extras.items() if i < cut}

    def _flush(self) -> None:
        now = time.monotonic()
        self._last_flush = now
        self._bound_queue()
        if not self.ready.is_set():
            return
        with self._lock:
            if now - self._last_hello >= wire.HELLO_EVERY_S:
                self._send_hello()
            if not (self._send_rows() and self._send_in_a_row()):
                return  # the daemon is busy or gone: the rest stays queued for the next flush
            if self.dropped:  # report drops even when no step is left to carry the count
                empty = wire.packed_steps(self.run_id, self.pid, array("d"), {}, self.dropped)
                if self._send(empty):
                    self.dropped = 0

    def _bound_queue(self) -> None:
        """Past MAX_QUEUED_STEPS queued steps, drop the oldest (counted)."""
        if self._n > MAX_QUEUED_STEPS:  # drop the older half at once (amortised)
            overflow = self._n - MAX_QUEUED_STEPS // 2
            self._take(keep=MAX_QUEUED_STEPS // 2)
            self._count_dropped(overflow)
        while self._in_a_row_n > MAX_QUEUED_STEPS:
            n = len(self._in_a_row.pop(0)[2])
            self._in_a_row_n -= n
            self._count_dropped(n)

    def _send_rows(self) -> bool:
        """Send the queued rows, oldest first, up to STEPS_PER_DATAGRAM a datagram. Stops at
        the first datagram the socket does not take, which stays queued with the rest; True
        when all went."""
        while self._n:
            cut = min(self._n, STEPS_PER_DATAGRAM)
            chunk = self._values[: 4 * cut]
            extras = {i: e for i, e in self._extras.items() if i < cut}
            message = wire.packed_steps(self.run_id, self.pid, chunk, extras, self.dropped)
            if not self._send(message):
                return False
            self.dropped = 0
            self._sent[0] += cut
            self._sent[1] += int(sum(chunk[3::4]))
            self._take(keep=self._n - cut)
        return True

    def _send_in_a_row(self) -> bool:
        """Send the queued runs of consecutive steps (joined where one continues another, so a
        backlog goes in few datagrams); like :meth:`_send_rows`, stops at a refused one."""
        merged: list[tuple[int, float, array, int]] = []
        for group in self._in_a_row:
            if merged:
                first, start, ends, samples = merged[-1]
                if group[0] == first + len(ends) and group[1] == ends[-1] and group[3] == samples:
                    ends.extend(group[2])
                    continue
            merged.append(group)
        self._in_a_row = merged
        while self._in_a_row:
            first, start, ends, samples = self._in_a_row[0]
            chunk = ends[:ENDS_PER_DATAGRAM]
            message = wire.steps_in_a_row(
                self.run_id, self.pid, first, start, chunk, samples, self.dropped
            )
            if not self._send(message):
                return False
            self.dropped = 0
            self._sent[0] += len(chunk)
            self._sent[1] += len(chunk) * samples
            self._in_a_row_n -= len(chunk)
            if len(chunk) == len(ends):
                self._in_a_row.pop(0)
            else:
                self._in_a_row[0] = (first + len(chunk), chunk[-1], ends[len(chunk) :], samples)
        return True

    def _discard(self) -> None:
        self._values, self._extras, self._n = array("d"), {}, 0
        self._in_a_row, self._in_a_row_n = [], 0

    def forget_inherited(self) -> None:
        """In a forked child: go quiet for good (see :func:`_silence_inherited`); the child's
        copy of the socket is closed, the parent's stays open."""
        if self.pid == os.getpid():
            return
        if not self.closed:  # the parent's live run: a track() in the child starts its own
            not_for_new_runs(self.run_id)
        self.closed = True  # no lock is taken here: a parent's thread may have held it
        self._discard()
        try:
            self._sock.close()
        except (OSError, AttributeError):
            pass

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        self.dropped_total += n

    # ---- messages -----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> bool:
        """Send one message; after a failed send (daemon gone, perhaps restarted since), say
        ``hello`` first so a new daemon knows the run before its steps arrive."""
        try:
            if self._stale and message.get("type") != "hello":
                self._sendto(self._hello_message())
                self._stale = False
            self._sendto(message)
            if message.get("type") == "hello":
                self._stale = False
            return True
        except BlockingIOError:  # the daemon's receive queue is full
            self._busy = True
            if self.ready.is_set():
                self._warn("the profiler daemon is not keeping up; holding steps until it does")
            return False
        except OSError:  # no daemon, socket gone
            self._busy = False
            self._stale = True
            if self.ready.is_set():
                self._warn(
                    f"cannot reach the profiler daemon at {self.path}; holding up to "
                    f"{MAX_QUEUED_STEPS} steps until it is back"
                )
            return False

    def _send_patiently(self, message: dict[str, Any], until: float) -> bool:
        """Send one message, retrying while the daemon's queue is full, until monotonic
        ``until``; gives up at once when there is no daemon."""
        while True:
            self._busy = False
            if self._send(message):
                return True
            if not self._busy or time.monotonic() >= until:  # no daemon, or out of time
                return False
            time.sleep(0.01)

    def _sendto(self, message: dict[str, Any]) -> None:
        self._sock.sendto(wire.encode(message), self.path)

    def _hello_message(self) -> dict[str, Any]:
        self._last_hello = time.monotonic()
        fields = dict(self.hello_fields, mono=time.monotonic(), wall=time.time(), since=self.since,
                      sent=list(self._sent))  # fmt: skip
        return wire.hello(self.run_id, self.pid, **fields)

    def _send_hello(self) -> bool:
        return self._send(self._hello_message())

    def update_hello(self, **fields: Any) -> None:
        """Change what ``hello`` says (e.g. devices learnt later) and resend it soon."""
        self.hello_fields.update(fields)
        self._last_hello = 0.0

    def close(self, status: str = "finished", *, send_bye: bool | None = None) -> None:
        """Send the remaining steps and ``bye``. Waits briefly for a connection in progress.

        ``send_bye`` None (the default) sends ``bye`` unless a proxy reports this process's end
        (:func:`proxied`); False only flushes (another hook of this process takes over)."""
        if send_bye is None:
            send_bye = not proxied(self.run_id)
        if self.closed:
            return
        self.closed = True
        self._closing.set()
        try:
            if not self._reading:  # a reader of replies ends by itself (socket closed)
                self._thread.join(timeout=AUTOSTART_TIMEOUT_S)  # the connect attempt, if any
            if not self.ready.is_set() and self._send_hello():  # a daemon came up just now
                self.ready.set()
            self._flush()
            deadline = time.monotonic() + CLOSE_WAIT_S
            while self.ready.is_set() and self._n + self._in_a_row_n:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)  # a busy daemon: give it a moment to catch up
                self._flush()
            left = self._n + self._in_a_row_n
            if left:
                self._count_dropped(left)
                self._take()
                self._in_a_row, self._in_a_row_n = [], 0
            if self.ready.is_set():
                last_try = max(deadline, time.monotonic()) + BYE_WAIT_S
                if self.dropped:
                    empty = wire.packed_steps(self.run_id, self.pid, array("d"), {}, self.dropped)
                    self._send_patiently(empty, last_try)
                if send_bye:
                    bye = wire.bye(self.run_id, self.pid, status, time.monotonic())
                    self._send_patiently(bye, last_try)
            self._sock.close()
            self._discard()
            if self.dropped_total:
                log.warning(
                    "profiler: %d steps of run %s were not delivered to the daemon",
                    self.dropped_total,
                    self.run_id,
                )
        except Exception:  # noqa: BLE001 - the hook boundary
            self.errors += 1

    # ---- connecting and autostart ------------------------------------------------------------

    def _connect(self) -> None:
        """Reach the daemon (starting it if allowed); failing that, keep trying with backoff
        while steps queue (bounded), so a daemon started later gets the run without any user
        action."""
        try:
            if self._send_hello() or (self.autostart and self._start_daemon()):
                self.ready.set()
                self._read_replies()
                return
            self._warn(
                f"no profiler daemon at {self.path}"
                + ("" if self.autostart else " (PROFILER_AUTOSTART=0)")
                + "; will keep trying"
            )
            delay = RETRY_FIRST_S
            while not self._closing.wait(delay):
                if self._send_hello():
                    self.ready.set()
                    log.warning("profiler: reached the daemon at %s; recording resumes", self.path)
                    self._read_replies()
                    return
                delay = min(2 * delay, RETRY_MAX_S)
        except Exception as e:  # noqa: BLE001 - the hook boundary
            self.errors += 1
            self._warn(f"could not reach the profiler daemon ({e})")

    def _read_replies(self) -> None:
        """Stay on as the reader of the daemon's budget replies until :meth:`close`
        (:func:`hooks.budget.read_replies`); replies count only from the owner of the daemon's
        socket, or root."""
        try:
            daemon_uid: int | None = os.stat(self.path).st_uid
        except OSError:
            daemon_uid = None
        self._reading = True
        read_replies(self._sock, self.budget, daemon_uid, self._closing, self.run_id)

    def _start_daemon(self) -> bool:
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.home / "autostart.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as e:  # a plain file, /proc/..., no permission, a read-only disk
            self._warn(
                f"cannot use {self.home} as the profiler's home ({e.strerror or e}), so no "
                "daemon can start; set PROFILER_HOME to a writable directory"
            )
            return False
        with os.fdopen(fd, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._send_hello():  # another process started it while we waited
                return True
            log_path = self.home / "daemon.log"
            proc = spawn_daemon(self.home)
            deadline = time.monotonic() + AUTOSTART_TIMEOUT_S
            while time.monotonic() < deadline:
                if self._send_hello():
                    return True
                if proc.poll() is not None:
                    self._warn(f"the profiler daemon exited at start; see {log_path}")
                    return False
                time.sleep(0.05)
            self._warn(f"the profiler daemon did not start in time; see {log_path}")
            return False

    def _warn(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("profiler: %s; training goes on", text)


os.register_at_fork(after_in_child=_silence_inherited)
