"""The daemon's socket: receive hook datagrams with the sender's kernel credentials and decode
them (:class:`Receiver`), on a thread of its own (:class:`Inbox`); every rejection is counted by
reason, none is fatal."""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

from hooks import wire
from profiler.ingest.messages import Hello, Malformed, Message, Sender, StepBatch, decode

log = logging.getLogger(__name__)

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class Receiver:
    """The daemon's unix datagram socket: owner-only (0600) by default, or owner and ``group``
    (0660) when one is given. Every datagram comes with its sender's pid, uid and gid from the
    kernel (``SO_PASSCRED``); a message that is not a proxy gets the kernel's pid (which is
    also right across pid namespaces), so a hook cannot speak for another process by naming
    it."""

    def __init__(
        self, path: Path, counts: Counter[str] | None = None, *, group: int | None = None
    ) -> None:
        self.path = path
        # "received", "malformed:<reason>"
        self.counts: Counter[str] = counts if counts is not None else Counter()
        if path.exists() or path.is_symlink():
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        if group is not None:
            os.chown(path, -1, group)
            os.chmod(path, 0o660)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        self._ancillary = socket.CMSG_SPACE(_UCRED.size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, limit: int = 10_000) -> list[Message]:
        """Read what is queued (up to ``limit`` datagrams) and decode it."""
        out: list[Message] = []
        for _ in range(limit):
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(
                    wire.MAX_DATAGRAM_BYTES + 1, self._ancillary
                )
            except BlockingIOError:
                break
            self.counts["received"] += 1
            try:
                message = decode(data)
            except Malformed as e:
                self.counts[f"malformed:{e.reason}"] += 1
                continue
            sender = _sender(ancdata)
            if sender is not None:
                pid = message.pid if message.proxy else sender.pid
                message = dataclasses.replace(message, pid=pid, sender=sender)
                if isinstance(message, Hello) and isinstance(addr, bytes) and addr:
                    message = dataclasses.replace(message, reply_to=addr)
            out.append(message)
        return out

    def close(self) -> None:
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class Inbox:
    """Reads a :class:`Receiver` on a thread of its own, as datagrams arrive, into a list that
    the daemon's loop takes from (:meth:`get`).

    Linux queues only ``net.unix.max_dgram_qlen`` datagrams (10 by default) on a datagram
    socket; while the loop is busy sampling or flushing the ledger, senders would find it full
    and have to hold their steps. This thread keeps the socket empty instead. It stops reading
    while :data:`MAX_PENDING` messages wait (a loop that cannot keep up), so memory stays
    bounded and senders hold their steps as the hooks do for a busy daemon.

    Step batches do not wake the loop: they wait for the loop's next wake-up (its next sample,
    at most ``timeout`` seconds of :meth:`get`), so a daemon takes a run's steps in one batch
    per sample rather than one wake-up of two threads per datagram. A hello or bye (a hook may
    wait for the answer to a hello) or a backlog of :data:`WAKE_AT` messages wakes it at once.
    """

    MAX_PENDING = 100_000  # messages waiting for the loop before the thread stops reading
    WAKE_AT = 256  # messages waiting that wake the loop without a hello or bye among them

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        # A Condition, not a SimpleQueue: on CPython 3.11 SimpleQueue.get(timeout=...) can block
        # for good when a signal (the daemon's SIGTERM) interrupts it near its deadline.
        self._ready = threading.Condition(threading.Lock())
        self._pending: list[Message] = []
        self._urgent = False  # a hello, a bye or WAKE_AT messages wait: wake the loop
        self._stop = threading.Event()
        self.errors = 0  # unexpected failures reading the socket (logged once)
        self._thread = threading.Thread(target=self._read, name="ingest", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if len(self._pending) >= self.MAX_PENDING:
                time.sleep(0.01)
                continue
            try:
                ready, _, _ = select.select([self.receiver], [], [], 0.25)
            except InterruptedError:
                continue
            except (OSError, ValueError):  # the socket was closed: the daemon is stopping
                return
            if not ready:
                continue
            try:
                batch = self.receiver.drain()
            except Exception:  # noqa: BLE001 - a bug here must not stop all ingest
                self.errors += 1
                if self.errors == 1:
                    log.exception("reading the socket failed; ingest goes on")
                time.sleep(0.01)
                continue
            if batch:
                control = any(not isinstance(m, StepBatch) for m in batch)
                with self._ready:
                    self._pending.extend(batch)
                    if control or len(self._pending) >= self.WAKE_AT:
                        self._urgent = True
                        self._ready.notify()

    def get(self, timeout: float) -> list[Message]:
        """The messages received so far, in order of arrival. Waits up to ``timeout`` seconds
        unless a hello or bye, or :data:`WAKE_AT` messages, are waiting (step batches alone
        wait for the timeout: the caller's next deadline)."""
        with self._ready:
            if not self._urgent and timeout > 0:
                self._ready.wait(timeout)
            out, self._pending = self._pending, []
            self._urgent = False
        return out

    def stop(self) -> list[Message]:
        """Stop the reading thread; returns every message it had received and the loop had not
        taken, followed by what was still queued on the socket."""
        self._stop.set()
        self._thread.join(timeout=5)
        return self.get(0.0) + self.receiver.drain()


def _sender(ancdata: list[tuple[int, int, bytes]]) -> Sender | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            if len(data) >= _UCRED.size:
                return Sender(*_UCRED.unpack(data[: _UCRED.size]))
    return None


def group_id(value: str | int) -> int:
    """A group name or number as a gid; raises ValueError naming an unknown group."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    try:
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise ValueError(f"no group named {value!r} on this machine") from None
