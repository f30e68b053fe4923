"""Unknown is null, never zero, round two: with no GPU sensor, GPU time (and the money and waste
priced from it) is unknown in the summary, `profiler runs` (JSON and table), /metrics and the
monthly report; a run with no known grid intensity has null CO2 and the report counts it instead
of adding 0; a run that never reported a loss has no NaN-step count; `profiler compare` shows
unknown steps and samples as "-"/null with no derived figures. Real daemon, real processes; the
report and compare tests read a real ledger seeded by hand."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
from conftest import run_cli, sample_value, start_daemon, wait_for

from profiler.cli.run_records import read_runs
from profiler.config import load_config
from profiler.ledger.store import Ledger, Rollup
from profiler.report.compare import compare, render
from profiler.report.monthly import build_report
from profiler.report.render import render as render_report

UTC = dt.timezone.utc
NOV = dt.datetime(2026, 11, 1, tzinfo=UTC).timestamp()
AT = int(NOV + 3 * 86400)
# a second and a half of CPU work: the estimated CPU energy gets priced and rolled up
BUSY = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\nprint('done')"


@pytest.fixture(scope="module")
def no_gpu(tmp_path_factory: pytest.TempPathFactory):
    """A daemon with no GPU sensor, priced, and one finished run of a process no hook times."""
    home = tmp_path_factory.mktemp("no-gpu") / "home"
    d = start_daemon(home, PROFILER_GPU="none", PROFILER_PRICING="aws:p4d.24xlarge")
    out = subprocess.run(
        [sys.executable, "-m", "profiler", "run", "--run-id", "nogpu", "--",
         sys.executable, "-c", BUSY],
        env=d.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr

    def ended():
        runs = [r for r in d.runs() if r["id"] == "nogpu"]
        return runs[0] if runs and runs[0]["status"] != "running" else None

    run = wait_for(ended, timeout=30, what="run nogpu")
    yield d, out, run
    if d.proc.poll() is None:
        d.stop()


def test_no_gpu_sensor_gpu_time_is_unknown_in_json_and_summary(no_gpu):
    _d, out, run = no_gpu
    assert run["gpu_source"] == "none"
    for key in ("gpu_seconds", "gpu_energy_j", "gpu_energy_kwh", "gpu_power_mean_w",
                "gpu_power_peak_w", "cost_gpu_time", "cost", "waste_cost", "waste",
                "waste_gpu_seconds"):  # fmt: skip
        assert run[key] is None, key
    assert "GPU time       unknown (no GPU sensor)" in out.stderr
    assert "GPU-hours" not in out.stderr and "0.00000" not in out.stderr
    assert "GPU power      mean n/a    peak n/a" in out.stderr


def test_no_gpu_sensor_runs_table_shows_dash(no_gpu):
    d, _out, _run = no_gpu
    table = run_cli(d.env, "runs")
    assert table.returncode == 0, table.stderr
    cells = next(ln for ln in table.stdout.splitlines() if ln.startswith("nogpu")).split()
    # ... STEPS SAMPLES GPU-kWh GPU-h COST CO2 BUDGET: GPU-h and cost unknown, never 0
    assert cells[-7:-2][:4] == ["-", "-", "n/a", "-"]
    assert cells[-1] == "-"  # no budget
    assert "0.0000" not in " ".join(cells)


def test_no_gpu_sensor_metrics_leave_gpu_figures_out(no_gpu):
    d, _out, _run = no_gpu
    text = d.metrics()
    assert 'run="nogpu"' in text
    assert sample_value(text, "profiler_run_gpu_seconds_total", run="nogpu") is None
    assert sample_value(text, "profiler_run_cost_total", run="nogpu", component="gpu_time") is None
    for name in ("profiler_run_waste_gpu_seconds_total", "profiler_run_waste_cost_total",
                 "profiler_run_waste_energy_joules_total"):  # fmt: skip
        assert sample_value(text, name, run="nogpu") is None, name


def test_no_loss_reported_has_no_nonfinite_count(no_gpu):
    d, _out, run = no_gpu
    assert run["last_loss"] is None and run["nonfinite_loss_steps"] is None
    text = d.metrics()
    assert sample_value(text, "profiler_run_nonfinite_loss_steps_total", run="nogpu") is None
    # no hook timed steps: no step-duration histogram of 0 steps either
    assert sample_value(text, "profiler_step_duration_seconds_count", run="nogpu") is None


# ---- a seeded ledger: CO2 with unknown grid intensity, compare with unknown counts -------------


def _run(rid: str, meta: dict, **extra) -> dict:
    row = {"id": rid, "name": rid, "project": "p", "user": "ann", "framework": "pytorch",
           "host": "node1", "status": "finished", "started_at": AT - 60, "ended_at": AT + 60,
           "simulated": False, "currency": "USD", "meta": meta, "steps": 100, "samples": 1000,
           "gpu_energy_j": 3.6e6, "gpu_seconds": 3600.0, "gpu_source": "nvml",
           "cost_gpu_time": 4.0, "cost_energy": 0.0, "co2_g": 0.0,
           "step_time_sum_s": 10.0}  # fmt: skip
    return {**row, **extra}


def _roll(rid: str, co2_g: float, steps: int = 100, samples: int = 1000) -> Rollup:
    return Rollup(rid, AT, gpu_energy_j=3.6e6, gpu_seconds=3600.0, steps=steps, samples=samples,
                  cost_gpu_time=4.0, co2_g=co2_g)  # fmt: skip


@pytest.fixture
def seeded(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    runs = [
        _run("known", {"cost": {"co2_known": True}}, co2_g=500.0),
        _run("no-grid", {"cost": {"co2_known": False}}),  # no grid intensity: unknown
        _run("untimed", {"cost": {"co2_known": True}}, steps=None, samples=None, co2_g=250.0),
    ]
    rollups = [_roll("known", 500.0), _roll("no-grid", 0.0), _roll("untimed", 250.0, 0, 0)]
    ledger.write(runs, [], rollups, [])
    yield ledger
    ledger.close()


def test_report_counts_runs_with_unknown_co2_instead_of_adding_zero(seeded):
    report = build_report(seeded, "2026-11", ["project"], now=NOV + 40 * 86400)
    t = report.totals
    assert t.co2_kg == pytest.approx(0.75) and t.co2_unknown_runs == 1
    by_id = {r.id: r.totals for r in report.runs}
    assert by_id["no-grid"].co2_kg is None and by_id["known"].co2_kg == pytest.approx(0.5)
    body = json.loads(render_report(report, "json"))
    assert {r["id"]: r["co2_kg"] for r in body["runs"]}["no-grid"] is None
    assert body["totals"]["co2_unknown_runs"] == 1
    md = render_report(report, "md")
    row = next(ln for ln in md.splitlines() if ln.startswith("| emissions (kg CO2e) |"))
    assert "0.750 (1 run unknown)" in row
    csv_row = next(ln for ln in render_report(report, "csv").splitlines() if ",no-grid," in ln)
    assert ",0,1,,1,100,1000," in csv_row  # waste, kwh, co2_kg empty, gpu_hours, steps, ...
    html = render_report(report, "html")
    assert "0.75 (1 run unknown)" in html


def test_report_co2_unknown_for_every_run_is_unknown(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.write([_run("no-grid", {})], [], [_roll("no-grid", 0.0)], [])
        report = build_report(ledger, "2026-11", now=NOV + 40 * 86400)
        assert report.totals.co2_kg is None and report.totals.co2_unknown_runs == 1
        md = render_report(report, "md")
        row = next(ln for ln in md.splitlines() if ln.startswith("| emissions (kg CO2e) |"))
        assert row.split("|")[2].strip() == "unknown"  # (the previous month had no runs: 0)
    finally:
        ledger.close()


def test_report_with_no_gpu_sensor_counts_gpu_hours_unknown(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        known = _run("gpu", {"cost": {"co2_known": True}})
        blind = _run("no-gpu", {"cost": {"co2_known": True}}, gpu_source="none", gpu_seconds=0.0)
        rollups = [_roll("gpu", 1.0), Rollup("no-gpu", AT, cpu_energy_j=3.6e5, co2_g=1.0)]
        ledger.write([known, blind], [], rollups, [])
        report = build_report(ledger, "2026-11", ["project"], now=NOV + 40 * 86400)
        assert report.totals.gpu_hours == pytest.approx(1.0)
        assert report.totals.gpu_hours_unknown_runs == 1
        assert {r.id: r.totals.gpu_hours for r in report.runs}["no-gpu"] is None
        md = render_report(report, "md")
        row = next(ln for ln in md.splitlines() if ln.startswith("| GPU-hours |"))
        assert "1.000 (1 run unknown)" in row
        assert "| p | 4.00 (1 run unknown) | 1.00 (1 run unknown) |" in md  # by project: cost too
        body = json.loads(render_report(report, "json"))
        assert {r["id"]: r["gpu_hours"] for r in body["runs"]}["no-gpu"] is None
        assert "1.0 (1 run unknown)" in render_report(report, "html")
        only = build_report(ledger, "2026-11", now=NOV + 40 * 86400)
        assert only.totals.gpu_hours is not None  # one run of two is unknown: a partial sum
    finally:
        ledger.close()


def test_compare_shows_unknown_steps_and_samples_as_dash_and_null(seeded, tmp_path):
    config = load_config(env={"PROFILER_HOME": str(tmp_path)})
    assert config.ledger == tmp_path / "ledger.sqlite"
    rows = compare(read_runs(config), ["known", "untimed"])
    untimed = rows[1]
    assert untimed["steps"] is None and untimed["samples"] is None
    for key in ("samples_per_s", "joules_per_sample", "cost_per_1k_samples"):
        assert untimed[key] is None, key
        assert key not in untimed["ratios"]
    assert rows[0]["samples_per_s"] == pytest.approx(1000 / 120)
    body = json.loads(render(rows, "json"))
    assert body[1]["steps"] is None and body[1]["cost_per_1k_samples"] is None
    for fmt in ("table", "md"):
        text = render(rows, fmt)
        line = next(ln for ln in text.splitlines() if ln.lstrip("| ").startswith("samples "))
        assert line.rstrip(" |").endswith("-"), (fmt, line)
        assert "x0.00" not in text


# ---- round three: money, energy, FOCUS and the fleet report with no GPU sensor -----------------


def _blind_ledger(tmp_path, with_gpu: bool = True) -> Ledger:
    """A priced run a GPU sensor measured (4 USD, 1 GPU-hour, 1 kWh) and, with no GPU sensor,
    a priced run with 0.1 kWh of CPU energy costing 0.01 USD of energy."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    blind = _run("no-gpu", {"cost": {"co2_known": True}}, gpu_source="none", gpu_seconds=0.0,
                 gpu_energy_j=None, cost_gpu_time=0.0, cost_energy=0.01)  # fmt: skip
    runs = [blind, *([_run("gpu", {"cost": {"co2_known": True}})] if with_gpu else [])]
    rollups = [Rollup("no-gpu", AT, cpu_energy_j=3.6e5, cost_energy=0.01, co2_g=1.0)]
    if with_gpu:
        rollups.append(_roll("gpu", 1.0))
    ledger.write(runs, [], rollups, [])
    return ledger


