"""The monthly report over a seeded ledger: totals by hand, a run across the month boundary split
by its minute rollups, a hostile run name escaped, simulated runs marked."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from conftest import profiler_env, run_cli

from profiler.ledger.store import Ledger, Rollup
from profiler.report.model import ReportError, parse_month
from profiler.report.monthly import build_report
from profiler.report.render import render

UTC = dt.timezone.utc
NOV = dt.datetime(2026, 11, 1, tzinfo=UTC).timestamp()
HOSTILE = "<script>alert(1)</script>"


def minute(day: int, hour: int = 0, minute: int = 0, month: int = 11) -> int:
    return int(dt.datetime(2026, month, day, hour, minute, tzinfo=UTC).timestamp())


def run_row(rid, name, project, framework, simulated=False, currency="USD"):
    return {"id": rid, "name": name, "project": project, "user": "ann", "framework": framework,
            "host": "node1", "status": "finished", "started_at": NOV - 3600,
            "simulated": simulated, "currency": currency, "meta": {"cost": {"co2_known": True}},
            "steps": 0, "samples": 0}  # known (the rollups carry the counts)  # fmt: skip


def roll(rid, at, cost_gpu, cost_energy=0.0, gpu_j=3.6e6, cpu_j=0.0, gpu_s=3600.0, steps=100,
         samples=1000, co2_g=500.0, waste=0.0):  # fmt: skip
    return Rollup(rid, at, gpu_energy_j=gpu_j, cpu_energy_j=cpu_j, gpu_seconds=gpu_s, steps=steps,
                  samples=samples, cost_gpu_time=cost_gpu, cost_energy=cost_energy, co2_g=co2_g,
                  waste_cost=waste)  # fmt: skip


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    runs = [
        {
            **run_row("a", "resnet", "vision", "pytorch"),
            "meta": {"cost": {"co2_known": True, "waste": {"idle": 3.0, "nonfinite": 1.0}}},
        },
        run_row("b", "bert", "nlp", "keras-tensorflow"),  # spans Oct 31 -> Nov 1
        run_row("c", HOSTILE, "vision", "pytorch", simulated=True),
        run_row("d", "eur-run", "nlp", "pytorch", currency="EUR"),
    ]
    devices = [("a", "GPU-1", "A100", 1.0, 1.0), ("b", "GPU-2", "H100", 1.0, 1.0),
               ("c", "GPU-1", "A100", 1.0, 1.0), ("d", "GPU-3", "L4", 1.0, 1.0)]  # fmt: skip
    rollups = [
        roll("a", minute(3, 10), 10.0, cost_energy=1.0, waste=2.0),
        roll("a", minute(3, 11), 5.0, cpu_j=0.36e6),
        roll("b", minute(31, 23, 59, month=10), 7.0),  # October's part
        roll("b", minute(1, 0, 0), 3.0, steps=10, samples=100),
        roll("c", minute(20, 5), 4.0, samples=500),
        roll("d", minute(21, 5), 99.0),  # EUR: listed, not summed with USD
    ]
    ledger.write(runs, devices, rollups, [])
    yield ledger
    ledger.close()


def test_totals_and_the_month_boundary_by_hand(ledger):
    report = build_report(ledger, "2026-11", ["project"], budget=100.0, now=NOV + 40 * 86400)
    t = report.totals
    assert report.currency == "USD" and report.other_currency_runs == 1
    assert t.cost == pytest.approx(10 + 1 + 5 + 3 + 4)  # b's October 7.0 is not here
    assert t.cost_gpu_time == pytest.approx(22.0) and t.cost_energy == pytest.approx(1.0)
    assert t.waste_cost == pytest.approx(2.0)
    assert t.runs == 4 and t.steps == 100 + 100 + 10 + 100 + 100
    assert t.samples == 1000 + 1000 + 100 + 500 + 1000
    assert t.kwh == pytest.approx(5 + 0.1)  # five GPU kWh and 0.36 MJ of CPU
    assert t.co2_kg == pytest.approx(2.5) and t.gpu_hours == pytest.approx(5.0)
    assert report.previous.cost == pytest.approx(7.0) and report.previous.runs == 1
    groups = dict(report.groups["project"])
    assert groups["vision"].cost == pytest.approx(20.0) and groups["nlp"].cost == pytest.approx(3)
    assert report.simulated_runs == 1 and report.forecast is None  # a past month
    october = build_report(ledger, "2026-10", now=NOV + 40 * 86400)
    assert october.totals.cost == pytest.approx(7.0) and october.totals.runs == 1


def test_formats_agree_and_escape_user_text(ledger):
    report = build_report(ledger, "2026-11", ["gpu_model"], budget=100.0, now=NOV + 10 * 86400)
    body = json.loads(render(report, "json"))
    assert body["totals"]["cost"] == pytest.approx(23.0)
    assert body["budget_used"] == pytest.approx(0.23)
    # a's November waste (2.0) split by its whole-run reasons, 3:1
    assert body["waste_by_reason"] == {"idle": pytest.approx(1.5), "nonfinite": pytest.approx(0.5)}
    assert body["forecast"] == pytest.approx(23.0 * 30 / 10)  # 10 days into a 30-day month
    assert {g["value"] for g in body["groups"]["gpu_model"]} == {"A100", "H100", "L4"}
    assert [d["day"] for d in body["daily"]] == ["2026-11-01", "2026-11-03", "2026-11-20"]
    assert body["daily"][1]["cost_by_project"] == {"vision": pytest.approx(16.0)}
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert sum(float(r["cost"]) for r in rows if r["currency"] == "USD") == pytest.approx(23.0)
    assert next(r for r in rows if r["id"] == "c")["name"] == HOSTILE  # CSV keeps it exactly
    assert next(r for r in rows if r["id"] == "c")["simulated"] == "true"
    md = render(report, "md")
    assert HOSTILE not in md and "&lt;script&gt;alert\\(1\\)&lt;\\/script&gt;" in md
    assert "SIMULATED" in md and "c*" in md and "23.00" in md


def test_bad_input_is_one_line(ledger):
    for call in (lambda: build_report(ledger, "2026-13"), lambda: build_report(ledger, "Nov"),
                 lambda: build_report(ledger, group_by=["colour"]),
                 lambda: build_report(ledger, budget=-5)):  # fmt: skip
        with pytest.raises(ReportError) as e:
            call()
        assert "\n" not in str(e.value)
    assert parse_month(None, dt.date(2026, 1, 15))[0] == "2025-12"


def test_cli_writes_the_report(ledger, tmp_path):
    env = profiler_env(tmp_path)
    out_file = tmp_path / "nov.json"
    out = run_cli(env, "report", "--month", "2026-11", "--format", "json", "--out", str(out_file))
    assert out.returncode == 0, out.stderr
    assert json.loads(out_file.read_text())["totals"]["cost"] == pytest.approx(23.0)
    bad = run_cli(env, "report", "--month", "2026-13")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "YYYY-MM" in bad.stderr


def test_html_is_self_contained_and_escapes_user_text(ledger):
    report = build_report(ledger, "2026-11", ["project"], budget=100.0, now=NOV + 40 * 86400)
    page = render(report, "html")
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()  # no scripts at all
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert "https://" not in page and "<svg" in page and "simulated GPU" in page
    assert "23.00 USD" in page  # the month's total, as in the other formats


def test_budgets_from_profiler_toml(ledger, tmp_path):
    (tmp_path / "profiler.toml").write_text(
        "[budget]\nmonthly = 50\n[budget.projects]\nvision = 40\nnlp = 2\n"
    )
    env = profiler_env(tmp_path)
    out = run_cli(env, "report", "--month", "2026-11", "--format", "json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["budget"] == 50 and body["budget_used"] == pytest.approx(23.0 / 50)
    lines = {b["project"]: b for b in body["project_budgets"]}
    assert lines["vision"]["cost"] == pytest.approx(20.0)
    assert lines["vision"]["used"] == pytest.approx(0.5)
    assert lines["nlp"]["used"] == pytest.approx(1.5)  # over budget
    md = run_cli(env, "report", "--month", "2026-11").stdout
    assert "## Project budgets" in md and "| nlp | 2.00 | 3.00 | 150.0% |" in md
    (tmp_path / "profiler.toml").write_text("[budget]\nmonthly = -1\n")
    bad = run_cli(env, "report", "--month", "2026-11")
    assert bad.returncode == 2 and "'monthly' must be a positive amount" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_focus_export_has_one_row_per_run_per_day_and_every_mandatory_column(ledger, tmp_path):
    from pathlib import Path

    spec = json.loads((Path(__file__).parents[1] / "data" / "focus_1_2_columns.json").read_text())
    columns = spec["columns"] if isinstance(spec, dict) else spec
    mandatory = {c["name"] for c in columns if c.get("feature_level") == "Mandatory"}
    assert len(mandatory) == 21
    env = profiler_env(tmp_path)
    out_file = tmp_path / "nov-focus.csv"
    out = run_cli(env, "report", "--month", "2026-11", "--format", "focus", "--out", str(out_file))
    assert out.returncode == 0, out.stderr
    with out_file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert mandatory <= set(rows[0])
    assert [(r["ResourceId"], r["ChargePeriodStart"]) for r in rows] == [
        ("b", "2026-11-01T00:00:00Z"),
        ("a", "2026-11-03T00:00:00Z"),
        ("c", "2026-11-20T00:00:00Z"),
        ("d", "2026-11-21T00:00:00Z"),
    ]
    usd = [r for r in rows if r["BillingCurrency"] == "USD"]
    assert sum(float(r["BilledCost"]) for r in usd) == pytest.approx(23.0)
    assert float(next(r for r in rows if r["ResourceId"] == "d")["BilledCost"]) == 99.0
    assert next(r for r in rows if r["ResourceId"] == "c")["ResourceName"] == HOSTILE
    assert all(r["BillingPeriodStart"] == "2026-11-01T00:00:00Z" for r in rows)
    assert all(r["ChargeCategory"] == "Usage" for r in rows)


def test_every_user_supplied_field_is_escaped_in_html_and_markdown(tmp_path):
    import html

    nasty = {
        "name": "<img src=x onerror=alert(1)>",
        "project": '"><script>alert("p")</script>',
        "user": "<b>eve</b> & co",
        "framework": "<svg onload=alert(2)>",
        "host": "node'<iframe>",
    }
    ledger = Ledger(tmp_path / "ledger.sqlite")
    row = {**run_row("x", nasty["name"], nasty["project"], nasty["framework"]),
           "user": nasty["user"], "host": nasty["host"]}  # fmt: skip
    ledger.write([row], [("x", "GPU-1", "<i>A100</i>", 1.0, 1.0)], [roll("x", minute(5), 2.0)], [])
    groups = ["project", "user", "framework", "host", "gpu_model"]
    report = build_report(ledger, "2026-11", groups, now=NOV + 40 * 86400)
    page = render(report, "html")
    assert "<script" not in page.lower() and "<iframe" not in page and "<img" not in page
    for value in [*nasty.values(), "<i>A100</i>"]:
        assert value not in page
        assert html.escape(value) in page or html.escape(value, quote=False) in page, value
    md = render(report, "md")
    for value in nasty.values():
        assert value not in md
