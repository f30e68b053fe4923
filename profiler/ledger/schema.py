"""The ledger's schema: the migrations that build it, step by step, and its column lists.

The schema version lives in ``PRAGMA user_version``; :data:`MIGRATIONS` ``[n]`` takes a ledger
from version ``n - 1`` to ``n`` (:class:`profiler.ledger.store.Ledger` runs them in order on
open, one transaction each). Column names are what users see (``profiler runs --json``, SQL on
the file) and never change: ``cost_gpu_time``, ``cost_energy`` and ``waste_cost`` hold currency.
"""

from __future__ import annotations

import sqlite3
from functools import cache

SCHEMA_VERSION = 5

MIGRATIONS = {
    1: """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        project TEXT NOT NULL DEFAULT '',
        user TEXT NOT NULL DEFAULT '',
        framework TEXT NOT NULL DEFAULT '',
        framework_version TEXT NOT NULL DEFAULT '',
        hook TEXT NOT NULL DEFAULT '',
        host TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        steps INTEGER NOT NULL DEFAULT 0,
        samples INTEGER NOT NULL DEFAULT 0,
        dropped_steps INTEGER NOT NULL DEFAULT 0,
        step_time_sum_s REAL NOT NULL DEFAULT 0,
        step_time_p95_s REAL,
        step_energy_sum_j REAL NOT NULL DEFAULT 0,
        steps_with_energy INTEGER NOT NULL DEFAULT 0,
        gpu_energy_j REAL,
        gpu_seconds REAL NOT NULL DEFAULT 0,
        gpu_power_peak_w REAL,
        cpu_energy_j REAL NOT NULL DEFAULT 0,
        gpu_source TEXT NOT NULL DEFAULT '',
        energy_source TEXT NOT NULL DEFAULT '',
        simulated INTEGER NOT NULL DEFAULT 0,
        batch_size INTEGER,
        total_steps INTEGER,
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_started ON runs(started_at);
    CREATE TABLE run_devices (
        run_id TEXT NOT NULL REFERENCES runs(id),
        uuid TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        energy_j REAL NOT NULL DEFAULT 0,
        gpu_seconds REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, uuid)
    );
    CREATE TABLE rollups (
        run_id TEXT NOT NULL,
        minute INTEGER NOT NULL,
        gpu_energy_j REAL NOT NULL DEFAULT 0,
        cpu_energy_j REAL NOT NULL DEFAULT 0,
        gpu_seconds REAL NOT NULL DEFAULT 0,
        steps INTEGER NOT NULL DEFAULT 0,
        samples INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, minute)
    );
    CREATE TABLE idle_rollups (
        uuid TEXT NOT NULL,
        minute INTEGER NOT NULL,
        energy_j REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (uuid, minute)
    );
    """,
    # Cost, carbon and waste, priced when the work happened (currency of the pricing then).
    2: """
    ALTER TABLE runs ADD COLUMN currency TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN cost_gpu_time REAL NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN cost_energy REAL NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN co2_g REAL NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN waste_cost REAL NOT NULL DEFAULT 0;
    ALTER TABLE rollups ADD COLUMN cost_gpu_time REAL NOT NULL DEFAULT 0;
    ALTER TABLE rollups ADD COLUMN cost_energy REAL NOT NULL DEFAULT 0;
    ALTER TABLE rollups ADD COLUMN co2_g REAL NOT NULL DEFAULT 0;
    ALTER TABLE rollups ADD COLUMN waste_cost REAL NOT NULL DEFAULT 0;
    CREATE TABLE pricing_history (
        since REAL PRIMARY KEY,
        profile TEXT NOT NULL,
        kind TEXT NOT NULL,
        currency TEXT NOT NULL,
        gpu_hour_price REAL NOT NULL,
        energy_price_kwh REAL NOT NULL,
        pue REAL NOT NULL,
        carbon_g_per_kwh REAL,
        carbon_source TEXT NOT NULL DEFAULT '',
        as_of TEXT NOT NULL DEFAULT '',
        sources TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # Unknown is NULL, never 0: a run no hook times has NULL steps and samples, and a hook that
    # counts no samples (no batch size) NULL samples. SQLite cannot drop NOT NULL in place, so
    # the table is rebuilt; earlier rows that were unknown are marked so where the row says it.
    3: """
    CREATE TABLE runs_v3 (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        project TEXT NOT NULL DEFAULT '',
        user TEXT NOT NULL DEFAULT '',
        framework TEXT NOT NULL DEFAULT '',
        framework_version TEXT NOT NULL DEFAULT '',
        hook TEXT NOT NULL DEFAULT '',
        host TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        steps INTEGER,
        samples INTEGER,
        dropped_steps INTEGER NOT NULL DEFAULT 0,
        step_time_sum_s REAL NOT NULL DEFAULT 0,
        step_time_p95_s REAL,
        step_energy_sum_j REAL NOT NULL DEFAULT 0,
        steps_with_energy INTEGER NOT NULL DEFAULT 0,
        gpu_energy_j REAL,
        gpu_seconds REAL NOT NULL DEFAULT 0,
        gpu_power_peak_w REAL,
        cpu_energy_j REAL NOT NULL DEFAULT 0,
        gpu_source TEXT NOT NULL DEFAULT '',
        energy_source TEXT NOT NULL DEFAULT '',
        simulated INTEGER NOT NULL DEFAULT 0,
        batch_size INTEGER,
        total_steps INTEGER,
        meta TEXT NOT NULL DEFAULT '{}',
        currency TEXT NOT NULL DEFAULT '',
        cost_gpu_time REAL NOT NULL DEFAULT 0,
        cost_energy REAL NOT NULL DEFAULT 0,
        co2_g REAL NOT NULL DEFAULT 0,
        waste_cost REAL NOT NULL DEFAULT 0
    );
    INSERT INTO runs_v3 (
        id, name, project, user, framework, framework_version, hook, host, status, started_at,
        ended_at, steps, samples, dropped_steps, step_time_sum_s, step_time_p95_s,
        step_energy_sum_j, steps_with_energy, gpu_energy_j, gpu_seconds, gpu_power_peak_w,
        cpu_energy_j, gpu_source, energy_source, simulated, batch_size, total_steps, meta,
        currency, cost_gpu_time, cost_energy, co2_g, waste_cost
    ) SELECT
        id, name, project, user, framework, framework_version, hook, host, status, started_at,
        ended_at, steps, samples, dropped_steps, step_time_sum_s, step_time_p95_s,
        step_energy_sum_j, steps_with_energy, gpu_energy_j, gpu_seconds, gpu_power_peak_w,
        cpu_energy_j, gpu_source, energy_source, simulated, batch_size, total_steps, meta,
        currency, cost_gpu_time, cost_energy, co2_g, waste_cost
    FROM runs;
    UPDATE runs_v3 SET samples = NULL
        WHERE json_valid(meta) AND json_extract(meta, '$.samples_source') = 'none';
    UPDATE runs_v3 SET steps = NULL, samples = NULL WHERE steps = 0 AND hook LIKE 'profiler.%';
    DROP TABLE runs;
    ALTER TABLE runs_v3 RENAME TO runs;
    CREATE INDEX runs_started ON runs(started_at);
    """,
    # The recovery-file records merged (one token per record line), written in the merge's own
    # transaction: a record is never merged twice (its rollups would count twice).
    4: """
    CREATE TABLE recovery_merges (
        token TEXT PRIMARY KEY,
        merged_at REAL NOT NULL
    );
    """,
    # Budget events (profiler.budget): warnings and stops, money in `currency`; `at` unix s.
    5: """
    CREATE TABLE budget_events (
        run_id TEXT NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        reason TEXT NOT NULL,
        scope TEXT NOT NULL,
        source TEXT NOT NULL,
        spent REAL NOT NULL,
        projected REAL,
        budget REAL NOT NULL,
        currency TEXT NOT NULL DEFAULT '',
        at_step INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX budget_events_run ON budget_events(run_id);
    """,
}


ROLLUP_SUMS = (
    "gpu_energy_j", "cpu_energy_j", "gpu_seconds", "steps", "samples", "cost_gpu_time",
    "cost_energy", "co2_g", "waste_cost",
)  # fmt: skip

RUN_COLUMNS = (
    "id", "name", "project", "user", "framework", "framework_version", "hook", "host", "status",
    "started_at", "ended_at", "steps", "samples", "dropped_steps", "step_time_sum_s",
    "step_time_p95_s", "step_energy_sum_j", "steps_with_energy", "gpu_energy_j", "gpu_seconds",
    "gpu_power_peak_w", "cpu_energy_j", "gpu_source", "energy_source", "simulated", "batch_size",
    "total_steps", "meta", "currency", "cost_gpu_time", "cost_energy", "co2_g", "waste_cost",
)  # fmt: skip


@cache
def schema_objects(version: int) -> dict[str, tuple[str, str]]:
    """The tables and indexes of a ledger at schema ``version``: name -> (type, CREATE SQL),
    read from an in-memory database built by the migrations themselves."""
    db = sqlite3.connect(":memory:")
    try:
        for step in range(1, version + 1):
            db.executescript(MIGRATIONS[step])
        return {
            name: (kind, sql)
            for kind, name, sql in db.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
            )
        }
    finally:
        db.close()
