"""The ledger's schema (profiler.ledger.schema): older ledgers are migrated in place, keep their
runs, and mark what their version could not know as unknown (NULL)."""

import sqlite3

from profiler.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from profiler.ledger.store import Ledger, Rollup


def row(**kw):
    base = {"id": "r1", "name": "n", "status": "running", "started_at": 100.0, "steps": 3,
            "samples": 12, "gpu_energy_j": 50.0, "gpu_seconds": 2.0, "meta": {"a": 1}}  # fmt: skip
    return {**base, **kw}


def test_a_schema_1_ledger_is_migrated_in_place_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[1])
    db.execute(
        "INSERT INTO runs (id, name, status, started_at, steps, meta) "
        "VALUES ('old', 'n', 'finished', 1.0, 7, '{}')"
    )
    db.execute("INSERT INTO rollups (run_id, minute, gpu_energy_j) VALUES ('old', 60, 5.0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    ledger = Ledger(path)
    old = ledger.run("old")
    assert old["steps"] == 7 and old["cost_gpu_time"] == 0 and old["currency"] == ""
    ledger.write([row(id="new", currency="USD", cost_gpu_time=1.5, co2_g=3.0)], [],
                 [Rollup("new", 60, cost_gpu_time=1.5, co2_g=3.0)], [])  # fmt: skip
    assert ledger.run("new")["cost_gpu_time"] == 1.5
    assert ledger.rollups("new")[0]["co2_g"] == 3.0
    assert ledger.rollups("old")[0]["gpu_energy_j"] == 5.0
    assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    ledger.close()


def test_a_schema_2_ledger_marks_unknown_rows_null(tmp_path):
    path = tmp_path / "v2.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[1] + MIGRATIONS[2])
    rows = [("plain", "profiler.run", 0, 0, "{}"), ("bs", "keras.EnergyCallback", 5, 0,
            '{"samples_source": "none"}'), ("ok", "pytorch.track", 5, 320, "{}")]  # fmt: skip
    for run_id, hook, steps, samples, meta in rows:
        db.execute(
            "INSERT INTO runs (id, name, status, started_at, hook, steps, samples, meta) "
            "VALUES (?, ?, 'finished', 1.0, ?, ?, ?, ?)",
            (run_id, run_id, hook, steps, samples, meta),
        )
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    ledger = Ledger(path)
    got = {r["id"]: (r["steps"], r["samples"]) for r in ledger.runs()}
    assert got == {"plain": (None, None), "bs": (5, None), "ok": (5, 320)}
    ledger.close()