def test_report_energy_says_how_many_runs_gpu_energy_is_unknown(tmp_path):
    ledger = _blind_ledger(tmp_path)
    try:
        report = build_report(ledger, "2026-11", ["project"], now=NOV + 40 * 86400)
        t = report.totals
        assert t.kwh == pytest.approx(1.1) and t.gpu_energy_unknown_runs == 1
        assert t.joules_per_sample is None  # a ratio over part of the energy would be wrong
        md = render_report(report, "md")
        row = next(ln for ln in md.splitlines() if ln.startswith("| energy (kWh) |"))
        assert "1.100 (GPU energy unknown for 1 run)" in row
        assert "| p | USD" not in md and "1.100 (GPU energy unknown for 1 run) |" in md
        body = json.loads(render_report(report, "json"))
        assert body["totals"]["gpu_energy_unknown_runs"] == 1
        by_id = {r["id"]: r for r in body["runs"]}
        assert by_id["no-gpu"]["gpu_energy_unknown_runs"] == 1
        assert by_id["gpu"]["gpu_energy_unknown_runs"] == 0
        assert "1.1 (GPU energy unknown for 1 run)" in render_report(report, "html")
    finally:
        ledger.close()


def test_report_money_counts_runs_with_unknown_cost_instead_of_adding_zero(tmp_path):
    ledger = _blind_ledger(tmp_path)
    try:
        report = build_report(ledger, "2026-11", ["project"], budget=100.0, now=NOV + 40 * 86400)
        t = report.totals
        # the run with no GPU sensor: its cost is unknown (null in `profiler runs --json`)
        assert t.cost == pytest.approx(4.0) and t.cost_gpu_time == pytest.approx(4.0)
        assert t.cost_unknown_runs == 1 and t.cost_per_1k_samples is None
        assert t.cost_energy == pytest.approx(0.01)  # the CPU energy it used is priced
        blind = {r.id: r.totals for r in report.runs}["no-gpu"]
        assert blind.cost is None and blind.cost_gpu_time is None and blind.waste_cost is None
        body = json.loads(render_report(report, "json"))
        assert body["totals"]["cost_unknown_runs"] == 1
        assert {r["id"]: r["cost"] for r in body["runs"]}["no-gpu"] is None
        md = render_report(report, "md")
        row = next(ln for ln in md.splitlines() if ln.startswith("| cost |"))
        assert "USD 4.00 (1 run unknown)" in row
        assert "The cost of 1 run is unknown" in md
        assert "| p | 4.00 (1 run unknown) |" in md  # by project
        top = next(ln for ln in md.splitlines() if ln.startswith("| no\\-gpu | no\\-gpu |"))
        assert [c.strip() for c in top.split("|")[4:7]] == ["unknown"] * 3  # cost, GPU-h, waste
        csv_row = next(ln for ln in render_report(report, "csv").splitlines() if ",no-gpu," in ln)
        assert ",USD,,,0.01,," in csv_row  # cost, GPU-time cost and waste empty, not 0
        html = render_report(report, "html")
        assert "4.00 (1 run unknown)" in html and "The cost of 1 run is unknown" in html
        alone = _blind_ledger(tmp_path / "alone", with_gpu=False) if (
            (tmp_path / "alone").mkdir() or True) else None  # fmt: skip
        try:
            only = build_report(alone, "2026-11", budget=100.0, now=NOV + 40 * 86400)
            assert only.totals.cost is None and only.totals.cost_unknown_runs == 1
            md = render_report(only, "md")
            row = next(ln for ln in md.splitlines() if ln.startswith("| cost |"))
            assert row.split("|")[2].strip() == "unknown"
            assert "Budget 100.00 USD: unknown used." in md
            assert json.loads(render_report(only, "json"))["budget_used"] is None
            render_report(only, "html")  # renders, no TypeError on the unknown cost
        finally:
            alone.close()
    finally:
        ledger.close()


