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

from profiler.cli import read_runs
from profiler.compare import compare, render
from profiler.config import load_config
from profiler.ledger import Ledger, Rollup
from profiler.report import build_report
from profiler.report import render as render_report

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
    # ... STEPS SAMPLES GPU-kWh GPU-h COST CO2: GPU-h and cost unknown, never 0
    assert cells[-6:-1][:4] == ["-", "-", "n/a", "-"]
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
        assert "| p | 4.00 | 1.00 (1 run unknown) |" in md  # by project
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
