"""The message format between training processes and the node daemon (version 1).

This module is the whole contract between ``hooks`` (inside training) and ``profiler`` (the
daemon): both sides import it, and nothing else crosses. Standard library only.

Transport: one JSON object per unix datagram, at most :data:`MAX_DATAGRAM_BYTES` bytes, sent to
``<home>/daemon.sock``. Every message carries ``v`` (the format version), ``type``, ``run`` (the
run id) and ``pid`` (the sender's process id).

``hello``
    Who is speaking: ``name``, ``project``, ``user``, ``framework``, ``framework_version``,
    ``hook``, ``rank``, ``local_rank``, ``world_size``, ``devices`` (list of GPU UUIDs or indexes
    as strings), ``host``, ``batch_size``, ``total_steps``, ``clock`` (where step durations come
    from: ``host_monotonic`` or ``cuda_event``), ``samples_source`` (how samples per step are
    known: ``batch`` seen by the hook, ``argument`` given by the user, ``config`` read from the
    trainer's settings, or ``none``), ``memory_source`` (``torch.cuda``, ``tf.config`` or empty)
    and the clock anchors ``mono`` (seconds on CLOCK_MONOTONIC) and ``wall`` (unix seconds) taken
    together. Sent at start and again every :data:`HELLO_EVERY_S` seconds, so a restarted daemon
    learns the run again. Optional: ``meta``, run metadata as an object of at most 32 string
    values (keys of at most 64 characters): the scheduler's (``slurm_job_id``,
    ``slurm_job_user``, ``slurm_job_account``, ... ``k8s_pod``, ``k8s_namespace``) and
    ``profiler run --meta``; ``attach`` (true: ``profiler attach`` records the process from
    outside and nobody will say ``bye`` for it; its end ends it as ``finished``) and ``watched``
    (true: ``profiler run`` watches the process and will say ``bye`` with its exit status).
    ``sent`` (``[steps, samples]``: what this process's hook has handed to the daemon's socket
    for the run so far; a daemon restarted after losing some counts the difference).
    Messages a sender sends about another process (``profiler run``, ``attach``, ``detach``)
    carry ``proxy: true``. Optional: ``budget`` (the run's budget, a positive amount in the
    pricing's currency, from ``track(budget=...)`` or ``profiler run --budget``) and
    ``on_exceed`` (``warn`` or ``stop``; default: ``profiler.toml [budget] on_exceed``).
``step``
    A batch of finished steps: ``steps`` is a list of ``[step, start_s, end_s, samples]`` with
    times on CLOCK_MONOTONIC in seconds (system-wide on Linux, so the daemon reads the same
    clock), optionally followed by a fifth element, an object of extras: ``dev_s`` (the step's
    duration on the device's own clock, seconds), ``loss`` (a finite loss), ``nonfinite`` (1 when
    the loss was NaN or infinite), ``mem`` (framework memory ``[allocated, peak_allocated,
    reserved]`` in bytes, any of them null when unknown). ``dropped`` counts steps the sender had
    to discard since the last batch. Hooks send the rows packed instead (JSON formatting of
    floats costs about a microsecond per row, more than the rest of a step's bookkeeping):
    ``packed`` is the base64 of little-endian float64 quadruples ``step, start_s, end_s,
    samples``, and ``extras`` maps a row's index (as a string) to its extras object. Steps that
    follow each other with nothing but their end times to tell (the optimizer hook's steady
    state) go as ``first`` (the first step's number), ``start`` (its start), ``samples`` (per
    step) and ``ends`` (packed float64 end times): step ``first + i`` runs from the previous end
    (``start`` for i = 0) to ``ends[i]``.
``budget`` (daemon -> hook, the reply path of :mod:`hooks.budget`)
    Sent by the daemon to the address a process's authenticated ``hello`` came from: ``event``
    (``warn``: at ``warn_at`` of the budget or when the projected cost first exceeds it;
    ``stop``: at the budget with ``on_exceed = "stop"``; ``refused``: no pricing configured, the
    budget cannot be enforced), ``spent``, ``projected`` (null when unknown), ``budget``,
    ``currency``, ``at_step`` (stop after this step, the same on every rank; 0: the next one)
    and ``text`` (the line the hook shows).
``bye``
    The process is done with the run: ``status`` is ``finished``, ``failed`` or ``interrupted``;
    ``mono`` is when.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from array import array
from pathlib import Path
from typing import Any

VERSION = 1
MAX_DATAGRAM_BYTES = 65_000
HELLO_EVERY_S = 5.0
SOCKET_NAME = "daemon.sock"
BYE_STATUSES = ("finished", "failed", "interrupted")


def default_home() -> Path:
    """The daemon's state directory: ``$PROFILER_HOME``, else ``$XDG_STATE_HOME/ml-profiler``,
    else ``~/.local/state/ml-profiler``. Socket, ledger, lock, status file and log live there."""
    explicit = os.environ.get("PROFILER_HOME")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "ml-profiler"


def socket_path(home: Path | None = None) -> Path:
    """Where the daemon listens: ``<home>/daemon.sock``."""
    return (home or default_home()) / SOCKET_NAME


def encode(message: dict[str, Any]) -> bytes:
    """One message as compact JSON bytes, with the format version set."""
    body = {"v": VERSION, **message}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def hello(run: str, pid: int, **fields: Any) -> dict[str, Any]:
    """A ``hello`` message (see the module docstring for its fields)."""
    return {"type": "hello", "run": run, "pid": pid, **fields}


def steps(run: str, pid: int, batch: list[list[Any]], dropped: int = 0) -> dict[str, Any]:
    """A ``step`` message carrying ``[step, start_s, end_s, samples(, extras)]`` rows."""
    return {"type": "step", "run": run, "pid": pid, "steps": batch, "dropped": dropped}


def packed_steps(
    run: str, pid: int, values: array, extras: dict[int, Any], dropped: int = 0
) -> dict[str, Any]:
    """A ``step`` message with packed rows: ``values`` holds ``step, start_s, end_s, samples``
    per row (an ``array('d')``), ``extras`` maps row index to that row's extras."""
    message = {"type": "step", "run": run, "pid": pid, "packed": pack(values), "dropped": dropped}
    if extras:
        message["extras"] = {str(i): e for i, e in extras.items()}
    return message


def steps_in_a_row(
    run: str, pid: int, first: int, start: float, ends: array, samples: int, dropped: int = 0
) -> dict[str, Any]:
    """A ``step`` message for consecutive steps known by their end times alone."""
    return {"type": "step", "run": run, "pid": pid, "first": first, "start": start,
            "ends": pack(ends), "samples": samples, "dropped": dropped}  # fmt: skip


def pack(values: array) -> str:
    """float64 values as base64 of their little-endian bytes."""
    if sys.byteorder == "big":
        values = array("d", values)
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def unpack(text: str) -> array:
    """The inverse of :func:`pack`; raises ValueError on text that is not packed float64s."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 8:
        raise ValueError("packed length is not a multiple of 8 bytes")
    values = array("d")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def budget_reply(run: str, event: str, **fields: Any) -> dict[str, Any]:
    """A ``budget`` reply from the daemon (see the module docstring for its fields)."""
    return {"type": "budget", "run": run, "event": event, **fields}


def bye(run: str, pid: int, status: str, mono: float) -> dict[str, Any]:
    """A ``bye`` message: this process is done with the run."""
    return {"type": "bye", "run": run, "pid": pid, "status": status, "mono": mono}
