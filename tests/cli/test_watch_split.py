"""`profiler watch` marks a run whose GPU energy was split equally (issue 16): two runs share one
simulated GPU that gives no per-process activity; the real exporter's text is the input."""

from __future__ import annotations

import re

import pytest
from inprocess import advance, hello, make_daemon

from profiler.cli import watch
from profiler.daemon.exporter import render_metrics


@pytest.mark.parametrize(("supported", "basis"), [(True, "activity"), (False, "equal")])
def test_watch_marks_an_equal_split(tmp_path, two_pids, supported, basis):
    d, sim, clock = make_daemon(tmp_path, [None])
    sim.set_process_utilization_supported(0, supported)
    for pid, load in zip(two_pids, (0.9, 0.05), strict=True):
        sim.set_process_load(pid, load)
    d.sample()
    advance(d, clock, 1.0)
    for run, pid in zip(("busy", "idle"), two_pids, strict=True):
        d.handle(hello(run, pid, clock.now))
    advance(d, clock, 10.0)
    d.attribute_all()
    text = render_metrics(d).decode()
    snap = watch.build_snapshot(watch.parse(text), clock.now, d.wall())
    assert {r.id: r.attribution for r in snap.runs} == {"busy": basis, "idle": basis}
    frame = watch.render_text(snap)
    rows = [ln for ln in frame.splitlines() if ln.startswith(("busy", "idle"))]
    assert len(rows) == 2
    marked = all(re.search(r"\d (J|Wh|kWh)\*?= ", ln) for ln in rows)
    legend = "= GPU energy split equally among the runs holding the GPU" in frame
    assert marked is legend is (basis == "equal"), frame
