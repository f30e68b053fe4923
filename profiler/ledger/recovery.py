"""What the daemon could not write to its ledger survives it: the recovery file, the space set
aside for it, and the report of the last exit that ``profiler stop`` reads.

- ``<ledger>.recovery.jsonl`` (0600): one JSON line per final flush the ledger refused (disk
  full, file broken): run rows, per-device totals, minute rollups, idle rollups, exactly what
  :meth:`profiler.ledger.store.Ledger.write` takes. The next daemon (or its next flush that works)
  merges it in, in one transaction, and removes it.
- ``<home>/ledger.reserve``: :data:`RESERVE_BYTES` set aside at start; a final flush that fails
  frees it and tries again, so a full disk still has room for the last write or the recovery
  file.
- ``<home>/daemon.exit.json`` (0600): the pid and the outcome of the last daemon's final flush
  (``ok``, one-line ``message``); ``profiler stop`` prints it and exits non-zero unless ``ok``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from profiler.config import Config
from profiler.ledger.store import Rollup

RESERVE_BYTES = 1 << 20
RECOVERY_VERSION = 1


@dataclass
class Held:
    """What the daemon holds and the ledger does not have yet, as :meth:`Ledger.write` takes
    it: run rows, ``(run_id, uuid, model, joules, seconds)`` device totals, rollups and
    ``(uuid, minute, joules)`` idle rollups."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    devices: list[tuple[str, str, str, float, float]] = field(default_factory=list)
    rollups: list[Rollup] = field(default_factory=list)
    idle: list[tuple[str, int, float]] = field(default_factory=list)
    # budget warnings and stops (profiler.budget), as ``budget_events`` rows: run_id, at, event,
    # reason, scope, source, spent, projected, budget, currency, at_step
    budget_events: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class FlushOutcome:
    """How the final flush went: ``ok`` when everything held is in the ledger; ``message`` is
    one line saying so, or what was not written and where it went."""

    ok: bool
    message: str


def recovery_path(config: Config) -> Path:
    """``<ledger>.recovery.jsonl``, beside the ledger."""
    return config.ledger.with_name(config.ledger.name + ".recovery.jsonl")


def reserve_path(config: Config) -> Path:
    return config.home / "ledger.reserve"


def exit_report_path(config: Config) -> Path:
    return config.home / "daemon.exit.json"


def write_recovery(path: Path, held: Held) -> None:
    """Append ``held`` as one JSON line to ``path`` (created 0600) and sync it to disk.
    Raises OSError (the disk) or ValueError (a value JSON cannot hold); a line cut short by a
    crash is skipped when read back."""
    record = {
        "v": RECOVERY_VERSION,
        "runs": held.runs,
        "devices": [list(d) for d in held.devices],
        "rollups": [asdict(r) for r in held.rollups],
        "idle": [list(i) for i in held.idle],
        "budget_events": [list(e) for e in held.budget_events],
    }
    line = (json.dumps(record, allow_nan=False, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write ({written} of {len(line)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def combine(records: Iterable[Held]) -> Held:
    """Records merged into one, in order (later run rows win, rollups add up)."""
    held = Held()
    for record in records:
        held.runs += record.runs
        held.devices += record.devices
        held.rollups += record.rollups
        held.idle += record.idle
        held.budget_events += record.budget_events
    return held


def read_recovery_records(path: Path) -> tuple[list[tuple[str, Held]], int]:
    """Every readable record of a recovery file, in order, each with its token (the SHA-256
    of its line: the ledger records it when the record is merged, so none is merged twice),
    and the number of lines that could not be read (skipped). Raises FileNotFoundError when
    there is none, OSError when it cannot be read."""
    records: list[tuple[str, Held]] = []
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            if record.get("v") != RECOVERY_VERSION:
                raise ValueError("unknown version")
            runs = [dict(r) for r in record["runs"]]
            devices = [(str(a), str(b), str(c), float(d), float(e))
                       for a, b, c, d, e in record["devices"]]  # fmt: skip
            rollups = [Rollup(**r) for r in record["rollups"]]
            idle = [(str(u), int(m), float(j)) for u, m, j in record["idle"]]
            events = [budget_event_row(e) for e in record.get("budget_events", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
            continue
        token = hashlib.sha256(line.encode()).hexdigest()
        records.append((token, Held(runs, devices, rollups, idle, events)))
    return records, bad


def budget_event_row(e: list[Any]) -> tuple[Any, ...]:
    """A ``budget_events`` row read back from a recovery record (ValueError/TypeError when it
    is not one)."""
    run, at, event, reason, scope, source, spent, projected, budget, currency, at_step = e
    return (str(run), float(at), str(event), str(reason), str(scope), str(source), float(spent),
            None if projected is None else float(projected), float(budget), str(currency),
            int(at_step))  # fmt: skip


def make_reserve(config: Config) -> None:
    """Set aside :data:`RESERVE_BYTES` in the home (kept if already there). Raises OSError
    when the disk has not that much room."""
    path = reserve_path(config)
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def release_reserve(config: Config) -> bool:
    """Free the space set aside; True when there was some."""
    try:
        reserve_path(config).unlink()
    except OSError:
        return False
    return True


def write_exit_report(config: Config, pid: int, outcome: FlushOutcome) -> None:
    """Record the final flush's outcome for ``profiler stop`` (0600, replaced atomically).
    Raises OSError."""
    path = exit_report_path(config)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": pid, "ok": outcome.ok, "message": outcome.message}, out)
    tmp.replace(path)


def read_exit_report(config: Config, pid: int) -> FlushOutcome | None:
    """The outcome daemon ``pid`` recorded at exit, or None when it left none."""
    try:
        report = json.loads(exit_report_path(config).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("pid") != pid:
        return None
    return FlushOutcome(bool(report.get("ok")), str(report.get("message", "")))
