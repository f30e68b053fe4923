"""Cost live: a real daemon priced by profiler.toml, a real training; /metrics, `profiler runs
--json` and the ledger agree on what the run cost."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from conftest import REPO, run_cli, sample_value, start_configured_daemon, wait_for

pytestmark = pytest.mark.slow

PROFILER_TOML = """
[cost]
pricing = "flat"
gpu_hour_price = 3.6
energy_price_kwh = 0.25
pue = 1.2
carbon_g_per_kwh = 400
"""


def test_cost_agrees_in_metrics_runs_and_ledger(tmp_path):
    home = tmp_path / "home"
    d = start_configured_daemon(home, PROFILER_TOML)
    try:
        env = dict(d.env, PROFILER_RUN_ID="it-cost")
        out = subprocess.run(
            [sys.executable, str(REPO / "tests" / "scripts" / "train_tiny.py"), "--steps", "120"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr

        def ended():
            runs = [r for r in d.runs() if r["id"] == "it-cost" and r["status"] != "running"]
            return runs[0] if runs else None

        run = wait_for(ended, timeout=30, what="the run to end")
        metrics = d.metrics()
        assert sample_value(metrics, "profiler_pricing_info", currency="USD", kind="flat") == 1
        gpu_time = sample_value(metrics, "profiler_run_cost_total", run="it-cost",
                                component="gpu_time")  # fmt: skip
        energy = sample_value(metrics, "profiler_run_cost_total", run="it-cost", component="energy")
        co2 = sample_value(metrics, "profiler_run_emissions_grams_total", run="it-cost")
        # hand computation from the run's own GPU-seconds and energy
        kwh = (run["gpu_energy_j"] + run["cpu_energy_j"]) / 3.6e6
        assert run["cost_gpu_time"] == pytest.approx(run["gpu_seconds"] / 3600 * 3.6, rel=1e-9)
        assert run["cost_energy"] == pytest.approx(kwh * 1.2 * 0.25, rel=1e-6)
        assert run["co2_g"] == pytest.approx(kwh * 1.2 * 400, rel=1e-6)
        assert run["currency"] == "USD" and run["cost"] > 0
        # the three views agree
        assert gpu_time == pytest.approx(run["cost_gpu_time"], rel=1e-9)
        assert energy == pytest.approx(run["cost_energy"], rel=1e-9)
        assert co2 == pytest.approx(run["co2_g"], rel=1e-9)
        db = sqlite3.connect(home / "ledger.sqlite")
        row = db.execute(
            "SELECT cost_gpu_time, cost_energy, co2_g, currency FROM runs WHERE id = 'it-cost'"
        ).fetchone()
        assert row[0] == pytest.approx(gpu_time, rel=1e-9) and row[3] == "USD"
        assert row[1] == pytest.approx(energy, rel=1e-9) and row[2] == pytest.approx(co2, rel=1e-9)
        minutes = db.execute(
            "SELECT sum(cost_gpu_time) FROM rollups WHERE run_id = 'it-cost'"
        ).fetchone()[0]
        assert minutes == pytest.approx(gpu_time, rel=1e-6)
        prices = run_cli(d.env, "prices")
        assert prices.returncode == 0 and "flat" in prices.stdout, prices.stderr
        table = json.loads(run_cli(d.env, "runs", "--json").stdout)
        assert table[0]["cost"] == pytest.approx(gpu_time + energy, rel=1e-9)
    finally:
        d.stop()


def test_a_bad_price_stops_the_daemon_with_one_line(tmp_path):
    home = tmp_path / "bad"
    home.mkdir()
    (home / "profiler.toml").write_text('[cost]\npricing = "flat"\ngpu_hour_price = -1\n')
    from conftest import profiler_env

    out = run_cli(profiler_env(home), "daemon", timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "gpu_hour_price" in out.stderr, out.stderr
