"""``profiler run --budget``: the wrapper takes the daemon's stop and signals the command
(SIGINT, then SIGTERM after the grace); the run ends ``budget_exceeded`` with its figures."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from conftest import REPO, start_daemon, wait_for

pytestmark = pytest.mark.slow
PRICED = '[cost]\npricing = "flat"\ngpu_hour_price = 3600\nenergy_price_kwh = 0\n'


def profiler_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "profiler", "run", "--quiet", *args], env=env,
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def ended(d, run_id: str) -> dict:
    def done():
        found = [r for r in d.runs() if r["id"] == run_id and r["status"] != "running"]
        return found[0] if found else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


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
    home.mkdir()
    (home / "profiler.toml").write_text(PRICED)
    d = start_daemon(home)
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
        run = ended(d, "r-stop")
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
    home.mkdir()
    (home / "profiler.toml").write_text(PRICED + '[budget]\nper_run = 0.5\non_exceed = "stop"\n')
    d = start_daemon(home)
    try:
        ignores_sigint = ("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                          "time.sleep(60)")  # fmt: skip
        out = profiler_run(d.env, "--run-id", "r-term", "--budget-grace", "1", "--",
                           sys.executable, "-c", ignores_sigint)  # fmt: skip
        assert out.returncode == 143, out.stderr  # SIGTERM after the grace
        run = ended(d, "r-term")
        assert run["status"] == "budget_exceeded"
        assert [(e, s) for e, s, _ in stop_events(home, "r-term")] == [
            ("warn", "per_run"), ("stop", "per_run"),
        ]  # fmt: skip
    finally:
        d.stop()
