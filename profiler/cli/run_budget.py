"""``profiler run --budget``: the wrapper's side of budgets.

The wrapper says ``hello`` for its child from a socket bound to an abstract address of the
kernel's choosing (the reply path of :mod:`hooks.budget`), again every
:data:`hooks.wire.HELLO_EVERY_S` seconds so a restarted daemon learns it, and reads the
daemon's replies while it waits for the child, taking only those the kernel says the daemon's
user (the owner of ``daemon.sock``) or root sent. A warning is one line on stderr; at a stop it
sends the child ``--budget-signal`` (SIGINT by default), then SIGTERM after ``--budget-grace``
seconds if the child is still there. The daemon records the run as ``budget_exceeded``.

When the command is itself hooked (``track()`` or a callback said hello with its own reply
address: the daemon's reply says ``hooked``), the hook prints the lines and stops the training
at a step boundary by itself: the wrapper prints only that it leaves the stop to the hook, and
sends ``--budget-signal`` only if the command is still running ``--budget-grace`` seconds later
(then SIGTERM after another grace), so no line shows twice and no signal races the training's
own clean exit.

Without ``--budget``, a ``profiler.toml [budget] per_run`` (or a project's monthly budget) with
``on_exceed = "stop"`` stops the child the same way: the wrapper always listens.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any

from hooks import wire
from hooks.budget import REPLY_BYTES, BudgetReply, parse_reply, sender_uid

_UCRED_SPACE = socket.CMSG_SPACE(12)
DEFAULT_GRACE_S = 10.0


class BudgetWatch:
    """The wrapper's reply socket and what it does with replies for child ``pid`` (run
    ``run_id``). :meth:`tick` is called from the wait loop (at least every 0.1 s)."""

    def __init__(
        self, socket_path: str, run_id: str, pid: int, *, stop_signal: int = signal.SIGINT,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> None:  # fmt: skip
        self.path = socket_path
        self.run_id = run_id
        self.pid = pid
        self.stop_signal = stop_signal
        self.grace_s = grace_s
        self.hello: dict[str, Any] | None = None
        self.stopped_at: float | None = None  # monotonic time the stop signal was sent
        self.deferred_at: float | None = None  # a hooked command's stop: when it was received
        self.termed = False
        self.stop: BudgetReply | None = None
        self.warned = False
        self._last_hello = 0.0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sock.bind("")
        except OSError:
            pass
        try:
            self.daemon_uid: int | None = os.stat(socket_path).st_uid
        except OSError:
            self.daemon_uid = None

    def send(self, message: dict[str, Any], patient_s: float = 0.0) -> bool:
        """Send one proxy message from the reply socket, waiting up to ``patient_s`` seconds
        for room in a busy daemon's queue; False when the daemon does not take it."""
        until = time.monotonic() + patient_s
        data = wire.encode(dict(message, proxy=True))
        while True:
            try:
                self.sock.sendto(data, self.path)
                return True
            except BlockingIOError:
                if time.monotonic() >= until:
                    return False
                time.sleep(0.01)
            except OSError:
                return False

    def say_hello(self, hello: dict[str, Any]) -> bool:
        """Send the child's ``hello`` now, and again from :meth:`tick` every HELLO_EVERY_S."""
        first = self.hello is None
        self._last_hello = time.monotonic()
        self.hello = hello
        return self.send(hello, patient_s=2.0 if first else 0.0)

    def tick(self) -> None:
        """Re-send ``hello`` when due, read replies, and escalate a stop after the grace."""
        now = time.monotonic()
        if self.hello is not None and now - self._last_hello >= wire.HELLO_EVERY_S:
            self.say_hello(dict(self.hello, mono=now, wall=time.time()))
        self._read()
        if self.deferred_at is not None and self.stopped_at is None:
            if now - self.deferred_at > self.grace_s:  # the hook did not stop it in time
                name = signal.Signals(self.stop_signal).name
                _say(f"run {self.run_id}: the command is still running {self.grace_s:g} s "
                     f"after its budget stop; sending it {name}")  # fmt: skip
                self.stopped_at = now
                self._signal(self.stop_signal)
            return
        if self.stopped_at is not None and not self.termed and now - self.stopped_at > self.grace_s:
            self.termed = True
            self._signal(signal.SIGTERM)

    def _read(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(REPLY_BYTES, _UCRED_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uid = sender_uid(ancdata)
            reply = parse_reply(data)
            if reply is None or uid is None or uid not in (self.daemon_uid, 0):
                continue
            if reply.run != self.run_id:
                continue
            self._take(reply)

    def _take(self, reply: BudgetReply) -> None:
        if reply.event in ("warn", "refused") and not self.warned:
            self.warned = True
            if not reply.hooked:  # a hooked command prints it itself
                _say(reply.text)
        elif reply.event == "stop" and self.stop is None:
            self.stop = reply
            if reply.hooked:
                _say(f"run {self.run_id}: budget reached; the command's hook stops it after its "
                     f"current step ({signal.Signals(self.stop_signal).name} in "
                     f"{self.grace_s:g} s if it is still running)")  # fmt: skip
                self.deferred_at = time.monotonic()
                return
            _say(f"{reply.text}; sending the command {signal.Signals(self.stop_signal).name}, "
                 f"SIGTERM {self.grace_s:g} s later if it is still running")  # fmt: skip
            self.stopped_at = time.monotonic()
            self._signal(self.stop_signal)

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self.sock.close()


def _say(text: str) -> None:
    try:
        print(f"profiler: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def signal_number(text: str) -> int:
    """A signal given as ``INT``, ``SIGINT`` or ``2`` (raises ValueError naming it)."""
    name = text.upper()
    if not name.isdigit() and not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals(int(name)).value if name.isdigit() else signal.Signals[name].value
    except (KeyError, ValueError):
        raise ValueError(
            f"--budget-signal {text!r}: not a signal (a name such as INT, TERM, USR1, or a number)"
        ) from None
