"""Real processes: a daemon subprocess, real torch training subprocesses, a real socket."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, profiler_env, run_cli, sample_value, start_daemon, wait_for

from hooks import wire

pytestmark = pytest.mark.slow
TRAIN = str(REPO / "tests" / "scripts" / "train_tiny.py")


def train(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, TRAIN, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def finished_run(d, run_id: str) -> dict:
    def done():
        found = [r for r in d.runs() if r["id"] == run_id]
        return found[0] if found and found[0]["status"] != "running" else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


def test_torch_training_is_recorded_with_exact_steps_and_energy(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="it-torch-1")
    out = train(env, "--steps", "150", "--name", "tiny-mlp")
    assert out.returncode == 0, out.stderr
    assert "steps=150 errors=0" in out.stdout
    run = finished_run(daemon, "it-torch-1")
    assert run["name"] == "tiny-mlp"
    assert run["framework"] == "pytorch"
    assert run["status"] == "finished"
    assert run["steps"] == 150
    assert run["samples"] == 150 * 8
    assert run["dropped_steps"] == 0
    assert run["gpu_energy_j"] > 0
    assert run["gpu_seconds"] > 0
    assert run["simulated"] is True
    # the simulated A100 idles at tens of watts and never exceeds its 400 W limit
    assert 20 < run["gpu_power_mean_w"] <= 400
    assert run["step_time_mean_s"] >= 0.005
    assert run["cpu_energy_source"] in ("rapl", "estimated") and run["cpu_energy_j"] > 0
    metrics = daemon.metrics()
    assert sample_value(metrics, "profiler_run_steps_total", run="it-torch-1") == 150
    assert sample_value(metrics, "profiler_run_info", run="it-torch-1", status="finished") == 1
    assert sample_value(metrics, "profiler_run_cpu_energy_joules_total", run="it-torch-1") > 0


def test_failing_training_is_recorded_as_failed(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="it-fail")
    out = train(env, "--steps", "50", "--fail-at", "20")
    assert out.returncode != 0 and "planned failure" in out.stderr
    run = finished_run(daemon, "it-fail")
    assert run["status"] == "failed"
    assert run["steps"] == 20


def test_killed_training_process_ends_its_run_as_lost(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="it-killed")
    proc = subprocess.Popen(
        [sys.executable, TRAIN, "--steps", "100000", "--step-sleep", "0.01"], env=env
    )
    wait_for(
        lambda: any(r["id"] == "it-killed" and r["steps"] > 5 for r in daemon.runs()),
        what="steps from the training process",
    )
    proc.kill()
    proc.wait()
    run = finished_run(daemon, "it-killed")
    assert run["status"] == "lost"
    assert run["steps"] > 5


def test_metrics_pass_promtool_check(daemon, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("PROFILER_REQUIRE_PROMTOOL"):
            pytest.fail("promtool not found: install Debian's prometheus package (make test does)")
        pytest.skip("promtool not installed")
    env = dict(daemon.env, PROFILER_RUN_ID="it-promtool")
    assert train(env, "--steps", "30").returncode == 0
    finished_run(daemon, "it-promtool")
    text = daemon.metrics()
    for name in (
        "profiler_gpu_power_watts",
        "profiler_gpu_energy_joules_total",
        "profiler_gpu_memory_used_bytes",
        "profiler_gpu_utilization_ratio",
        "profiler_run_info",
        "profiler_run_energy_joules_total",
        "profiler_run_gpu_seconds_total",
        "profiler_run_steps_total",
        "profiler_run_samples_total",
        "profiler_step_duration_seconds_bucket",
        "profiler_step_energy_joules_bucket",
        "profiler_messages_received_total",
    ):
        assert re.search(rf"^{name}[{{ ]", text, re.M), f"{name} missing from /metrics"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'model_name="NVIDIA A100-SXM4-40GB"' in text
    assert 'job="' not in text and 'instance="' not in text


def test_malformed_datagrams_are_counted_and_the_daemon_lives(daemon):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(daemon.home / "daemon.sock")
    garbage = [
        b"\xff\xfe not json",
        b"[]",
        b'{"v": 99, "type": "hello", "run": "x", "pid": 1}',
        b'{"v": 1, "type": "nope", "run": "x", "pid": 1}',
        b'{"v": 1, "type": "step", "run": "x", "pid": 1, "steps": [[1, 2.0, 1.0, 8]]}',
        b'{"v": 1, "type": "step", "run": "x", "pid": 1, "steps": [[1, NaN, 1.0, 8]]}',
        b"x" * 70_000,
    ]
    for data in garbage:
        sock.sendto(data, path)
    pid = os.getpid()
    now = time.monotonic()
    hello = wire.hello("it-mixed", pid, name="mixed", mono=now, wall=time.time())
    sock.sendto(wire.encode(hello), path)
    rows = [[i, now + i * 0.01, now + i * 0.01 + 0.01, 4] for i in range(1, 41)]
    sock.sendto(wire.encode(wire.steps("it-mixed", pid, rows)), path)
    sock.sendto(wire.encode(wire.bye("it-mixed", pid, "finished", now + 0.5)), path)

    def counts():
        text = daemon.metrics()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("profiler_messages_malformed_total{")
        )

    wait_for(lambda: counts() >= len(garbage), what="malformed counts")
    assert counts() == len(garbage)
    assert daemon.proc.poll() is None
    run = finished_run(daemon, "it-mixed")
    assert run["steps"] == 40 and run["samples"] == 160


def test_sigterm_then_restart_keeps_the_run_totals(tmp_path):
    home = tmp_path / "home"
    d = start_daemon(home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(home / "daemon.sock")
    pid = os.getpid()  # this test process stands in for the training process (it stays alive)

    def send_steps(first: int, n: int) -> None:
        now = time.monotonic()
        sock.sendto(
            wire.encode(wire.hello("it-restart", pid, name="restart", mono=now, wall=time.time())),
            path,
        )
        rows = [[first + i, now + i * 0.01, now + i * 0.01 + 0.01, 2] for i in range(n)]
        sock.sendto(wire.encode(wire.steps("it-restart", pid, rows)), path)

    send_steps(1, 30)
    wait_for(lambda: d.runs() and d.runs()[0]["steps"] == 30, what="30 steps in the ledger")
    time.sleep(0.5)
    assert d.stop(signal.SIGTERM) == 0
    before = d.runs()[0]
    assert before["status"] == "running" and before["steps"] == 30
    assert before["gpu_energy_j"] > 0

    d2 = start_daemon(home)
    try:
        send_steps(31, 20)
        wait_for(lambda: d2.runs()[0]["steps"] == 50, what="50 steps after restart")
        now = time.monotonic()
        sock.sendto(wire.encode(wire.bye("it-restart", pid, "finished", now)), path)
        run = finished_run(d2, "it-restart")
        assert run["steps"] == 50 and run["samples"] == 100
        assert run["gpu_energy_j"] >= before["gpu_energy_j"]
        metrics = d2.metrics()
        assert sample_value(metrics, "profiler_run_steps_total", run="it-restart") == 50
    finally:
        d2.stop()


def test_two_daemons_side_by_side_and_a_second_for_one_home_refuses(tmp_path):
    a = start_daemon(tmp_path / "a")
    b = start_daemon(tmp_path / "b")
    try:
        assert a.metrics_url != b.metrics_url
        assert "profiler_build_info" in a.metrics() and "profiler_build_info" in b.metrics()
        again = run_cli(profiler_env(tmp_path / "a"), "daemon", timeout=30)
        assert again.returncode == 2
        assert again.stderr.strip().count("\n") == 0, again.stderr
        assert f"already runs for {tmp_path / 'a'}" in again.stderr
        assert a.proc.poll() is None
    finally:
        a.stop()
        b.stop()


def test_hooks_autostart_exactly_one_daemon_for_many_processes(tmp_path):
    home = tmp_path / "auto"
    env = profiler_env(home, PROFILER_RUN_ID="it-auto")
    procs = [
        subprocess.Popen(
            [sys.executable, TRAIN, "--steps", "40"],
            env=dict(env, RANK=str(i), LOCAL_RANK=str(i), WORLD_SIZE="3"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    status = json.loads(run_cli(env, "status", "--json").stdout)
    try:
        assert status["running"] and status["gpu_source"] == "simulated"
        log = (home / "daemon.log").read_text()
        assert log.count("listening on") == 1, log
        runs = json.loads(run_cli(env, "runs", "--json").stdout)
        assert [r["id"] for r in runs] == ["it-auto"]
        run = wait_for(
            lambda: next(
                (r for r in json.loads(run_cli(env, "runs", "--json").stdout)
                 if r["status"] != "running"),
                None,
            ),
            what="the 3-process run to end",
        )  # fmt: skip
        assert run["steps"] == 40 and run["samples"] == 3 * 40 * 8  # the job's steps
        assert [(r["rank"], r["steps"]) for r in run["ranks"]] == [(0, 40), (1, 40), (2, 40)]
    finally:
        stop = run_cli(env, "stop")
        assert stop.returncode == 0, stop.stderr
    assert json.loads(run_cli(env, "status", "--json").stdout)["running"] is False
