"""The monthly report as data (profiler.report.tables): CSV with one RFC 4180 row per run and
every figure, JSON with the per-sample ratios, from a report built in memory."""

from __future__ import annotations

import csv
import io
import json

import pytest

from profiler.report.model import MonthReport, RunLine, Totals
from profiler.report.tables import CSV_COLUMNS, to_csv, to_json


def report() -> MonthReport:
    t = Totals(cost=2.0, cost_gpu_time=1.5, cost_energy=0.5, kwh=1.0, co2_kg=0.4, gpu_hours=2.0,
               runs=1, steps=10, samples=100)  # fmt: skip
    run = RunLine(id="=a", name="resnet", project="vision", user="ann", framework="pytorch",
                  host="node1", gpu_model="A100", status="finished", simulated=False,
                  currency="USD", totals=t)  # fmt: skip
    return MonthReport(month="2026-11", currency="USD", totals=t, previous=Totals(),
                       groups={}, runs=[run], daily=[], other_currency_runs=0, simulated_runs=0,
                       budget=4.0, forecast=None)  # fmt: skip


def test_csv_is_one_crlf_row_per_run_with_every_figure():
    text = to_csv(report())
    assert text.endswith("\r\n") and text.count("\r\n") == 2  # header and one run
    (row,) = csv.DictReader(io.StringIO(text, newline=""))
    assert tuple(row) == CSV_COLUMNS
    assert row["id"] == "'=a"  # a formula a spreadsheet would run: an apostrophe before it
    assert row["month"] == "2026-11" and row["simulated"] == "false" and row["cost"] == "2"
    assert row["cost_per_1k_samples"] == "20"  # 2.0 / 100 samples * 1000
    assert row["joules_per_sample"] == "36000"  # 1 kWh = 3.6e6 J over 100 samples


def test_json_holds_the_totals_the_ratios_and_the_budget_used():
    body = json.loads(to_json(report()))
    assert body["totals"]["cost"] == 2.0 and body["totals"]["joules_per_sample"] == 36000.0
    assert body["runs"][0]["id"] == "=a"  # JSON carries text exactly
    assert body["budget_used"] == pytest.approx(0.5) and body["forecast"] is None
    assert body["previous_month"]["cost_per_1k_samples"] is None  # no samples: unknown
