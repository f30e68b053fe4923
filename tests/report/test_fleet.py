"""A fleet: two daemons with their own host names and homes, a training against each, one real
Prometheus scraping both; the fleet report from Prometheus equals the sum of the two ledgers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import REPO, promql, run_cli, start_daemon, start_prometheus, wait_for

pytestmark = pytest.mark.slow
PRICED = '[cost]\npricing = "flat"\ngpu_hour_price = 3.6\ncarbon_g_per_kwh = 400\n'


def test_fleet_report_from_prometheus_equals_the_sum_of_the_ledgers(tmp_path):
    daemons = []
    for host in ("node-a", "node-b"):
        home = tmp_path / host
        home.mkdir()
        (home / "profiler.toml").write_text(PRICED)
        daemons.append(start_daemon(home, PROFILER_HOSTNAME=host))
    try:
        prom = start_prometheus(tmp_path, [d.metrics_url for d in daemons])
    except BaseException:
        for d in daemons:
            d.stop()
        raise
    base = prom.base
    try:
        trainings = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests" / "scripts" / "train_tiny.py"),
                    "--steps",
                    str(steps),
                    "--step-sleep",
                    "0.01",
                ],
                env=dict(d.env, PROFILER_RUN_ID=f"fleet-{i}"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for i, (d, steps) in enumerate(zip(daemons, (300, 500), strict=True))
        ]
        for t in trainings:
            assert t.wait(120) == 0, t.stderr.read().decode()
        ledgers, ledger_runs = [], {}
        for i, d in enumerate(daemons):
            wait_for(lambda d=d, i=i: any(r["id"] == f"fleet-{i}" and r["status"] != "running"
                                          for r in d.runs()), what="the run to end")  # fmt: skip
            month = time.strftime("%Y-%m", time.gmtime())
            out = run_cli(d.env, "report", "--month", month, "--format", "json")
            assert out.returncode == 0, out.stderr
            ledgers.append(json.loads(out.stdout)["totals"])
            ledger_runs.update({r["id"]: r for r in json.loads(out.stdout)["runs"]})
        time.sleep(3)  # a few scrapes of the final values
        assert promql(base, 'count(profiler_run_info{status="finished"})')[0]["value"][1] == "2"
        out = run_cli(daemons[0].env, "report", "--prometheus", base, "--month", month,
                      "--format", "json", "--group-by", "host")  # fmt: skip
        assert out.returncode == 0, out.stderr
        fleet = json.loads(out.stdout)
        totals = fleet["totals"]
        # The runs ended and stayed in /metrics, so their final values were scraped: the fleet
        # totals equal the ledgers' (the stated error, one scrape interval of a vanished run,
        # does not arise here).
        for key in ("cost", "cost_gpu_time", "kwh", "co2_kg", "gpu_hours"):
            expected = sum(ledger[key] for ledger in ledgers)
            assert totals[key] == pytest.approx(expected, rel=1e-6), key
        assert totals["runs"] == 2 and totals["steps"] == 800
        assert totals["samples"] == sum(ledger["samples"] for ledger in ledgers)
        hosts = {g["value"]: g for g in fleet["groups"]["host"]}
        assert set(hosts) == {"node-a", "node-b"}
        assert hosts["node-b"]["steps"] == 500
        # each run's split basis and idle share (issue 16): the ledger's, from Prometheus too
        for run in fleet["runs"]:
            mine = ledger_runs[run["id"]]
            assert run["attribution"] == mine["attribution"] is not None, run["id"]
            assert run["gpu_idle_share"] == pytest.approx(mine["gpu_idle_share"], rel=1e-6)
        assert fleet["gpu_hours_by_basis"] == pytest.approx(
            {k: sum(ledger_runs[r["id"]]["gpu_hours_by_basis"].get(k, 0.0) for r in fleet["runs"])
             for k in fleet["gpu_hours_by_basis"]}, rel=1e-6,
        )  # fmt: skip
        bad = run_cli(daemons[0].env, "report", "--prometheus", "http://127.0.0.1:9",
                      "--month", month)  # fmt: skip
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot query" in bad.stderr
    finally:
        prom.stop()
        for d in daemons:
            d.stop()
