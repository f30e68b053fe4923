"""A budget stop on a 2-rank gloo DDP job (torchrun): both ranks stop after the same step, so
neither hangs in the next all-reduce, and the run ends ``budget_exceeded``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from conftest import REPO, start_configured_daemon, wait_for

pytestmark = pytest.mark.slow
PRICED = '[cost]\npricing = "flat"\ngpu_hour_price = 3600\nenergy_price_kwh = 0\n'


def test_two_gloo_ranks_stop_at_the_same_step(tmp_path):
    home = tmp_path / "home"
    d = start_configured_daemon(home, PRICED)
    try:
        env = dict(d.env, PROFILER_RUN_ID="ddp-budget")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(REPO / "tests" / "scripts" / "train_ddp_budget.py"),
               "--budget", "2.0", "--report-dir", str(tmp_path)]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank-*.json"))]
        assert [r["rank"] for r in reports] == [0, 1]
        assert reports[0]["stopped_at"] is not None
        assert reports[0]["stopped_at"] == reports[1]["stopped_at"]
        assert reports[0]["loop_steps"] == reports[1]["loop_steps"] == reports[0]["stopped_at"]
        assert reports[0]["weight"] == reports[1]["weight"]  # the same model on both ranks

        def ended():
            runs = [r for r in d.runs() if r["id"] == "ddp-budget" and r["status"] != "running"]
            return runs[0] if runs else None

        run = wait_for(ended, timeout=30, what="the run to end")
        assert run["status"] == "budget_exceeded"
        assert run["steps"] == reports[0]["loop_steps"]
        db = sqlite3.connect(home / "ledger.sqlite")
        try:
            (at_step,) = db.execute(
                "SELECT at_step FROM budget_events WHERE run_id = 'ddp-budget' AND event = 'stop'"
            ).fetchone()
        finally:
            db.close()
        assert at_step == reports[0]["stopped_at"] > 0  # the step the daemon named, ahead
    finally:
        d.stop()
