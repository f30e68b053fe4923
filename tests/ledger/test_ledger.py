"""The SQLite ledger: round trip, additive rollups, refusal of files that are not ledgers."""

import sqlite3

import pytest

from profiler.ledger.store import Ledger, LedgerError, Rollup


def row(**kw):
    base = {"id": "r1", "name": "n", "status": "running", "started_at": 100.0, "steps": 3,
            "samples": 12, "gpu_energy_j": 50.0, "gpu_seconds": 2.0, "meta": {"a": 1}}  # fmt: skip
    return {**base, **kw}


def test_round_trip_and_additive_rollups(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.write(
        [row()],
        [("r1", "GPU-1", "A100", 50.0, 2.0)],
        [Rollup("r1", 60, 50.0, 0, 2.0, 3, 12)],
        [("GPU-1", 60, 5.0)],
    )
    ledger.write(
        [row(steps=5, status="finished", ended_at=200.0)],
        [("r1", "GPU-1", "A100", 80.0, 3.0)],
        [Rollup("r1", 60, 30.0, 0, 1.0, 2, 8), Rollup("r1", 120, 1.0, 0, 0.1, 0, 0)],
        [("GPU-1", 60, 1.0)],
    )
    ledger.close()
    ro = Ledger(tmp_path / "l.sqlite", readonly=True)
    (r,) = ro.runs()
    assert r["steps"] == 5 and r["status"] == "finished" and r["meta"] == {"a": 1}
    assert r["devices"] == [
        {"uuid": "GPU-1", "model": "A100", "energy_j": 80.0, "gpu_seconds": 3.0}
    ]
    minutes = {m["minute"]: m for m in ro.rollups("r1")}
    assert minutes[60]["gpu_energy_j"] == 80.0 and minutes[60]["steps"] == 5
    assert minutes[120]["gpu_seconds"] == pytest.approx(0.1)
    assert ro.idle_energy_j() == {"GPU-1": 6.0}
    assert ro.run("nope") is None


def test_a_foreign_sqlite_file_is_refused_and_left_intact(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE precious (x)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="not a profiler ledger"):
        Ledger(path)
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == [
        ("precious",)
    ]


def test_a_corrupt_file_is_refused_and_not_overwritten(tmp_path):
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LedgerError, match="move it aside"):
        Ledger(path)
    assert path.read_bytes() == b"this is not sqlite at all" * 100


def test_readonly_missing_ledger_says_what_to_do(tmp_path):
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger(tmp_path / "none.sqlite", readonly=True)
