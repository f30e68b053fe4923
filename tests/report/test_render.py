"""The monthly report in each format (profiler.report.render) from a report built in memory:
text no ledger write can carry still gives valid UTF-8 and strict JSON."""

from __future__ import annotations

import html
import json
import math

import pytest

from profiler.report.model import RunLine, Totals
from profiler.report.render import render


def lone_surrogate_report() -> object:
    """A report holding text no ledger write can carry but a run's metadata JSON can: lone
    surrogates (``"\\ud800"`` decodes to one) and non-finite numbers."""
    from profiler.report.model import MonthReport

    bad = "x\ud800y\udfffz"
    t = Totals(cost=1.0, cost_gpu_time=1.0, kwh=1.0, gpu_hours=1.0, runs=1, steps=1, samples=1)
    run = RunLine(id=bad, name=bad, project=bad, user=bad, framework=bad, host=bad,
                  gpu_model=bad, status="finished", simulated=False, currency="USD", totals=t,
                  waste_by_reason={bad: 1.0, "idle": math.nan})  # fmt: skip
    return MonthReport(month="2026-11", currency="USD", totals=t, previous=Totals(),
                       groups={"project": [(bad, t)]}, runs=[run],
                       daily=[("2026-11-02", {bad: 1.0})], other_currency_runs=0,
                       simulated_runs=0, budget=None, forecast=math.inf)  # fmt: skip


@pytest.mark.parametrize("fmt", ("md", "html", "csv", "json"))
def test_lone_surrogates_and_non_finite_numbers_still_give_valid_utf8_and_json(fmt):
    text = render(lone_surrogate_report(), fmt)
    text.encode("utf-8")  # printing or writing it never raises
    shown = {"md": lambda: text.replace("\\", ""), "html": lambda: html.unescape(text),
             "csv": lambda: text,
             "json": lambda: json.dumps(json.loads(text), ensure_ascii=False)}[fmt]()  # fmt: skip
    assert "x\ufffdy\ufffdz" in shown
    if fmt == "json":
        body = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
        assert body["forecast"] is None  # unknown is null, never Infinity
