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
from conftest import REPO, ended_run, sample_value, start_configured_daemon, start_daemon, wait_for

from hooks.pytorch import FLUSH_INTERVAL_S

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
    d = start_configured_daemon(home, PRICED)
    try:
        env = dict(d.env, PROFILER_RUN_ID="b-stop")
        starts_file = tmp_path / "starts.json"
        out = train(env, "--budget", "2.0", "--on-exceed", "stop", "--starts", str(starts_file))
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
        run = ended_run(d, "b-stop")
        assert run["status"] == "budget_exceeded"
        assert run["steps"] == steps  # nothing lost
        kept = events(home, "b-stop")
        assert [e["event"] for e in kept] == ["warn", "stop"]
        assert kept[0]["reason"] == "warn_at" and kept[0]["spent"] >= 0.8 * 2.0
        assert kept[1]["spent"] >= 2.0 and kept[1]["budget"] == 2.0
        assert kept[1]["source"] == "track" and kept[1]["currency"] == "USD"
        # Done when: stopped within one step (plus one 0.1 s flush interval) of the daemon's
        # decision, from recorded facts: the decision's time in the ledger against the times the
        # steps began (the same clock). The step running when the stop arrives is the last: no
        # step began later than one flush interval after the decision.
        kept_starts = json.loads(starts_file.read_text())
        starts = kept_starts["starts"]
        assert len(starts) == kept_starts["completed"] == steps
        decided = kept[1]["at"]
        assert starts[0] < kept[0]["at"] < decided
        after = [s - decided for s in starts if s > decided + FLUSH_INTERVAL_S]
        assert after == [], f"steps began {after} s after the decision"
        # every step the training ran is in the ledger, in the run's row and its minute rollups
        db = sqlite3.connect(home / "ledger.sqlite")
        try:
            (rolled,) = db.execute("SELECT sum(steps) FROM rollups WHERE run_id = 'b-stop'"
                                   ).fetchone()  # fmt: skip
        finally:
            db.close()
        assert rolled == steps
        metrics = d.metrics()
        assert sample_value(metrics, "profiler_run_budget_events_total", run="b-stop",
                            event="stop") == 1  # fmt: skip
        assert sample_value(metrics, "profiler_run_budget_amount", run="b-stop") == 2.0
    finally:
        d.stop()


def test_on_exceed_warn_never_stops(tmp_path):
    home = tmp_path / "home"
    d = start_configured_daemon(home, PRICED + "[budget]\nper_run = 0.5\n")
    try:
        env = dict(d.env, PROFILER_RUN_ID="b-warn")
        out = train(env, "--max-seconds", "3")
        assert out.returncode == 0, out.stderr
        assert "checkpoint" not in out.stdout
        lines = [x for x in out.stderr.splitlines() if x.startswith("profiler: run b-warn")]
        assert len(lines) == 1 and "% of the budget spent" in lines[0], out.stderr
        run = ended_run(d, "b-warn")
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
        assert ended_run(d, "b-none")["status"] == "finished"
    finally:
        d.stop()


def test_keras_fit_stops_at_the_budget_and_the_checkpoint_callback_runs(tmp_path):
    home = tmp_path / "home"
    d = start_configured_daemon(home, PRICED)
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
        run = ended_run(d, "b-keras")
        assert run["status"] == "budget_exceeded" and run["steps"] == steps
        assert [e["event"] for e in events(home, "b-keras")] == ["warn", "stop"]
    finally:
        d.stop()


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_lightning_and_hf_stop_at_the_budget_and_checkpoint(tmp_path, framework):
    home = tmp_path / "home"
    d = start_configured_daemon(home, PRICED)
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
        run = ended_run(d, run_id)
        assert run["status"] == "budget_exceeded" and run["steps"] == summary["steps"]
    finally:
        d.stop()


def test_a_restarted_daemon_warns_once_and_stops_once(tmp_path):
    """The daemon warns, is SIGTERMed and started again while the training goes on: the new
    daemon reads what was decided from the ledger, gives no second warning, and stops the run
    once (1 unit of money per GPU-second: warned at 3, stopped at 6)."""
    home = tmp_path / "home"
    d = start_configured_daemon(home, PRICED + "[budget]\nwarn_at = 0.5\n")
    env = dict(d.env, PROFILER_RUN_ID="b-restart")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--budget", "6.0", "--on-exceed", "stop"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: events(home, "b-restart"), timeout=60, what="the warning")
        assert d.stop() == 0
        assert [e["event"] for e in events(home, "b-restart")] == ["warn"]
        d = start_daemon(home)
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert re.search(r"checkpoint step=(\d+) exc_step=\1 ", out), out + err
        warnings = [x for x in err.splitlines() if "warning:" in x]
        assert len(warnings) == 1, err
        run = ended_run(d, "b-restart")
        assert run["status"] == "budget_exceeded"
        kept = events(home, "b-restart")
        assert [e["event"] for e in kept] == ["warn", "stop"]
        assert kept[1]["spent"] >= 6.0 and kept[1]["source"] == "track"
        assert run["budget"]["amount"] == 6.0 and run["budget"]["source"] == "track"
        steps = int(re.search(r"loop_steps=(\d+)", out)[1])
        assert run["steps"] == steps  # nothing lost across the restart
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        d.stop()
