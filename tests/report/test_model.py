"""The month's records (profiler.report.model): sums that count unknown figures instead of adding
zero, money only in the report's currency, months and budgets checked in one line."""

from __future__ import annotations

import datetime as dt

import pytest

from profiler.report.model import ReportError, RunLine, Totals, group_runs, parse_month, sum_runs


def line(rid: str, project: str, currency: str, totals: Totals) -> RunLine:
    return RunLine(id=rid, name=rid, project=project, user="ann", framework="pytorch",
                   host="node1", gpu_model="A100", status="finished", simulated=False,
                   currency=currency, totals=totals)  # fmt: skip


def test_sums_count_unknown_runs_and_add_money_in_the_report_currency_only():
    a = line("a", "vision", "USD", Totals(cost=2.0, cost_gpu_time=2.0, kwh=1.0, runs=1,
                                          steps=10, samples=100))  # fmt: skip
    b = line("b", "nlp", "USD", Totals(cost=1.0, cost_gpu_time=1.0, kwh=0.5, runs=1, steps=None,
                                       samples=None, steps_unknown_runs=1,
                                       samples_unknown_runs=1))  # fmt: skip
    c = line("c", "vision", "EUR", Totals(cost=50.0, cost_gpu_time=50.0, kwh=2.0, runs=1,
                                          steps=5, samples=50))  # fmt: skip
    t = sum_runs([a, b, c], "USD")
    assert t.cost == 3.0 and t.kwh == 3.5 and t.runs == 3  # EUR: counted, not summed
    assert t.steps == 15 and t.samples == 150 and t.samples_unknown_runs == 1
    assert t.cost_per_1k_samples is None and t.joules_per_sample is None  # part unknown
    only_a = sum_runs([a], "USD")
    assert only_a.cost_per_1k_samples == pytest.approx(20.0)  # 2.0 / 100 samples * 1000
    assert only_a.joules_per_sample == pytest.approx(36000.0)  # 1 kWh / 100 samples
    assert sum_runs([b], "USD").steps is None  # no run knows it: unknown, not 0
    assert [(k, g.cost) for k, g in group_runs([a, b, c], "project", "USD")] == [
        ("vision", 2.0), ("nlp", 1.0)]  # fmt: skip


def test_months_are_calendar_months_in_utc():
    label, start, end = parse_month("2028-02")
    assert label == "2028-02" and end - start == 29 * 86400  # a leap year
    assert start == dt.datetime(2028, 2, 1, tzinfo=dt.timezone.utc).timestamp()
    assert parse_month(None, dt.date(2026, 1, 15))[0] == "2025-12"  # the last complete month
    with pytest.raises(ReportError, match="expected YYYY-MM"):
        parse_month("2026-13")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0"])
def test_budget_in_profiler_toml_must_be_finite(tmp_path, value):
    from profiler.report.model import budgets_from_config

    with pytest.raises(ReportError, match="'monthly' must be a positive amount"):
        budgets_from_config({"monthly": float(value)}, "profiler.toml")
    with pytest.raises(ReportError, match="'projects.v' must be a positive amount"):
        budgets_from_config({"projects": {"v": float(value)}}, "profiler.toml")
