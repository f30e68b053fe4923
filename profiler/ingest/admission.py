"""Message admission: whether a message's sender may send it, from the kernel's credentials on
the socket (:func:`refusal` gives the reason counted as ``rejected:<reason>``), and which user a
run belongs to (:func:`owner_of`). Root may speak for anyone; other users only for their own
runs and their own processes. Times are monotonic seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from profiler.ingest.messages import Hello, Message, StepBatch
from profiler.sensors.procs import owner_uid

# Hooks and daemon read one CLOCK_MONOTONIC; a time further ahead than this is refused (it
# would hold a run open until then).
FUTURE_SLACK_S = 60.0


class Owned(Protocol):
    """What admission reads of a run: its owner's uid (None: not known yet) and its processes."""

    owner_uid: int | None

    @property
    def processes(self) -> Mapping[int, object]: ...


def refusal(
    msg: Message, *, now_mono: float, find_run: Callable[[str], Owned | None]
) -> str | None:
    """Why the message's sender (kernel credentials) may not send it, or None. Root may
    speak for anyone; other users only for their own runs and their own processes.
    Without credentials (in-process use) everything is allowed. ``now_mono``: the daemon's
    monotonic clock; ``find_run``: the run a message names, asked only for a sender that is
    neither root nor unknown (it may restore the run from the ledger)."""
    if latest_mono(msg) > now_mono + FUTURE_SLACK_S:
        return "time_in_future"
    sender = msg.sender
    if sender is None or sender.uid == 0:
        return None
    run = find_run(msg.run)
    if run is not None and run.owner_uid not in (None, sender.uid):
        return "run_not_owned"
    if msg.proxy and msg.pid != sender.pid:
        owner = owner_uid(msg.pid)
        if owner is None:
            if run is None or msg.pid not in run.processes:
                return "pid_not_found"
        elif owner != sender.uid:
            return "pid_not_owned"
    return None


def owner_of(msg: Message) -> int | None:
    """The uid a message speaks for: the target process's owner for a proxy (so root's
    ``profiler attach`` of a user's job gives the user the run), else the sender's; None
    without credentials."""
    if msg.sender is None:
        return None
    return owner_uid(msg.pid) if msg.proxy else msg.sender.uid


def latest_mono(msg: Message) -> float:
    """The latest monotonic time a message states (seconds)."""
    if isinstance(msg, Hello):
        return msg.fields["mono"]
    if isinstance(msg, StepBatch):
        return max((row[2] for row in msg.rows), default=float("-inf"))
    return msg.mono if msg.mono is not None else float("-inf")
