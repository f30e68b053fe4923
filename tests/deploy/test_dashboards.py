"""Grafana dashboards, proved without Grafana: every query names only series the daemon exports,
and every panel's query returns data from a real Prometheus scraping a real daemon during a real
training run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from conftest import (
    REPO,
    exported_series_names,
    promql,
    start_daemon,
    start_prometheus,
    wait_for,
)

FOLDER = REPO / "profiler" / "dashboards"  # shipped in the package; dashboards/build.py writes it
DASHBOARDS = sorted(FOLDER.glob("*.json"))
NAME = re.compile(r"\bprofiler_[a-z_]+\b")
# Panels that are empty by design in this test's set-up, and why.
EMPTY_BY_DESIGN = {"Framework memory": "framework memory is reported only while CUDA is in use"}


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and variable."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for ann in dashboard["annotations"]["list"]:
        if "expr" in ann:  # Prometheus annotations (the Grafana ones come from the daemon)
            out.append((f"annotation {ann['name']!r}", ann["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']!r}", var["definition"]))
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_use_only_exported_series(path, tmp_path):
    dashboard = json.loads(path.read_text())
    exported = exported_series_names(tmp_path)
    unknown = {
        (where, name)
        for where, expr in queries(dashboard)
        for name in NAME.findall(expr)
        if name not in exported
    }
    assert not unknown, f"series the daemon does not export: {sorted(unknown)}"
    assert dashboard["uid"] and dashboard["panels"]


def test_dashboards_are_current_with_their_builder(tmp_path):
    before = {p.name: p.read_text() for p in DASHBOARDS}
    subprocess.run([sys.executable, str(REPO / "dashboards" / "build.py")], check=True)
    after = {p.name: p.read_text() for p in sorted(FOLDER.glob("*.json"))}
    assert after == before, "profiler/dashboards/*.json differ from dashboards/build.py: run it"


# ---- against a real Prometheus ------------------------------------------------------------------


def substitute(expr: str, run: str, host: str) -> str:
    """Grafana's variables as the test's values (plain: the test's ids need no escaping)."""
    return (expr.replace("$__rate_interval", "15s").replace("$__range", "5m")
            .replace("$run", run).replace("$hostname", host))  # fmt: skip


@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_real_prometheus(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiler.toml").write_text(
        '[cost]\npricing = "flat"\ngpu_hour_price = 3.6\ncarbon_g_per_kwh = 400\n'
    )
    d = start_daemon(home)
    try:
        prom = start_prometheus(tmp_path, [d.metrics_url])
    except BaseException:
        d.stop()
        raise
    base = prom.base
    train = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "scripts" / "train_tiny.py"), "--steps", "2500",
         "--step-sleep", "0.01"],
        env=dict(d.env, PROFILER_RUN_ID="dash-run"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: promql(base, 'profiler_run_steps_total{run="dash-run"} > 50'),
                 timeout=60, what="prometheus to scrape the run's steps")  # fmt: skip
        time.sleep(16)  # rate() windows of 15 s hold enough samples
        assert train.poll() is None, "the training ended before the live checks"
        host = promql(base, "profiler_run_info")[0]["metric"]["hostname"]
        empty, checked = [], 0
        later = []
        for path in DASHBOARDS:
            dashboard = json.loads(path.read_text())
            for where, expr in queries(dashboard):
                if any(f"panel {title!r}" in where for title in EMPTY_BY_DESIGN):
                    continue
                if "profiler_run_end_time_seconds" in expr:  # exists once the run ended
                    later.append((where, expr))
                    continue
                if expr.startswith("label_values("):
                    metric, label = re.match(r"label_values\((\w+), (\w+)\)", expr).groups()
                    expr = f"count by ({label}) ({metric})"
                checked += 1
                if not promql(base, substitute(expr, "dash-run", host)):
                    empty.append(f"{path.name}: {where}: {expr}")
        assert not empty, "queries with no data:\n" + "\n".join(empty)
        train.communicate(timeout=120)
        assert train.returncode == 0
        for where, expr in later:
            wait_for(lambda e=expr: promql(base, substitute(e, "dash-run", host)), timeout=30,
                     what=f"{where} to have data after the run ended")  # fmt: skip
        assert checked >= 25
    finally:
        if train.poll() is None:
            train.kill()
            train.wait(10)
        prom.stop()
        d.stop()