def test_focus_gpu_hours_are_null_with_no_gpu_sensor(tmp_path):
    import csv
    import io

    from profiler.report.monthly import to_focus

    ledger = _blind_ledger(tmp_path)
    try:
        rows = {r["ResourceId"]: r for r in csv.DictReader(
            io.StringIO(to_focus(ledger, "2026-11", now=NOV + 40 * 86400)))}  # fmt: skip
        assert rows["no-gpu"]["ConsumedQuantity"] == "" and rows["no-gpu"]["x_GpuHours"] == ""
        # FOCUS forbids a null PricingQuantity on a Usage row: no GPU-hours were priced
        assert rows["no-gpu"]["PricingQuantity"] == "0"
        assert rows["no-gpu"]["BilledCost"] == "0.01"
        assert rows["gpu"]["ConsumedQuantity"] == "1.0" == rows["gpu"]["x_GpuHours"]
    finally:
        ledger.close()


def test_fleet_report_counts_a_run_with_no_gpu_time_cost_series_as_unknown():
    """A real HTTP server on loopback answering the fleet report's PromQL as a Prometheus
    scraping a node with a GPU sensor and one without (no gpu_time cost, no GPU seconds)."""
    import http.server
    import threading
    import urllib.parse

    from profiler.report.fleet import SERIES, build_fleet_report

    end = dt.datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    values = {  # selector -> run -> counter value at the month's end (0 at its start)
        SERIES["cost_gpu_time"][0]: {"gpu": 4.0},
        SERIES["cost_energy"][0]: {"gpu": 0.0, "nogpu": 0.01},
        SERIES["waste_cost"][0]: {"gpu": 0.5},
        SERIES["gpu_j"][0]: {"gpu": 3.6e6},
        SERIES["cpu_j"][0]: {"gpu": 0.0, "nogpu": 3.6e5},
        SERIES["gpu_hours"][0]: {"gpu": 3600.0},
        SERIES["co2_kg"][0]: {"gpu": 500.0, "nogpu": 1.0},
        SERIES["steps"][0]: {"gpu": 100, "nogpu": 10},
        SERIES["samples"][0]: {"gpu": 1000, "nogpu": 100},
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            expr = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
            result = []
            if "profiler_run_info" in expr:
                result = [{"metric": {"instance": "n", "run": r, "currency": "USD",
                                      "project": "p"}, "value": [end, "1"]}
                          for r in ("gpu", "nogpu")]  # fmt: skip
            elif f"@ {end:.3f}" in expr:
                # a series not listed here (the idle energy, the split basis) has no samples
                sel = next((s for s in values if f"max_over_time({s}[" in expr), None)
                result = [{"metric": {"instance": "n", "run": r}, "value": [end, str(v)]}
                          for r, v in values.get(sel, {}).items()]  # fmt: skip
            body = json.dumps({"status": "success", "data": {"result": result}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        report = build_fleet_report(base, "2026-11", now=NOV + 40 * 86400)
    finally:
        server.shutdown()
        server.server_close()
    t = report.totals
    assert t.runs == 2 and t.cost == pytest.approx(4.0) and t.cost_unknown_runs == 1
    assert t.waste_cost == pytest.approx(0.5) and t.gpu_energy_unknown_runs == 1
    blind = {r.id: r.totals for r in report.runs}["nogpu"]
    assert blind.cost is None and blind.cost_gpu_time is None and blind.waste_cost is None
    assert blind.cost_energy == pytest.approx(0.01)
    assert "USD 4.00 (1 run unknown)" in render_report(report, "md")
