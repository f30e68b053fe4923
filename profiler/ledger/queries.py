"""The ledger reads the reports need (monthly report, FOCUS export): every SQL statement a
report runs lives here, so that :mod:`profiler.report` never touches SQL.

Times are unix seconds; a span ``(start, end)`` selects the minute rollups whose minute starts
in ``[start, end)``. Energy in joules, GPU time in seconds, money in each run's currency, CO2 in
grams, as the ledger stores them. Rows are :data:`Row` (read by column name). The aggregation
happens in SQLite, so a month of a million minute rollups stays well under a second. Errors are
SQLite's own (:class:`sqlite3.Error`), as when the reports ran the SQL themselves.
"""

from __future__ import annotations

import sqlite3

from profiler.ledger.store import Ledger

# A row of a read: by column name (``row["run_id"]``), by index, or unpacked as a tuple.
Row = sqlite3.Row


def month_rollup_sums(ledger: Ledger, start: float, end: float) -> list[Row]:
    """Per run with minute rollups in ``[start, end)``, their sums there: ``run_id``, ``gpu_j``
    and ``cpu_j`` (J), ``gpu_s`` (s), ``steps``, ``samples``, ``c_gpu`` and ``c_energy`` (cost
    of GPU time and of energy, the run's currency), ``co2`` (g), ``waste`` (currency)."""
    return ledger.db.execute(
        "SELECT run_id, sum(gpu_energy_j) AS gpu_j, sum(cpu_energy_j) AS cpu_j, "
        "sum(gpu_seconds) AS gpu_s, sum(steps) AS steps, sum(samples) AS samples, "
        "sum(cost_gpu_time) AS c_gpu, sum(cost_energy) AS c_energy, sum(co2_g) AS co2, "
        "sum(waste_cost) AS waste FROM rollups WHERE minute >= ? AND minute < ? GROUP BY run_id",
        (start, end),
    ).fetchall()


def month_run_rows(ledger: Ledger, start: float, end: float) -> dict[str, Row]:
    """Run id -> the run's row, for the runs with minute rollups in ``[start, end)``: ``id``,
    ``name``, ``project``, ``user``, ``framework``, ``host``, ``status``, ``simulated``,
    ``currency``, ``meta`` (JSON text), ``gpu_energy_j`` (the whole run's, J; NULL unknown),
    and the flags ``steps_unknown``, ``samples_unknown``
    (the run's count is NULL) and ``gpu_unknown`` (no GPU sensor measured it)."""
    return {
        r["id"]: r
        for r in ledger.db.execute(
            "SELECT id, name, project, user, framework, host, status, simulated, currency, meta, "
            "gpu_energy_j, steps IS NULL AS steps_unknown, samples IS NULL AS samples_unknown, "
            "gpu_source = 'none' AS gpu_unknown "
            "FROM runs WHERE id IN (SELECT DISTINCT run_id FROM rollups "
            "WHERE minute >= ? AND minute < ?)",
            (start, end),
        )
    }


def budget_events_of(ledger: Ledger, run_ids: list[str]) -> dict[str, list[str]]:
    """Run id -> its budget events (``warn``, ``stop``) in the order given, for ``run_ids``."""
    out: dict[str, list[str]] = {}
    for i in range(0, len(run_ids), 500):
        chunk = run_ids[i : i + 500]
        for run_id, event in ledger.db.execute(
            "SELECT run_id, event FROM budget_events WHERE run_id IN "
            f"({', '.join('?' for _ in chunk)}) ORDER BY at",
            chunk,
        ):
            out.setdefault(run_id, []).append(event)
    return out


def run_gpu_models(ledger: Ledger) -> dict[str, str]:
    """Run id -> the model of the GPU that carried most of the run's energy."""
    # SQLite takes the bare column from the row holding the max
    return {
        r[0]: r[1]
        for r in ledger.db.execute(
            "SELECT run_id, model, max(energy_j) FROM run_devices GROUP BY run_id"
        ).fetchall()
    }


def daily_run_costs(ledger: Ledger, start: float, end: float) -> list[Row]:
    """``(run_id, day, cost)`` per run and UTC day of ``[start, end)``: ``day`` the day's start
    (unix seconds), ``cost`` the cost of GPU time plus energy (the run's currency)."""
    return ledger.db.execute(
        "SELECT run_id, CAST(minute / 86400 AS INTEGER) * 86400 AS day, "
        "sum(cost_gpu_time + cost_energy) FROM rollups WHERE minute >= ? AND minute < ? "
        "GROUP BY run_id, day",
        (start, end),
    ).fetchall()


def daily_run_usage(ledger: Ledger, start: float, end: float) -> list[Row]:
    """Per run and UTC day of ``[start, end)``, ordered by day then run id: ``(run_id, day,
    cost_gpu_time, cost_energy, gpu_seconds, energy_j, co2_g)``, ``day`` the day's start (unix
    seconds), ``energy_j`` GPU plus CPU energy (J), money in the run's currency."""
    return ledger.db.execute(
        "SELECT run_id, CAST(minute / 86400 AS INTEGER) * 86400 AS day, sum(cost_gpu_time), "
        "sum(cost_energy), sum(gpu_seconds), sum(gpu_energy_j + cpu_energy_j), sum(co2_g) "
        "FROM rollups WHERE minute >= ? AND minute < ? GROUP BY run_id, day ORDER BY day, run_id",
        (start, end),
    ).fetchall()


def month_run_metas(ledger: Ledger, start: float, end: float) -> dict[str, str]:
    """Run id -> the run's ``meta`` (JSON text, undecoded), for the runs with minute rollups in
    ``[start, end)`` only."""
    return {
        r["id"]: r["meta"]
        for r in ledger.db.execute(
            "SELECT id, meta FROM runs WHERE id IN (SELECT DISTINCT run_id FROM rollups "
            "WHERE minute >= ? AND minute < ?)",
            (start, end),
        )
    }
