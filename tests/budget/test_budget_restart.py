"""Budgets across a daemon restart, and as `profiler runs` shows them: in-process daemons on the
simulated GPU (300 W), flat 3.6 per GPU-hour (0.001 per GPU-second), exact figures."""

from __future__ import annotations

import json
import os

import pytest
from inprocess import FakeClock, advance, hello, pricing

from profiler.budget.settings import budget_settings
from profiler.cli.daemon_cmds import budget_cell
from profiler.cli.run_records import read_runs
from profiler.config import Config
from profiler.daemon.core import Daemon
from profiler.ingest.messages import Bye, StepBatch
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML

SETTINGS = {"per_run": 0.1, "on_exceed": "stop", "warn_at": 0.5}


def daemon(home, sim, clock) -> Daemon:
    """A daemon (a new one per call: a restart) on ``sim``, priced 0.001 per GPU-second."""
    d = Daemon(Config(home=home), gpu_sensor=NvmlSensor(sim, clock=clock), clock=clock,
               wall=lambda: 1.7e9 + clock.now)  # fmt: skip
    d.open_ledger()
    d.set_pricing(pricing(kind="flat", gph=3.6, kwh=0.0))
    d.budgets.settings = budget_settings(SETTINGS)
    return d


def steps(d: Daemon, run: str, pid: int, first: int, n: int, clock: FakeClock) -> None:
    """``n`` steps of 1 s each from step ``first``, the clock moving with them."""
    for i in range(first, first + n):
        d.handle(StepBatch(run, pid, ((i, clock.now, clock.now + 1.0, 32, None),), 0))
        advance(d, clock, 1.0)


def events(d: Daemon, run: str) -> list[tuple[str, str]]:
    rows = d.ledger.query(
        "SELECT event, scope FROM budget_events WHERE run_id = ? ORDER BY at", (run,)
    )
    return [(r["event"], r["scope"]) for r in rows]


def test_a_restarted_daemon_gives_no_warning_twice_and_stops_once(tmp_path):
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[[(100000.0, 300.0)]])
    pid = os.getpid()
    d = daemon(tmp_path, sim, clock)
    d.handle(hello("r", pid, clock.now))
    steps(d, "r", pid, 0, 60, clock)  # 0.06 spent: warned at 0.05
    assert events(d, "r") == [("warn", "run")]
    assert d.final_flush().ok
    # restart: the run goes on, its process says hello again
    d2 = daemon(tmp_path, sim, clock)
    assert d2.runs["r"].status == "running"
    d2.handle(hello("r", pid, clock.now))
    steps(d2, "r", pid, 60, 30, clock)  # 0.09: above warn_at again, no second warning
    assert events(d2, "r") == [("warn", "run")]
    assert d2.budgets.counts[("r", "warn")] == 1
    steps(d2, "r", pid, 90, 15, clock)  # past 0.1: stopped once
    assert events(d2, "r") == [("warn", "run"), ("stop", "run")]
    assert d2.runs["r"].bye_status == "budget_exceeded"
    assert d2.final_flush().ok
    # a second restart before the run ended: still stopped, no event again
    d3 = daemon(tmp_path, sim, clock)
    d3.handle(hello("r", pid, clock.now))
    steps(d3, "r", pid, 105, 5, clock)
    assert events(d3, "r") == [("warn", "run"), ("stop", "run")]
    assert "r" in d3.budgets.stops  # a process that says hello is told it is stopped
    d3.handle(Bye("r", pid, "finished", clock.now))
    advance(d3, clock, 1.0)
    assert d3.runs["r"].status == "budget_exceeded"
    assert d3.final_flush().ok


