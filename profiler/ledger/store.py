"""The SQLite ledger: runs with metadata and totals, per-device totals, per-minute rollups.

WAL mode; SQL is parameterised; the schema version lives in ``PRAGMA user_version`` and
migrations (:mod:`profiler.ledger.schema`) run in order on open. A file that is not a ledger is
refused, never overwritten.
Minute rollups are keyed by the minute's start in unix seconds and *added to*, so a run that
spans a month boundary splits cleanly, and a restarted daemon continues where the last left off.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from profiler.ledger.schema import (
    MIGRATIONS,
    ROLLUP_SUMS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    schema_objects,
)

if TYPE_CHECKING:
    from profiler.cost.pricing import Pricing


class LedgerError(Exception):
    """The ledger cannot be used; the message says which file and what to do. ``repaired``
    names the tables a failed write found missing and re-created (empty): the caller may write
    again, everything it holds."""

    def __init__(self, message: str, repaired: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.repaired = repaired


# What a failed statement may raise: SQLite's errors, and integers beyond 64 bits or text
# SQLite cannot take (raised by the sqlite3 module before SQLite sees them).
_DB_ERRORS = (sqlite3.Error, OverflowError, ValueError)


@dataclass
class Rollup:
    """Additions to one run's minute (unix seconds of the minute's start).

    ``steps`` and ``samples`` stay 0 in the minutes of a run whose steps or samples are unknown
    (the daemon adds to them only for a step a hook timed): readers never show those zeros, as
    the run's row says unknown (``runs.steps``/``runs.samples`` NULL) and the report reads a
    run's rollup counts only when its row knows them
    (:func:`profiler.report.monthly._month_runs`)."""

    run_id: str
    minute: int
    gpu_energy_j: float = 0.0
    cpu_energy_j: float = 0.0
    gpu_seconds: float = 0.0
    steps: int = 0
    samples: int = 0
    cost_gpu_time: float = 0.0
    cost_energy: float = 0.0
    co2_g: float = 0.0
    waste_cost: float = 0.0


class Ledger:
    """One SQLite file. Not thread-safe: the daemon's main loop is its only writer."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.exists():
            raise LedgerError(f"no ledger at {self.path}: start the daemon or run a job first")
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        if not readonly and not self.path.exists():
            # Owner-only from the first byte; SQLite gives its -wal/-shm files the same mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=10)
            self.db.row_factory = sqlite3.Row
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate(readonly)
            missing = self.missing_tables()
        except sqlite3.DatabaseError as e:
            raise LedgerError(
                f"{self.path} is not a usable ledger ({e}); move it aside to start a new one"
            ) from e
        # The file this connection writes: a ledger deleted or replaced under a running daemon
        # is found by comparing it with what the path names now (:meth:`gone`).
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        # Tables found missing at open and re-created empty (a writable ledger only).
        self.repaired: tuple[str, ...] = ()
        if missing and readonly:
            raise LedgerError(
                f"{self.path} is missing its {', '.join(missing)} table"
                f"{'s' if len(missing) > 1 else ''}: start the daemon to re-create "
                "it, or move the file aside"
            )
        if missing:
            try:
                self.repaired = self.repair()
            except sqlite3.Error as e:  # a read-only or full disk: the tables cannot be made
                self.db.close()
                raise LedgerError(
                    f"{self.path} is missing its {', '.join(missing)} table"
                    f"{'s' if len(missing) > 1 else ''} and cannot re-create "
                    f"{'them' if len(missing) > 1 else 'it'} ({e}): free space or make the "
                    "file writable, or move it aside"
                ) from e

    def _migrate(self, readonly: bool) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} has ledger schema {version}, newer than this profiler "
                f"({SCHEMA_VERSION}): upgrade the profiler"
            )
        if version == SCHEMA_VERSION or readonly:
            return
        if version == 0:
            tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise LedgerError(
                    f"{self.path} is an SQLite file but not a profiler ledger; "
                    "move it aside or set PROFILER_HOME elsewhere"
                )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            # One transaction per step, version included: a migration stopped half-way leaves
            # the file as it was (executescript would otherwise commit statement by statement).
            self.db.executescript(
                f"BEGIN;\n{MIGRATIONS[step]}\nPRAGMA user_version = {step};\nCOMMIT;"
            )

    def missing_tables(self) -> tuple[str, ...]:
        """Tables the file's schema version should have but does not (dropped by hand)."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        have = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        return tuple(
            name
            for name, (kind, _sql) in schema_objects(min(version, SCHEMA_VERSION)).items()
            if kind == "table" and name not in have
        )

    def repair(self) -> tuple[str, ...]:
        """Re-create missing tables (and their indexes), empty, in one transaction; returns
        their names. What the dropped tables held is gone; nothing else is touched."""
        missing = self.missing_tables()
        if not missing:
            return ()
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        have = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        statements = [
            sql
            for name, (_kind, sql) in schema_objects(min(version, SCHEMA_VERSION)).items()
            if name not in have
        ]
        self.db.executescript("BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;")
        return missing

    def gone(self) -> str | None:
        """Why the path no longer names the file this ledger writes (``deleted`` or
        ``replaced``), or None while it does."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None  # cannot tell (permissions): the write itself will say
        return None if (st.st_dev, st.st_ino) == self._identity else "replaced"

    def close(self) -> None:
        self.db.close()

    def write(
        self,
        runs: Iterable[dict[str, Any]],
        devices: Iterable[tuple[str, str, str, float, float]],
        rollups: Iterable[Rollup],
        idle: Iterable[tuple[str, int, float]],
        merged: Iterable[str] = (),
        budget_events: Iterable[tuple[Any, ...]] = (),
    ) -> None:
        """Write run rows (the columns each row has replace the stored ones), per-device run
        totals (replacing) and add rollups, all in one transaction. ``devices`` rows are
        (run_id, uuid, model, joules, seconds); ``idle`` rows are (uuid, minute, joules);
        ``merged`` are recovery-file record tokens recorded as merged in the same transaction
        (:meth:`merged_tokens`); ``budget_events`` rows are added to ``budget_events``.

        Raises :class:`LedgerError` when nothing was written (the transaction is rolled back);
        when the cause was a missing table, it is re-created and named in ``repaired``."""
        try:
            self._write(runs, devices, rollups, idle, merged, budget_events)
        except _DB_ERRORS as e:
            try:
                repaired = self.repair()
            except sqlite3.Error:
                repaired = ()
            if repaired:
                raise LedgerError(
                    f"{self.path} had lost its {', '.join(repaired)} table(s), re-created empty",
                    repaired,
                ) from e
            raise LedgerError(f"cannot write {self.path} ({e})") from e

    def _write(
        self,
        runs: Iterable[dict[str, Any]],
        devices: Iterable[tuple[str, str, str, float, float]],
        rollups: Iterable[Rollup],
        idle: Iterable[tuple[str, int, float]],
        merged: Iterable[str] = (),
        budget_events: Iterable[tuple[Any, ...]] = (),
    ) -> None:
        with self.db:
            for run in runs:
                columns = [c for c in RUN_COLUMNS if c in run]
                updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c != "id")
                self.db.execute(
                    f"INSERT INTO runs ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)}) "
                    f"ON CONFLICT(id) DO UPDATE SET {updates}",
                    [_column(run, c) for c in columns],
                )
            self.db.executemany(
                "INSERT INTO run_devices (run_id, uuid, model, energy_j, gpu_seconds) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(run_id, uuid) DO UPDATE SET "
                "model=excluded.model, energy_j=excluded.energy_j, "
                "gpu_seconds=excluded.gpu_seconds",
                list(devices),
            )
            self.db.executemany(
                f"INSERT INTO rollups (run_id, minute, {', '.join(ROLLUP_SUMS)}) "
                f"VALUES (?, ?, {', '.join('?' for _ in ROLLUP_SUMS)}) "
                "ON CONFLICT(run_id, minute) DO UPDATE SET "
                + ", ".join(f"{c}={c}+excluded.{c}" for c in ROLLUP_SUMS),
                [(r.run_id, r.minute, *(getattr(r, c) for c in ROLLUP_SUMS)) for r in rollups],
            )
            self.db.executemany(
                "INSERT INTO idle_rollups (uuid, minute, energy_j) VALUES (?, ?, ?) "
                "ON CONFLICT(uuid, minute) DO UPDATE SET energy_j=energy_j+excluded.energy_j",
                list(idle),
            )
            self.db.executemany(
                "INSERT INTO recovery_merges (token, merged_at) VALUES (?, ?)",
                [(token, time.time()) for token in merged],
            )
            self.db.executemany(
                "INSERT INTO budget_events (run_id, at, event, reason, scope, source, spent, "
                "projected, budget, currency, at_step) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                list(budget_events),
            )

    def merged_tokens(self, tokens: Iterable[str]) -> set[str]:
        """Which of these recovery-file record tokens the ledger has merged already.
        Raises :class:`LedgerError` when the file cannot answer."""
        wanted = list(tokens)
        done: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            done.update(
                r["token"]
                for r in self.query(
                    "SELECT token FROM recovery_merges WHERE token IN "
                    f"({', '.join('?' for _ in chunk)})",
                    chunk,
                )
            )
        return done

    def runs(
        self, *, status: str | None = None, run_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Runs, newest first, as dicts (``meta`` decoded, per-device totals under ``devices``)."""
        where, args = [], []
        for column, value in (("status", status), ("id", run_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY started_at DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self.query(sql, args)
        for row in rows:
            row["meta"] = json.loads(row["meta"] or "{}")
            row["devices"] = self.query(
                "SELECT uuid, model, energy_j, gpu_seconds FROM run_devices WHERE run_id = ? "
                "ORDER BY uuid",
                (row["id"],),
            )
            row["budget_events"] = self.budget_events(row["id"])
        return rows

    def budget_events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's budget warnings and stops (``budget_events``), oldest first; [] in a
        ledger from before budgets that is open read-only (not migrated)."""
        try:
            return self.query(
                "SELECT at, event, reason, scope, source, spent, projected, budget, currency, "
                "at_step FROM budget_events WHERE run_id = ? ORDER BY at",
                (run_id,),
            )
        except LedgerError:
            have = self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'budget_events'"
            ).fetchone()
            if have is None:
                return []
            raise

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read as dicts; :class:`LedgerError` with one line when the file cannot
        answer (a missing table, a corrupt page, a lock held too long)."""
        try:
            return [dict(r) for r in self.db.execute(sql, tuple(args))]
        except sqlite3.Error as e:
            raise LedgerError(
                f"cannot read {self.path} ({e}); if it is damaged, move it aside"
            ) from e

    def run(self, run_id: str) -> dict[str, Any] | None:
        found = self.runs(run_id=run_id)
        return found[0] if found else None

    def rollups(self, run_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM rollups WHERE run_id = ? ORDER BY minute", (run_id,))

    def record_pricing(self, since: float, pricing: Pricing) -> None:
        """Remember the pricing in force from ``since`` (unix seconds), unless it is the same
        as the latest one recorded. Raises :class:`LedgerError` when the file cannot be written."""
        fields = (
            pricing.profile, pricing.kind, pricing.currency, pricing.gpu_hour_price,
            pricing.energy_price_kwh, pricing.pue, pricing.carbon_g_per_kwh,
            pricing.carbon_source, pricing.as_of,
        )  # fmt: skip
        last = self.query(
            "SELECT profile, kind, currency, gpu_hour_price, energy_price_kwh, pue, "
            "carbon_g_per_kwh, carbon_source, as_of FROM pricing_history "
            "ORDER BY since DESC LIMIT 1"
        )
        if last and tuple(last[0].values()) == fields:
            return
        try:
            with self.db:
                self.db.execute(
                    "INSERT OR REPLACE INTO pricing_history "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (since, *fields, json.dumps(pricing.sources, sort_keys=True)),
                )
        except _DB_ERRORS as e:
            raise LedgerError(f"cannot record the pricing in {self.path} ({e})") from e

    def pricing_history(self) -> list[dict[str, Any]]:
        """Every pricing the daemon used, oldest first (``since`` in unix seconds)."""
        rows = self.query("SELECT * FROM pricing_history ORDER BY since")
        for row in rows:
            row["sources"] = json.loads(row["sources"] or "{}")
        return rows

    def idle_energy_j(self) -> dict[str, float]:
        return {
            r["uuid"]: r["total"]
            for r in self.query(
                "SELECT uuid, sum(energy_j) AS total FROM idle_rollups GROUP BY uuid"
            )
        }


def _column(row: dict[str, Any], column: str) -> Any:
    value = row.get(column)
    if column == "meta":
        return json.dumps(value or {}, sort_keys=True)
    if column == "simulated":
        return int(bool(value))
    return value
