"""``profiler run --budget``: the wrapper takes the daemon's stop and signals the command
(SIGINT, then SIGTERM after the grace); the run ends ``budget_exceeded`` with its figures."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from conftest import REPO, ended_run, start_configured_daemon

pytestmark = pytest.mark.slow
PRICED = '[cost]\npricing = "flat"\ngpu_hour_price = 3600\nenergy_price_kwh = 0\n'


def profiler_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "profiler", "run", "--quiet", *args], env=env,
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def stop_events(home, run_id: str) -> list[tuple[str, str, float]]:
    db = sqlite3.connect(home / "ledger.sqlite")
    try:
        return db.execute(
            "SELECT event, source, spent FROM budget_events WHERE run_id = ? ORDER BY at",
            (run_id,),
        ).fetchall()
    finally:
        db.close()


def test_run_budget_sends_sigint_and_ends_budget_exceeded(tmp_path):
    home = tmp_path / "home"
    d = start_configured_daemon(home, PRICED)
    try:
        out = profiler_run(
            d.env, "--run-id", "r-stop", "--budget", "1.0", "--on-exceed", "stop", "--",
            sys.executable, str(REPO / "tests" / "scripts" / "wait_signal.py"),
        )  # fmt: skip
        assert out.returncode == 130, out.stderr  # the child died of SIGINT, as a shell says
        assert "sigint from=parent" in out.stdout
        assert "profiler: run r-stop stopped for its budget; the command exited with status 130" \
            in out.stderr  # fmt: skip
        assert "sending the command SIGINT" in out.stderr
        run = ended_run(d, "r-stop")
        assert run["status"] == "budget_exceeded"
        events = stop_events(home, "r-stop")
        assert [(e, s) for e, s, _ in events] == [
            ("warn", "profiler run"),
            ("stop", "profiler run"),
        ]
        assert events[1][2] >= 1.0
    finally:
        d.stop()


def test_per_run_budget_from_the_config_sends_sigterm_after_the_grace(tmp_path):
    home = tmp_path / "home"
    d = start_configured_daemon(home, PRICED + '[budget]\nper_run = 0.5\non_exceed = "stop"\n')
    try:
        ignores_sigint = ("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                          "time.sleep(60)")  # fmt: skip
        out = profiler_run(d.env, "--run-id", "r-term", "--budget-grace", "1", "--",
                           sys.executable, "-c", ignores_sigint)  # fmt: skip
        assert out.returncode == 143, out.stderr  # SIGTERM after the grace
        run = ended_run(d, "r-term")
        assert run["status"] == "budget_exceeded"
        assert [(e, s) for e, s, _ in stop_events(home, "r-term")] == [
            ("warn", "per_run"), ("stop", "per_run"),
        ]  # fmt: skip
    finally:
        d.stop()


def test_run_budget_around_a_hooked_training_stops_within_a_step_and_loses_nothing(tmp_path):
    """`profiler run --budget` around a torch training with `track()`: the stop reaches the
    hook and the wrapper; from recorded facts, no step began later than one flush interval
    after the daemon's decision, and every step run is in the ledger."""
    import json
    import re

    from hooks.pytorch import FLUSH_INTERVAL_S

    home = tmp_path / "home"
    d = start_configured_daemon(home, PRICED)
    try:
        starts_file = tmp_path / "starts.json"
        out = profiler_run(
            # the run's cost counts from the command's start (importing torch included, seconds
            # on a busy machine): a budget of 15 GPU-seconds leaves the training time for steps
            d.env, "--run-id", "r-hooked", "--budget", "15.0", "--on-exceed", "stop", "--",
            sys.executable, str(REPO / "tests" / "scripts" / "train_budget.py"),
            "--starts", str(starts_file),
        )  # fmt: skip
        # the hook stops the training at a step boundary (BudgetExceeded) and it exits 0 by
        # itself: the wrapper leaves the stop to the hook (no signal racing that exit) and
        # prints no line the hook printed
        assert out.returncode == 0, out.stderr
        assert "the command's hook stops it after its current step" in out.stderr
        assert "sending the command SIGINT" not in out.stderr
        assert "the command is still running" not in out.stderr
        assert out.stderr.count("; warning: ") == 1, out.stderr  # the warning, once
        assert out.stderr.count("budget reached: the run stops") == 1, out.stderr
        assert "profiler: run r-hooked stopped for its budget" in out.stderr
        run = ended_run(d, "r-hooked")
        assert run["status"] == "budget_exceeded"
        kept = json.loads(starts_file.read_text())
        starts = kept["starts"]
        assert int(re.search(r"loop_steps=(\d+)", out.stdout)[1]) == kept["completed"]
        assert run["steps"] == kept["completed"] > 0  # nothing lost
        stop = [e for e in run["budget_events"] if e["event"] == "stop"]
        assert len(stop) == 1 and stop[0]["source"] == "profiler run"
        after = [s - stop[0]["at"] for s in starts if s > stop[0]["at"] + FLUSH_INTERVAL_S]
        assert after == [], f"steps began {after} s after the decision"
    finally:
        d.stop()