def test_runs_json_and_table_show_the_budget_spend_and_events(tmp_path, capsys):
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[[(100000.0, 300.0)]])
    pid = os.getpid()
    d = daemon(tmp_path, sim, clock)
    d.handle(hello("shown", pid, clock.now))
    steps(d, "shown", pid, 0, 110, clock)
    d.handle(Bye("shown", pid, "finished", clock.now))
    advance(d, clock, 1.0)
    d.budgets.settings = budget_settings({})
    d.handle(hello("free", pid, clock.now))
    steps(d, "free", pid, 0, 3, clock)
    d.handle(Bye("free", pid, "finished", clock.now))
    advance(d, clock, 1.0)
    assert d.final_flush().ok
    runs = {r["id"]: r for r in read_runs(Config(home=tmp_path))}
    r = runs["shown"]
    assert r["status"] == "budget_exceeded"
    assert r["budget"] == {"amount": 0.1, "scope": "run", "source": "per_run",
                           "on_exceed": "stop", "warn_at": 0.5}  # fmt: skip
    assert r["budget_spent"] == pytest.approx(r["cost"]) and r["budget_spent"] >= 0.1
    assert [e["event"] for e in r["budget_events"]] == ["warn", "stop"]
    warn, stop = r["budget_events"]
    assert warn["reason"] == "warn_at" and warn["spent"] == pytest.approx(0.05, abs=1.1e-3)
    assert stop["spent"] == pytest.approx(0.1, abs=1.1e-3) and stop["currency"] == "USD"
    assert warn["at"] < stop["at"] <= r["ended_at"]
    assert r["steps"] == 110  # nothing lost: every step sent is in the ledger
    free = runs["free"]
    assert free["budget"] is None and free["budget_spent"] is None
    assert free["budget_events"] == [] and free["budgets"] == []
    json.dumps(list(runs.values()))
    assert budget_cell(r) == f"{r['budget_spent']:.2f}/0.10"
    assert budget_cell(free) == "-"
    from argparse import Namespace

    from profiler.cli.daemon_cmds import cmd_runs

    assert cmd_runs(Config(home=tmp_path), Namespace(json=False, limit=None)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "BUDGET"
    line = next(x for x in out if x.startswith("shown"))
    assert "budget_exceeded" in line and line.split()[-1] == budget_cell(r)
    assert next(x for x in out if x.startswith("free")).split()[-1] == "-"


def test_a_warned_run_is_marked_in_the_table(tmp_path):
    r = {"budget": {"amount": 2.0}, "budget_spent": 1.6,
         "budget_events": [{"event": "warn"}]}  # fmt: skip
    assert budget_cell(r) == "1.60/2.00!"
    assert budget_cell({**r, "budget_spent": None}) == "?/2.00!"


def test_the_monthly_report_lists_the_runs_stopped_for_their_budget(tmp_path):
    import csv
    import io

    from profiler.report.monthly import build_report
    from profiler.report.render import render

    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[[(100000.0, 300.0)]])
    pid = os.getpid()
    d = daemon(tmp_path, sim, clock)
    for run, n in (("stopped", 110), ("warned", 70)):
        d.handle(hello(run, pid, clock.now))
        steps(d, run, pid, 0, n, clock)
        d.handle(Bye(run, pid, "finished", clock.now))
        advance(d, clock, 1.0)
    d.budgets.settings = budget_settings({})
    d.handle(hello("none", pid, clock.now))
    steps(d, "none", pid, 0, 5, clock)
    d.handle(Bye("none", pid, "finished", clock.now))
    advance(d, clock, 120.0)
    assert d.final_flush().ok
    assert d.runs["warned"].status == "finished"
    report = build_report(d.ledger, "2023-11", budget=None, now=1.7e9 + clock.now)
    assert [r.id for r in report.budget_stopped()] == ["stopped"]
    assert {r.id: (r.budget, r.budget_events) for r in report.budget_runs()} == {
        "stopped": (0.1, ["warn", "stop"]), "warned": (0.1, ["warn"])}  # fmt: skip
    md = render(report, "md")
    assert "## Budgets\n\n1 run(s) stopped for their budget: stopped." in md
    assert "| stopped | stopped | 0.10 |" in md and "| warn stop |" in md
    assert "| warned | warned | 0.10 |" in md
    body = json.loads(render(report, "json"))
    assert body["budget_stopped_runs"] == ["stopped"]
    by_id = {r["id"]: r for r in body["runs"]}
    assert by_id["none"]["budget"] is None and by_id["none"]["budget_events"] == []
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(render(report, "csv")))}
    assert rows["stopped"]["budget_events"] == "warn stop" and rows["stopped"]["budget"] == "0.1"
    assert rows["none"]["budget"] == ""
    assert "<h2>Budgets</h2><p>1 run(s) stopped for their budget: stopped.</p>" in render(
        report, "html"
    )


def test_budget_events_the_ledger_refused_at_exit_go_to_the_recovery_file_and_back(tmp_path):
    from profiler.ledger.recovery import read_recovery_records, recovery_path

    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[[(100000.0, 300.0)]])
    pid = os.getpid()
    d = daemon(tmp_path, sim, clock)
    d.handle(hello("rec", pid, clock.now))
    steps(d, "rec", pid, 0, 10, clock)
    assert d.flush()
    d.ledger.db.execute("PRAGMA query_only = ON")  # a full or read-only disk from here on
    steps(d, "rec", pid, 10, 100, clock)  # warned at 0.05, stopped at 0.1: not in the ledger
    assert [r.event for r in d.budgets.records] == ["warn", "stop"]
    assert events(d, "rec") == []
    outcome = d.final_flush()
    assert not outcome.ok and "2 budget event(s)" in outcome.message
    [(_token, held)] = read_recovery_records(recovery_path(d.config))[0]
    assert [(e[0], e[2]) for e in held.budget_events] == [("rec", "warn"), ("rec", "stop")]
    d.ledger.close()
    d2 = daemon(tmp_path, sim, clock)  # merges the recovery file, continues the run
    assert not recovery_path(d2.config).exists()
    assert events(d2, "rec") == [("warn", "run"), ("stop", "run")]
    d2.handle(hello("rec", pid, clock.now))
    steps(d2, "rec", pid, 110, 5, clock)
    assert events(d2, "rec") == [("warn", "run"), ("stop", "run")]  # not given again
    assert d2.runs["rec"].bye_status == "budget_exceeded"
    assert d2.final_flush().ok
    d3 = daemon(tmp_path, sim, clock)  # the merge is recorded: never merged twice
    assert events(d3, "rec") == [("warn", "run"), ("stop", "run")]
