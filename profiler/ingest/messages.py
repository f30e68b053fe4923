"""Decode hook messages into typed records (:class:`Hello`, :class:`StepBatch`, :class:`Bye`);
a message that is not one raises :class:`Malformed` with a reason. The socket is read in
:mod:`profiler.ingest.receiver`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hooks import wire

MAX_STEPS_PER_MESSAGE = 10_000
MAX_TEXT = 256
# Bounds on counts, so that sums over a run stay far inside SQLite's 64-bit integers.
MAX_COUNT = 2**32  # samples in one step, batch size, steps dropped in one message
MAX_STEP = 2**48  # a step number, total steps
MAX_TIME_S = 2.0**40  # clock readings, seconds (some 35,000 years)


class Malformed(ValueError):
    """A message that cannot be used; ``reason`` is the counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Sender:
    """Who sent a datagram, from the kernel (``SCM_CREDENTIALS``), not from its text."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Hello:
    """``pid`` is the process the message is about: the sender itself, or, with ``proxy``, a
    process the sender speaks for (``profiler run``/``attach``)."""

    run: str
    pid: int
    fields: dict[str, Any]
    proxy: bool = False
    sender: Sender | None = None
    # Where the sender's socket is bound (an abstract address, bytes), from the kernel: the
    # daemon's budget replies go there (hooks.budget). None when unbound or in-process.
    reply_to: bytes | None = None


@dataclass(frozen=True)
class StepExtras:
    """What a step row may carry besides its times: device-clock duration (seconds), loss,
    whether the loss was NaN/inf, framework memory ``(allocated, peak, reserved)`` bytes."""

    dev_s: float | None = None
    loss: float | None = None
    nonfinite: bool = False
    memory: tuple[int | None, int | None, int | None] | None = None


StepRow = tuple[int, float, float, int, StepExtras | None]


@dataclass(frozen=True)
class StepBatch:
    """Rows of ``(step, start_mono, end_mono, samples, extras)``."""

    run: str
    pid: int
    rows: tuple[StepRow, ...]
    dropped: int
    proxy: bool = False
    sender: Sender | None = None


@dataclass(frozen=True)
class Bye:
    run: str
    pid: int
    status: str
    mono: float | None
    proxy: bool = False
    sender: Sender | None = None


Message = Hello | StepBatch | Bye


def decode(data: bytes) -> Message:
    """Parse one datagram into a message, or raise :class:`Malformed`."""
    if len(data) > wire.MAX_DATAGRAM_BYTES:
        raise Malformed("oversize", f"{len(data)} bytes")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise Malformed("not_json", str(e)[:80]) from e
    if not isinstance(body, dict):
        raise Malformed("not_object")
    if body.get("v") != wire.VERSION:
        raise Malformed("bad_version", repr(body.get("v"))[:40])
    kind = body.get("type")
    run = _label(body, "run", required=True)
    pid = _int(body, "pid", lo=1, hi=2**31)
    proxy = body.get("proxy", False)
    if not isinstance(proxy, bool):
        raise Malformed("bad_field", "proxy")
    if kind == "hello":
        return Hello(run, pid, _hello_fields(body), proxy)
    if kind == "step":
        dropped = _int(body, "dropped", lo=0, hi=MAX_COUNT, default=0)
        return StepBatch(run, pid, _step_rows(body), dropped, proxy)
    if kind == "bye":
        status = body.get("status")
        if status not in wire.BYE_STATUSES:
            raise Malformed("bad_field", "status")
        mono = body.get("mono")
        return Bye(run, pid, status, _time(mono, "mono") if mono is not None else None, proxy)
    raise Malformed("bad_type", repr(kind)[:40])


def _hello_fields(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (
        "name",
        "project",
        "user",
        "framework",
        "framework_version",
        "hook",
        "host",
        "clock",
        "samples_source",
        "memory_source",
    ):
        out[key] = _label(body, key)
    for key, lo, hi in (("rank", 0, 2**20), ("local_rank", 0, 2**20), ("world_size", 1, 2**20)):
        out[key] = _int(body, key, lo=lo, hi=hi, default=lo)
    out["batch_size"] = _int(body, "batch_size", lo=1, hi=MAX_COUNT, default=None)
    out["total_steps"] = _int(body, "total_steps", lo=1, hi=MAX_STEP, default=None)
    devices = body.get("devices") or []
    if not isinstance(devices, list) or len(devices) > 64:
        raise Malformed("bad_field", "devices")
    out["devices"] = tuple(sanitize(str(d)) for d in devices)
    out["mono"] = _time(body.get("mono"), "mono")
    out["wall"] = _time(body.get("wall"), "wall")
    # When the hook began (monotonic seconds), if before it reached the daemon.
    since = body.get("since")
    out["since"] = min(_time(since, "since"), out["mono"]) if since is not None else out["mono"]
    # Run metadata (scheduler job id, user, account, pod, `profiler run --meta`): at most 32
    # string -> string entries, keys of at most 64 characters, values bounded like labels.
    meta = body.get("meta") or {}
    if not isinstance(meta, dict) or len(meta) > 32:
        raise Malformed("bad_field", "meta")
    out["meta"] = {}
    for key, value in meta.items():
        if not isinstance(value, str) or not sanitize(key) or len(key) > 64:
            raise Malformed("bad_field", "meta")
        out["meta"][sanitize(key)] = sanitize(value)
    # What the hook has sent for the run so far: [steps, samples].
    sent = body.get("sent")
    if sent is not None:
        if not (isinstance(sent, list) and len(sent) == 2 and all(
            type(n) is int and 0 <= n <= MAX_STEP * 1024 for n in sent
        )):  # fmt: skip
            raise Malformed("bad_field", "sent")
        out["sent"] = (sent[0], sent[1])
    # A budget for the run (track(budget=...), profiler run --budget) and what to do at it.
    budget = body.get("budget")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise Malformed("bad_field", "budget")
        if not 0 < budget < math.inf:
            raise Malformed("bad_field", "budget")
        out["budget"] = float(budget)
    on_exceed = body.get("on_exceed")
    if on_exceed is not None:
        if on_exceed not in ("warn", "stop"):
            raise Malformed("bad_field", "on_exceed")
        out["on_exceed"] = on_exceed
    # `profiler attach`: the process is recorded from outside; nobody will say `bye` for it.
    # `profiler run`: the sender watches the process and says `bye` with its exit status.
    for key in ("attach", "watched"):
        flag = body.get(key, False)
        if not isinstance(flag, bool):
            raise Malformed("bad_field", key)
        out[key] = flag
    return out


def _step_rows(body: dict[str, Any]) -> tuple[StepRow, ...]:
    if "packed" in body:
        return _packed_rows(body)
    if "ends" in body:
        return _rows_in_a_row(body)
    rows = body.get("steps")
    if not isinstance(rows, list) or len(rows) > MAX_STEPS_PER_MESSAGE:
        raise Malformed("bad_field", "steps")
    out = []
    for row in rows:
        if not isinstance(row, list) or len(row) not in (4, 5):
            raise Malformed("bad_field", "step row")
        extras = _extras(row[4]) if len(row) == 5 else None
        out.append(_row(*row[:4], extras))
    return tuple(out)


def _packed_rows(body: dict[str, Any]) -> tuple[StepRow, ...]:
    packed, extras = body.get("packed"), body.get("extras") or {}
    if not isinstance(packed, str) or not isinstance(extras, dict):
        raise Malformed("bad_field", "packed steps")
    try:
        values = wire.unpack(packed)
    except (ValueError, UnicodeEncodeError) as e:
        raise Malformed("bad_field", "packed steps") from e
    if len(values) % 4 or len(values) // 4 > MAX_STEPS_PER_MESSAGE:
        raise Malformed("bad_field", "packed steps")
    out = []
    for i in range(0, len(values), 4):
        step, start, end, samples = values[i : i + 4]
        if not (step.is_integer() and samples.is_integer()):
            raise Malformed("bad_field", "step row")
        out.append(_row(int(step), start, end, int(samples), _extras(extras.get(str(i // 4)))))
    return tuple(out)


def _rows_in_a_row(body: dict[str, Any]) -> tuple[StepRow, ...]:
    first = _int(body, "first", lo=0, hi=MAX_STEP)
    samples = _int(body, "samples", lo=0, hi=MAX_COUNT)
    start = _time(body.get("start"), "start")
    try:
        ends = wire.unpack(body.get("ends"))
    except (ValueError, TypeError, AttributeError, UnicodeEncodeError) as e:
        raise Malformed("bad_field", "ends") from e
    if len(ends) > MAX_STEPS_PER_MESSAGE:
        raise Malformed("bad_field", "ends")
    out = []
    for i, end in enumerate(ends):
        out.append(_row(first + i, start, end, samples, None))
        start = end
    return tuple(out)


def _row(step: Any, start: Any, end: Any, samples: Any, extras: StepExtras | None) -> StepRow:
    if not (_is_int(step) and _is_int(samples) and 0 <= step <= MAX_STEP
            and 0 <= samples <= MAX_COUNT):  # fmt: skip
        raise Malformed("bad_field", "step row")
    start = _time(start, "step start")
    end = _time(end, "step end")
    if end < start:
        raise Malformed("bad_field", "step ends before it starts")
    return (int(step), start, end, int(samples), extras)


def _extras(value: Any) -> StepExtras | None:
    """Decode a step row's extras; unknown keys are ignored (newer hooks), bad values refused."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Malformed("bad_field", "step extras")
    dev_s = value.get("dev_s")
    if dev_s is not None:
        dev_s = _finite(dev_s, "dev_s")
        if dev_s < 0:
            raise Malformed("bad_field", "dev_s")
    loss = value.get("loss")
    if loss is not None:
        loss = _finite(loss, "loss")
    memory = value.get("mem")
    if memory is not None:
        if not isinstance(memory, list) or len(memory) != 3:
            raise Malformed("bad_field", "mem")
        if any(m is not None and (not _is_int(m) or m < 0) for m in memory):
            raise Malformed("bad_field", "mem")
        memory = tuple(memory)
    return StepExtras(dev_s, loss, bool(value.get("nonfinite")), memory)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**62) < value < 2**62


def _int(body: dict[str, Any], key: str, *, lo: int, hi: int, default: Any = ...) -> Any:
    value = body.get(key)
    if value is None and default is not ...:
        return default
    if not _is_int(value) or not lo <= value <= hi:
        raise Malformed("bad_field", key)
    return value


def _time(value: Any, key: str) -> float:
    """A clock reading in seconds (monotonic or unix): finite, from 0 to MAX_TIME_S."""
    seconds = _finite(value, key)
    if not 0 <= seconds <= MAX_TIME_S:
        raise Malformed("bad_field", key)
    return seconds


def _finite(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Malformed("bad_field", key)
    return float(value)


def _label(body: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise Malformed("bad_field", key)
    return sanitize(value)


def sanitize(text: str) -> str:
    """Bound a label value's length and drop control characters."""
    return "".join(ch for ch in text[:MAX_TEXT] if ch.isprintable())
