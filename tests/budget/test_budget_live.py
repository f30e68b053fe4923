"""Budgets that act, end to end: a real daemon priced ``flat`` at 3600 per GPU-hour (one unit of
money per GPU-second on the simulated GPU, so a budget is reached in seconds), real torch
trainings with ``track(budget=...)``, the reply path over real sockets."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import pytest
from conftest import REPO, sample_value, start_daemon, wait_for

pytestmark = pytest.mark.slow
SCRIPT = REPO / "tests" / "scripts" / "train_budget.py"

PRICED = """
[cost]
pricing = "flat"
gpu_hour_price = 3600
energy_price_kwh = 0
"""


def train(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def ended(d, run_id: str) -> dict:
    def done():
        found = [r for r in d.runs() if r["id"] == run_id and r["status"] != "running"]
        return found[0] if found else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


def events(home, run_id: str) -> list[dict]:
    db = sqlite3.connect(home / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM budget_events WHERE run_id = ? ORDER BY at", (run_id,))
        return [dict(r) for r in rows]
    finally:
        db.close()


def test_track_budget_warns_then_stops_after_a_completed_step(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiler.toml").write_text(PRICED)
    d = start_daemon(home)
    try:
        env = dict(d.env, PROFILER_RUN_ID="b-stop")
        out = train(env, "--budget", "2.0", "--on-exceed", "stop")
        assert out.returncode == 0, out.stderr
        # the script caught BudgetExceeded from the step that completed, and "checkpointed"
        m = re.search(r"checkpoint step=(\d+) exc_step=(\d+) spent=(\S+) budget=(\S+)", out.stdout)
        assert m, out.stdout + out.stderr
        assert int(m[1]) == int(m[2]) > 0
        assert float(m[3]) >= 2.0 and float(m[4]) == 2.0
        lines = [x for x in out.stderr.splitlines() if x.startswith("profiler: run b-stop")]
        assert len(lines) == 2, out.stderr
        assert re.search(r"of its budget 2.0000 USD \(projected at the end: unknown\); "
                         r"warning: (8\d|9\d|100)% of the budget spent$", lines[0])  # fmt: skip
        assert "budget reached: the run stops after the next step" in lines[1]
        steps = int(re.search(r"loop_steps=(\d+)", out.stdout)[1])
        run = ended(d, "b-stop")
        assert run["status"] == "budget_exceeded"
        assert run["steps"] == steps  # nothing lost
        kept = events(home, "b-stop")
        assert [e["event"] for e in kept] == ["warn", "stop"]
        assert kept[0]["reason"] == "warn_at" and kept[0]["spent"] >= 0.8 * 2.0
        assert kept[1]["spent"] >= 2.0 and kept[1]["budget"] == 2.0
        assert kept[1]["source"] == "track" and kept[1]["currency"] == "USD"
        metrics = d.metrics()
        assert sample_value(metrics, "profiler_run_budget_events_total", run="b-stop",
                            event="stop") == 1  # fmt: skip
        assert sample_value(metrics, "profiler_run_budget_amount", run="b-stop") == 2.0
    finally:
        d.stop()


def test_on_exceed_warn_never_stops(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiler.toml").write_text(PRICED + "[budget]\nper_run = 0.5\n")
    d = start_daemon(home)
    try:
        env = dict(d.env, PROFILER_RUN_ID="b-warn")
        out = train(env, "--max-seconds", "3")
        assert out.returncode == 0, out.stderr
        assert "checkpoint" not in out.stdout
        lines = [x for x in out.stderr.splitlines() if x.startswith("profiler: run b-warn")]
        assert len(lines) == 1 and "% of the budget spent" in lines[0], out.stderr
        run = ended(d, "b-warn")
        assert run["status"] == "finished"
        kept = events(home, "b-warn")
        assert [(e["event"], e["source"]) for e in kept] == [("warn", "per_run")]
    finally:
        d.stop()


def test_a_budget_without_pricing_is_refused_in_one_line(tmp_path):
    d = start_daemon(tmp_path / "home")
    try:
        env = dict(d.env, PROFILER_RUN_ID="b-none")
        out = train(env, "--budget", "1.0", "--on-exceed", "stop", "--max-seconds", "1.5")
        assert out.returncode == 0, out.stderr
        lines = [x for x in out.stderr.splitlines() if "not enforced" in x]
        assert lines == [
            "profiler: budget 1 for run b-none is not enforced: no pricing is configured; set "
            "[cost] pricing in profiler.toml (see `profiler prices`) and restart the daemon"
        ], out.stderr
        assert ended(d, "b-none")["status"] == "finished"
    finally:
        d.stop()


def test_keras_fit_stops_at_the_budget_and_the_checkpoint_callback_runs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiler.toml").write_text(PRICED)
    d = start_daemon(home)
    try:
        env = dict(d.env, PROFILER_RUN_ID="b-keras", KERAS_BACKEND="torch")
        out = subprocess.run(
            [sys.executable, str(REPO / "tests" / "scripts" / "train_keras_budget.py"),
             "--budget", "2.0"], env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        checkpoint = int(re.search(r"checkpoint batches=(\d+)", out.stdout)[1])
        steps = int(re.search(r"steps=(\d+) budget_stopped=True", out.stdout)[1])
        assert checkpoint == steps > 0  # fit ended after the batch that completed
        run = ended(d, "b-keras")
        assert run["status"] == "budget_exceeded" and run["steps"] == steps
        assert [e["event"] for e in events(home, "b-keras")] == ["warn", "stop"]
    finally:
        d.stop()


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_lightning_and_hf_stop_at_the_budget_and_checkpoint(tmp_path, framework):
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiler.toml").write_text(PRICED)
    d = start_daemon(home)
    try:
        run_id = f"b-{framework}"
        env = dict(d.env, PROFILER_RUN_ID=run_id)
        out = subprocess.run(
            [sys.executable, str(REPO / "tests" / "scripts" / "train_frameworks_budget.py"),
             framework, "--budget", "2.0", "--output-dir", str(tmp_path / "out")],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith('{"')]
        summary = lines[-1]
        assert summary["budget_stopped"] is True
        assert summary["steps"] == summary["global_step"] > 0
        if framework == "lightning":
            assert lines[0] == {"checkpoint_step": summary["global_step"]}
        else:  # save_strategy "steps": the stop saved a checkpoint at the last step
            assert (tmp_path / "out" / f"checkpoint-{summary['global_step']}").is_dir()
        run = ended(d, run_id)
        assert run["status"] == "budget_exceeded" and run["steps"] == summary["steps"]
    finally:
        d.stop()
