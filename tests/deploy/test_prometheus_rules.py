"""deploy/prometheus: the config and rule files pass promtool (check config, check rules, the
rules' unit tests), every alert is well formed and unit-tested both ways, and every metric the
rules or their tests read is one the daemon's exporter really emits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, exported_series_names

PROM = REPO / "deploy" / "prometheus"
RULE_FILES = [PROM / "alerts.yml", PROM / "recording.yml"]
TEST_FILES = sorted((PROM / "tests").glob("*_test.yml"))
# a metric name in PromQL: recording-rule names (with colons) are kept whole, then dropped
NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("PROFILER_REQUIRE_PROMTOOL"):
            pytest.fail("promtool not found: install Debian's prometheus package (make test does)")
        pytest.skip("promtool not installed (Debian's prometheus package provides it)")
    return path


def run_promtool(*args: str | Path) -> None:
    cmd = [promtool(), *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}{out.stderr}"


def test_promtool_check_config():
    run_promtool("check", "config", PROM / "prometheus.yml")


def test_promtool_check_rules():
    run_promtool("check", "rules", *RULE_FILES)


def test_promtool_test_rules():
    assert TEST_FILES, "no deploy/prometheus/tests/*_test.yml"
    run_promtool("test", "rules", *TEST_FILES)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rules(path: Path) -> list[dict]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def test_every_alert_has_for_severity_annotations_and_both_test_cases():
    alerts = rules(PROM / "alerts.yml")
    assert len(alerts) >= 7
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name}: no `for`"
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert name in firing, f"{name}: no unit test where it fires"
        assert name in quiet, f"{name}: no unit test where it stays quiet"


def test_recording_rule_names_follow_level_metric_operations_and_are_tested():
    names = [r["record"] for r in rules(PROM / "recording.yml")]
    for name in names:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", name), name
    tested = " ".join(
        check["expr"]
        for path in TEST_FILES
        for case in load(path)["tests"]
        for check in case.get("promql_expr_test", [])
    )
    assert sum(name in tested for name in names) >= 2


def used_metric_names() -> dict[str, set[str]]:
    """Raw metric names (no colon) that each rule expression or test input series reads."""
    used: dict[str, set[str]] = {}
    exprs = [(path.name, r["expr"]) for path in RULE_FILES for r in rules(path)]
    for path in TEST_FILES:
        for case in load(path)["tests"]:
            exprs += [(path.name, s["series"].split("{", 1)[0]) for s in case["input_series"]]
    for where, expr in exprs:
        # drop label matchers/values ("..."), label lists in by/on/group_left (...) and ranges
        text = re.sub(r'"[^"]*"', "", expr)
        text = re.sub(r"\{[^}]*\}", "", text)
        text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
        for name in NAME.findall(text):
            if name.startswith("profiler_") and ":" not in name:
                used.setdefault(name, set()).add(where)
    return used


def test_rules_read_only_metrics_the_exporter_emits(tmp_path):
    used = used_metric_names()
    for name in ("profiler_run_cost_total", "profiler_run_info", "profiler_sensor_errors_total"):
        assert name in used  # the extraction finds what the rules read
    exported = exported_series_names(tmp_path)
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, f"rules read metrics the exporter does not emit: {unknown}"
