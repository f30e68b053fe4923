"""`profiler watch` shows a live run's spend against its budget and marks a warned run: the real
exporter's text of an in-process daemon on the simulated GPU (300 W), flat 0.001 per GPU-s."""

from __future__ import annotations

import os

from inprocess import advance, hello, make_daemon, pricing

from profiler.budget.settings import budget_settings
from profiler.cli import watch
from profiler.daemon.exporter import render_metrics


def test_watch_shows_spend_against_budget_and_the_warning(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, [[(100000.0, 300.0)]])
    d.set_pricing(pricing(kind="flat", gph=3.6, kwh=0.0))
    d.budgets.settings = budget_settings({"per_run": 2.0, "warn_at": 0.8})
    pid = os.getpid()
    d.sample()
    d.handle(hello("b", pid, clock.now))
    advance(d, clock, 1700.0, every=1.0)
    snap = watch.build_snapshot(watch.parse(render_metrics(d).decode()), clock.now, d.wall())
    runs = {r.id: r for r in snap.runs}
    b = runs["b"]
    assert b.budget == 2.0 and b.budget_warned and not b.budget_stopped
    assert abs(b.budget_spent - 1.0 * d.budgets.latest[("b", "run")][1]) < 1e-9
    assert b.budget_spent >= 1.6
    frame = watch.render_text(snap, width=240)
    row = next(ln for ln in frame.splitlines() if ln.startswith("b "))
    assert row.endswith(f"{b.budget_spent:.2f}/2.00 ({b.budget_spent / 2.0:.0%}) !"), row
    assert "BUDGET spent/budget" in frame
    assert watch.budget_text(watch.RunView("x", "x", "", "", "", "", "", False)) == "-"
