"""PyTorch hooks against a real daemon: torchrun with two gloo ranks, a custom loop timed with
StepTimer, and a daemon killed in the middle of training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from conftest import REPO, profiler_env, run_cli, sample_value, wait_for

pytestmark = pytest.mark.slow
SCRIPTS = REPO / "tests" / "scripts"


def ended_run(env: dict[str, str], run_id: str) -> dict:
    def done():
        out = run_cli(env, "runs", "--json")
        found = [r for r in json.loads(out.stdout) if r["id"] == run_id]
        return found[0] if found and found[0]["status"] != "running" else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


def daemons_for(home) -> list[psutil.Process]:
    """``profiler daemon`` processes serving ``home``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if cmd[-2:] == ["profiler", "daemon"] and p.environ().get("PROFILER_HOME") == str(home):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_torchrun_two_gloo_ranks_make_one_run_with_one_daemon(tmp_path):
    home = tmp_path / "home"
    env = profiler_env(home)  # no daemon yet: the ranks start one
    env.pop("TORCHELASTIC_RUN_ID", None)
    script = [str(SCRIPTS / "train_ddp.py"), "--steps", "30", "--report-dir", str(tmp_path)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *script]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank-*.json"))]
        assert sorted(r["rank"] for r in reports) == [0, 1]
        run_ids = {r["run_id"] for r in reports}
        assert len(run_ids) == 1 and next(iter(run_ids)).startswith("torchelastic-")
        assert len(daemons_for(home)) == 1
        runs = json.loads(run_cli(env, "runs", "--json").stdout)
        assert [r["id"] for r in runs] == list(run_ids)
        run = ended_run(env, runs[0]["id"])
        assert run["status"] == "finished"
        assert run["steps"] == 30 and run["samples"] == 2 * 30 * 8
        assert [(r["rank"], r["steps"], r["samples"]) for r in run["ranks"]] == [
            (0, 30, 240),
            (1, 30, 240),
        ]
        assert all(len(r["pids"]) == 1 and r["world_size"] == 2 for r in run["ranks"])
        assert [r["local_rank"] for r in run["ranks"]] == [0, 1]
        assert run["gpu_energy_j"] > 0 and run["clock"] == "host_monotonic"
    finally:
        run_cli(env, "stop")
    assert daemons_for(home) == []


def test_step_timer_times_a_loop_without_an_optimizer(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="it-eval")
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "eval_loop.py"), "--batches", "25"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "steps=25 errors=0" in out.stdout
    run = ended_run(env, "it-eval")
    assert run["status"] == "finished" and run["steps"] == 25
    assert run["samples"] == 16 * 25 - 5
    assert run["samples_source"] == "argument"
    assert run["nonfinite_loss_steps"] == 1 and run["first_nonfinite_step"] == 25
    assert run["last_loss"] is not None and run["last_loss"] >= 0
    assert run["gpu_energy_j"] > 0
    metrics = daemon.metrics()
    assert sample_value(metrics, "profiler_run_nonfinite_loss_steps_total", run="it-eval") == 1
    assert sample_value(metrics, "profiler_run_loss", run="it-eval") == run["last_loss"]
    assert sample_value(metrics, "profiler_run_rank_steps_total", run="it-eval", rank="0") == 25
    assert sample_value(metrics, "profiler_run_info", run="it-eval", clock="host_monotonic") == 1


def test_training_survives_the_daemon_being_killed(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="it-orphan")
    train = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "train_tiny.py"), "--steps", "400", "--step-sleep", "0.01"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: any(r["id"] == "it-orphan" and r["steps"] > 20 for r in daemon.runs()),
            what="steps to arrive",
        )
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait(10)
        stdout, stderr = train.communicate(timeout=120)
    finally:
        if train.poll() is None:
            train.kill()
    assert train.returncode == 0, stderr
    assert "steps=400 errors=0" in stdout
    assert "Traceback" not in stderr
    assert stderr.count("cannot reach the profiler daemon") == 1, stderr
    assert "steps of run it-orphan were not delivered to the daemon" in stderr
    dropped = int(stderr.split("profiler: ")[-1].split(" steps of run")[0])
    assert 0 < dropped < 400
