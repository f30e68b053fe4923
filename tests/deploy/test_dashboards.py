"""Grafana dashboards, proved without Grafana: every query names only series the daemon exports,
and every panel's query returns data from a real Prometheus scraping a real daemon during a real
training run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import (
    DECLARED_STEPS,
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
EMPTY_BY_DESIGN = {
    "Framework memory": "framework memory is reported only while CUDA is in use",
    "MIG instances": "the test's simulated GPU is not in MIG mode",
}
MIG_SPEC = "simulated:A100-SXM4-80GB:1:mig=3g.40gb,2g.20gb"


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
    exported = exported_series_names(tmp_path) | mig_series_names(tmp_path / "mig")
    unknown = {
        (where, name)
        for where, expr in queries(dashboard)
        for name in NAME.findall(expr)
        if name not in exported
    }
    assert not unknown, f"series the daemon does not export: {sorted(unknown)}"
    assert dashboard["uid"] and dashboard["panels"]


def mig_series_names(home) -> set[str]:
    """The series only a daemon with a GPU in MIG mode exports (its MIG instances), from the
    exposition of an in-process daemon on a simulated A100-80GB in MIG mode."""
    from profiler.config import Config
    from profiler.daemon.core import Daemon
    from profiler.daemon.exporter import render_metrics
    from profiler.sensors.nvml import NvmlSensor
    from profiler.sensors.simulated import SimulatedNVML

    home.mkdir()
    sim = SimulatedNVML("A100-SXM4-80GB", 1, traces=[[(100.0, 250.0)]], mig=("3g.40gb",))
    d = Daemon(Config(home=home), gpu_sensor=NvmlSensor(sim))
    d.sample()  # the daemon knows the device and its instances
    text = render_metrics(d).decode()
    names = {ln.split(" ")[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    assert "profiler_gpu_mig_instance_info" in names
    return names


def test_every_dashboard_query_parses(tmp_path):
    """promtool parses every query (Grafana's variables substituted), as recording rules: the
    awaited series' panels included, which the live test below cannot run yet."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian's prometheus package provides it)")
    rules = []
    for path in DASHBOARDS:
        for i, (_where, expr) in enumerate(queries(json.loads(path.read_text()))):
            if expr.startswith("label_values("):
                metric, label = re.match(r"label_values\((\w+), (\w+)\)", expr).groups()
                expr = f"count by ({label}) ({metric})"
            rules.append({"record": f"dashboard:q{len(rules)}:{i}",
                          "expr": substitute(expr, "dash-run", "node1")})  # fmt: skip
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(rules)} rules found" in out.stdout


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


GPUS = {"nvidia": ("simulated:A100-SXM4-40GB:1", "NVIDIA A100-SXM4-40GB"),
        "amd": ("simulated-amd:MI300X:1", "AMD Instinct MI300X")}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("vendor", sorted(GPUS))
def test_every_panel_query_returns_data_from_a_real_prometheus(tmp_path, vendor):
    """On the simulated NVIDIA GPU and on the simulated AMD GPU (issue 17): the same queries,
    no change, and the fleet's GPU-hours by model names the AMD model."""
    gpu, model = GPUS[vendor]
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiler.toml").write_text(
        '[cost]\npricing = "flat"\ngpu_hour_price = 3.6\ncarbon_g_per_kwh = 400\n'
        # a budget the run warns against within a second and never stops at: the budget panels
        "[budget]\nper_run = 1.0\nwarn_at = 0.001\n"
    )
    d = start_daemon(home, PROFILER_GPU=gpu)
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
        [info] = promql(base, "profiler_gpu_info")
        assert (info["metric"]["vendor"], info["metric"]["model_name"]) == (vendor, model)
        fleet = json.loads((FOLDER / "fleet-month.json").read_text())
        [by_model] = [expr for where, expr in queries(fleet) if "'GPU-hours by GPU model'" in where]
        rows = promql(base, substitute(by_model, "dash-run", host))
        assert [r["metric"]["model_name"] for r in rows] == [model]
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


@pytest.mark.slow
def test_the_mig_and_split_panels_return_data_for_a_run_on_a_mig_instance(tmp_path):
    """Issue 16: a real daemon on a simulated GPU in MIG mode, a real run on its 3g.40gb
    instance, a real Prometheus: the MIG instances panel lists both instances and the run's
    energy on its instance; the split panels give the run's basis and idle share."""
    home = tmp_path / "home"
    d = start_daemon(home, PROFILER_GPU=MIG_SPEC)
    try:
        prom = start_prometheus(tmp_path, [d.metrics_url])
    except BaseException:
        d.stop()
        raise
    base = prom.base
    page = d.metrics()
    mig_uuid = next(ln for ln in page.splitlines()
                    if ln.startswith("profiler_gpu_mig_instance_info")
                    and 'mig_profile="3g.40gb"' in ln).split('uuid="')[1].split('"')[0]  # fmt: skip
    env = {**d.env, "PROFILER_AUTOSTART": "0", "PYTHONPATH": str(REPO)}
    run = subprocess.Popen(
        [sys.executable, str(DECLARED_STEPS), "60", mig_uuid, "mig-run", "on-mig"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: promql(base, 'profiler_run_energy_joules_total{run="mig-run"} > 0'),
                 timeout=60, what="prometheus to scrape the run's energy")  # fmt: skip
        assert run.poll() is None, "the run ended before the checks"
        host = promql(base, "profiler_run_info")[0]["metric"]["hostname"]
        panels = {p["title"]: p for p in json.loads((FOLDER / "training-run.json").read_text())
                  ["panels"]}  # fmt: skip
        instances, energy = (
            promql(base, substitute(t["expr"], "mig-run", host))
            for t in panels["MIG instances"]["targets"]
        )
        assert sorted(r["metric"]["mig_profile"] for r in instances) == ["2g.20gb", "3g.40gb"]
        assert {r["metric"]["slices"] for r in instances} == {"3", "2"}
        [on_instance] = energy
        assert on_instance["metric"]["mig_profile"] == "3g.40gb"
        assert float(on_instance["value"][1]) > 0
        [basis] = promql(base, substitute(panels["GPU energy split"]["targets"][0]["expr"],
                                          "mig-run", host))  # fmt: skip
        assert basis["metric"]["attribution"] in ("activity", "equal")
        [share] = promql(base, substitute(panels["Idle share of GPU energy"]["targets"][0]["expr"],
                                          "mig-run", host))  # fmt: skip
        assert 0 < float(share["value"][1]) <= 1
    finally:
        run.kill()
        run.wait(10)
        prom.stop()
        d.stop()
