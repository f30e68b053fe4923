"""The hook's side of budgets: replies from the daemon, the stop flag, :class:`BudgetExceeded`.

The reply path (daemon -> hook). A hook's datagram socket is bound to an address of the
kernel's choosing in the abstract namespace (``autobind``), so every datagram it sends to the
daemon carries that address. The daemon answers only the address of an authenticated
``hello``: the one whose kernel credentials (``SCM_CREDENTIALS``) pass the same admission as
every other message, for a run that sender may speak for. The hook accepts a reply only when
the kernel's credentials on it name the daemon's user (the owner of ``daemon.sock``, read when
the hook first reaches it) or root: another user can send to the abstract address, but not
with the daemon's uid, so it cannot warn or stop someone else's run. A restarted daemon learns
the address again from the next ``hello`` (sent every :data:`hooks.wire.HELLO_EVERY_S`, and
after any failed send). With ``socket_group`` the daemon's socket is the group's, the reply
path is unchanged.

Cheap on the step path: the client's connect thread, once the daemon answers, stays on as the
reader of replies (it blocks in ``select``, never the training thread), and sets
:attr:`BudgetFlag.stop_at`; the step hook reads one attribute per step.

Standard library only.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
REPLY_BYTES = 4096


class BudgetExceeded(Exception):  # noqa: N818 - the name the README and the issue promise
    """Raised from ``optimizer.step()`` (after the step completed) when the daemon stopped the
    run for its budget. Catch it to save a checkpoint. ``run``, ``spent``, ``budget`` (the
    pricing's ``currency``) and ``step`` (the last completed step) say what happened."""

    def __init__(self, run: str, spent: float, budget: float, currency: str, step: int) -> None:
        super().__init__(
            f"run {run} stopped at step {step}: spent {spent:.4f} {currency} of its budget "
            f"{budget:.4f} {currency}"
        )
        self.run = run
        self.spent = spent
        self.budget = budget
        self.currency = currency
        self.step = step


@dataclass(frozen=True)
class BudgetReply:
    """One reply from the daemon: ``event`` is ``warn``, ``stop`` or ``refused``; money in
    ``currency``; ``projected`` None when unknown; ``at_step`` the step after which every rank
    stops (0: the next one); ``text`` the line to show. ``hooked`` (to ``profiler run``'s
    wrapper only): a hooked process of the run has its own reply address, so it prints the
    line and stops itself at a step boundary; the wrapper then stays quiet and signals only if
    the command is still running after its grace."""

    run: str
    event: str
    spent: float
    projected: float | None
    budget: float
    currency: str
    at_step: int
    text: str
    hooked: bool = False


def parse_reply(data: bytes) -> BudgetReply | None:
    """A ``budget`` reply (see :mod:`hooks.wire`), or None for anything else."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("type") != "budget":
            return None
        event = body["event"]
        if event not in ("warn", "stop", "refused"):
            return None
        projected = body.get("projected")
        return BudgetReply(
            run=str(body["run"]),
            event=event,
            spent=float(body.get("spent") or 0.0),
            projected=None if projected is None else float(projected),
            budget=float(body["budget"]),
            currency=str(body.get("currency", "")),
            at_step=int(body.get("at_step") or 0),
            text=str(body.get("text", ""))[:500],
            hooked=body.get("hooked") is True,
        )
    except (ValueError, KeyError, TypeError):
        return None


def sender_uid(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The uid the kernel puts on a datagram (``SCM_CREDENTIALS``), None without one."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            if len(data) >= _UCRED.size:
                return _UCRED.unpack(data[: _UCRED.size])[1]
    return None


class BudgetFlag:
    """What the daemon said of this run's budget, read by the step hook.

    ``stop_at`` is +inf until a stop arrives, then the step after which the run stops
    (``at_step``, 0 for the next one). ``warned``/``refused`` keep one stderr line each."""

    def __init__(self) -> None:
        self.stop_at: float = math.inf
        self.stop: BudgetReply | None = None
        self.pending = False  # a stop not yet raised: the one thing the step hook reads
        self.warned = False
        self.refused = False
        self.replies = 0  # accepted replies
        self.rejected = 0  # not from the daemon's user, not a budget reply, or another run's
        self._lock = threading.Lock()

    def apply(self, reply: BudgetReply) -> None:
        """Take one accepted reply (from the reader thread): print the warning or the
        refusal once to stderr; set the stop."""
        self.replies += 1
        with self._lock:
            if reply.event == "stop" and self.stop is None:
                self.stop = reply
                self.stop_at = reply.at_step
                self.pending = True
                _say(reply.text)
            elif reply.event == "warn" and not self.warned:
                self.warned = True
                _say(reply.text)
            elif reply.event == "refused" and not self.refused:
                self.refused = True
                _say(reply.text)

    def due(self, run: str, step: int) -> BudgetExceeded | None:
        """After step ``step`` completed: the exception to raise when the stop applies now
        (once; None otherwise)."""
        stop = self.stop
        if stop is None or not self.pending or step < self.stop_at:
            return None
        self.pending = False
        return BudgetExceeded(run, stop.spent, stop.budget, stop.currency, step)


def _say(text: str) -> None:
    """One line to stderr; a closed stderr is ignored (never raises)."""
    try:
        sys.stderr.write(f"profiler: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def read_replies(
    sock: socket.socket,
    flag: BudgetFlag,
    daemon_uid: int | None,
    closing: threading.Event,
    run: str | None = None,
) -> None:
    """Until ``closing`` (or the socket is closed), read replies on ``sock`` and give those
    the daemon's user (``daemon_uid``, or root) sent for ``run`` (any run when None) to
    ``flag``; waits in ``select``. The run is checked too: an abstract address the daemon
    learnt may since name another process (its owner exited and the kernel gave the name
    out again, or the hook is in another network namespace than the daemon), and the
    daemon's uid is on every reply, so a stop meant for one run must not end another."""
    import select

    ancillary = socket.CMSG_SPACE(_UCRED.size)
    while not closing.is_set():
        try:
            ready, _, _ = select.select([sock], [], [], 0.5)
            if not ready:
                continue
            data, ancdata, _flags, _addr = sock.recvmsg(REPLY_BYTES, ancillary)
        except (BlockingIOError, InterruptedError):
            continue
        except (OSError, ValueError):  # the socket was closed: the client is done
            return
        uid = sender_uid(ancdata)
        if uid is None or uid not in (daemon_uid, 0):  # the kernel's word first: no parsing
            flag.rejected += 1  # of a stranger's datagram
            continue
        reply = parse_reply(data)
        if reply is None or (run is not None and reply.run != run):
            flag.rejected += 1
            continue
        flag.apply(reply)


def budget_field(budget: Any, on_exceed: str | None) -> dict[str, Any]:
    """The ``hello`` fields for a budget a user gave a hook (``budget``, ``on_exceed``); empty
    for none. A budget that is not a positive finite number is refused with one line (and
    ignored), never raised."""
    if budget is None:
        return {}
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not (0 < budget < math.inf)
    ):
        _say(f"budget={budget!r} ignored: a budget is a positive amount in the pricing's currency")
        return {}
    fields: dict[str, Any] = {"budget": float(budget)}
    if on_exceed is not None:
        if on_exceed not in ("warn", "stop"):
            _say(f"on_exceed={on_exceed!r} ignored: use 'warn' or 'stop'")
        else:
            fields["on_exceed"] = on_exceed
    return fields
