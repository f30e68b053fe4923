"""The exporter's read-only view of the daemon (profiler.daemon.view): /metrics rendered from an
object holding only the view's members is byte for byte the page rendered from the daemon, so
the exporter reads nothing else of it."""

import os
import types

from inprocess import hello, make_daemon, pricing

from profiler.daemon.exporter import render_metrics
from profiler.daemon.view import MetricsView
from profiler.ingest.messages import StepBatch, StepExtras


def test_metrics_from_the_view_alone_are_the_daemons_metrics(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, [[(100.0, 250.0)]])
    d.set_pricing(pricing(kind="flat", gph=3.6, kwh=0.2, pue=1.5, carbon=300.0))
    d.sample()
    d.handle(hello("r", os.getpid(), clock.now))
    for i in range(1, 20):
        clock.now += 0.1
        d.sample()
        row = (i, clock.now - 0.1, clock.now, 8, StepExtras(loss=1.0, memory=(1, 2, 3)))
        d.handle(StepBatch("r", os.getpid(), (row,), 0))
    d.cpu.energy_j = {"package-0": (100.0, "rapl")}  # as a CPU sensor would give
    members = [*MetricsView.__annotations__, "cpu_energy_j"]
    view = types.SimpleNamespace(**{name: getattr(d, name) for name in members})
    page = render_metrics(d)
    assert b'profiler_run_steps_total{run="r"} 19' in page
    assert render_metrics(view) == page
