"""The reads the reports run (profiler.ledger.queries), against sums worked out by hand: a month
selects the minute rollups that start in it, and each run's figures add up there."""

import pytest

from profiler.ledger import queries
from profiler.ledger.store import Ledger, Rollup

DAY = 86400


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    runs = [
        {
            "id": rid,
            "name": rid,
            "status": "finished",
            "started_at": 0.0,
            "steps": steps,
            "samples": steps,
            "meta": {"k": rid},
        }
        for rid, steps in (("a", 8), ("b", None))
    ]
    devices = [
        ("a", "GPU-1", "A100", 100.0, 10.0),
        ("a", "GPU-2", "H100", 50.0, 5.0),
        ("b", "GPU-3", "L4", 10.0, 1.0),
    ]
    rollups = [
        Rollup("a", 60, gpu_energy_j=100.0, gpu_seconds=10.0, steps=5, samples=50,
               cost_gpu_time=1.0, cost_energy=0.5, co2_g=2.0),
        Rollup("a", 120, gpu_energy_j=50.0, cpu_energy_j=20.0, gpu_seconds=5.0, steps=3,
               samples=30, cost_gpu_time=0.5, waste_cost=0.25),
        Rollup("b", DAY + 60, gpu_energy_j=10.0, gpu_seconds=1.0, cost_gpu_time=4.0),
    ]  # fmt: skip
    ledger.write(runs, devices, rollups, [])
    yield ledger
    ledger.close()


def test_month_sums_add_the_minutes_inside_the_span_only(ledger):
    (a,) = queries.month_rollup_sums(ledger, 0, DAY)  # b's minute is the next day
    assert a["run_id"] == "a" and a["gpu_j"] == 150.0 and a["cpu_j"] == 20.0
    assert a["gpu_s"] == 15.0 and a["steps"] == 8 and a["samples"] == 80
    assert a["c_gpu"] == 1.5 and a["c_energy"] == 0.5 and a["co2"] == 2.0 and a["waste"] == 0.25
    assert [r["run_id"] for r in queries.month_rollup_sums(ledger, 0, 2 * DAY)] == ["a", "b"]


def test_run_rows_days_and_models(ledger):
    rows = queries.month_run_rows(ledger, DAY, 2 * DAY)
    assert set(rows) == {"b"} and rows["b"]["steps_unknown"] == 1  # NULL steps: unknown
    assert queries.month_run_rows(ledger, 0, DAY)["a"]["steps_unknown"] == 0
    assert queries.run_gpu_models(ledger) == {"a": "A100", "b": "L4"}  # most of the energy
    days = sorted(tuple(r) for r in queries.daily_run_costs(ledger, 0, 2 * DAY))
    assert days == [("a", 0, 2.0), ("b", DAY, 4.0)]
    (usage,) = queries.daily_run_usage(ledger, 0, DAY)
    assert tuple(usage) == ("a", 0, 1.5, 0.5, 15.0, 170.0, 2.0)  # energy: GPU + CPU
