"""A project's monthly budget counts every run of the project on this node this month: in-process
daemon on the simulated GPU, flat 3.6 per GPU-hour (0.001 per GPU-second), exact figures."""

from __future__ import annotations

import os

import pytest
from inprocess import advance, hello, make_daemon, pricing

from profiler.budget.settings import budget_settings
from profiler.ingest.messages import Bye


def with_project(msg, project: str):
    msg.fields["project"] = project
    return msg


def test_project_budget_counts_the_months_runs_and_stops_the_live_one(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, [[(100000.0, 300.0)]])
    d.set_pricing(pricing(kind="flat", gph=3.6, kwh=0.0))
    d.budgets.settings = budget_settings({"projects": {"vision": 0.15}, "on_exceed": "stop"})
    pid = os.getpid()
    d.handle(with_project(hello("a", pid, clock.now), "vision"))
    advance(d, clock, 100.0)
    d.handle(Bye("a", pid, "finished", clock.now))
    advance(d, clock, 1.0)
    assert d.flush()
    assert d.runs["a"].cost.total == pytest.approx(0.1, abs=2e-4)
    assert d.budgets.counts[("a", "warn")] == 0  # 0.1 < 0.8 x 0.15
    d.handle(with_project(hello("b", pid + 1, clock.now), "vision"))
    advance(d, clock, 100.0)
    kinds = [(r.run, r.event, r.scope) for r in d.budgets.records]
    assert kinds == [("b", "warn", "project"), ("b", "stop", "project")]
    warn, stop = d.budgets.records
    assert warn.spent == pytest.approx(0.8 * 0.15, abs=2e-4)  # 0.1 of a, 0.02 of b
    assert stop.spent == pytest.approx(0.15, abs=2e-4) and stop.spent >= 0.15
    assert stop.source == "project vision" and stop.budget == 0.15
    assert d.runs["b"].bye_status == "budget_exceeded"
    assert d.runs["a"].status == "finished"
    rows = d.ledger.query("SELECT run_id, event, scope FROM budget_events ORDER BY at")
    assert [(r["run_id"], r["event"], r["scope"]) for r in rows] == kinds


def test_without_pricing_nothing_is_decided(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, [[(1000.0, 300.0)]])
    d.budgets.settings = budget_settings({"per_run": 0.001, "on_exceed": "stop"})
    d.handle(hello("free", os.getpid(), clock.now))
    advance(d, clock, 10.0)
    assert d.budgets.records == [] and d.runs["free"].bye_status is None


def test_a_schema_4_ledger_opens_and_gains_budget_events(tmp_path):
    import sqlite3

    from profiler.ledger.schema import MIGRATIONS
    from profiler.ledger.store import Ledger

    path = tmp_path / "v4.sqlite"
    db = sqlite3.connect(path)
    db.executescript("".join(MIGRATIONS[i] for i in range(1, 5)))
    db.execute("INSERT INTO runs (id, name, status, started_at, meta) "
               "VALUES ('old', 'n', 'finished', 1.0, '{}')")  # fmt: skip
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    ledger = Ledger(path)
    try:
        assert ledger.run("old")["status"] == "finished"
        assert ledger.query("SELECT count(*) AS n FROM budget_events")[0]["n"] == 0
        assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == 5
    finally:
        ledger.close()
