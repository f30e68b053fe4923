"""`profiler watch`: snapshots of exposition text from the real exporter against the daemon's own
figures, steps/s from two snapshots, the loop's exits, and one frame from a real daemon."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from conftest import REPO, sample_value, wait_for
from inprocess import hello, make_daemon, pricing
from rich.console import Console

from profiler.cli import watch
from profiler.config import Config
from profiler.cost.meter import projected
from profiler.daemon.exporter import render_metrics
from profiler.ingest.messages import StepBatch


def exposition(d) -> str:
    return render_metrics(d).decode()


def steps(d, clock, run: str, first: int, n: int, seconds: float = 1.0) -> None:
    """``n`` steps of 0.8 s, one every ``seconds``, sampling the GPU before each."""
    for i in range(first, first + n):
        clock.now += seconds
        d.sample()
        d.handle(StepBatch(run, os.getpid(), ((i, clock.now - 0.8, clock.now, 32, None),), 0))


def training(tmp_path, total_steps=200):
    d, _sim, clock = make_daemon(tmp_path, [[(10000.0, 300.0)]])
    d.set_pricing(pricing(kind="flat", gph=3.6, kwh=0.25, pue=1.2))
    d.sample()
    h = hello("w1", os.getpid(), clock.now)
    h.fields["total_steps"] = total_steps
    d.handle(h)
    return d, clock


def snap(d, clock, previous=None):
    return watch.build_snapshot(watch.parse(exposition(d)), clock.now, d.wall(), previous)


def test_snapshot_figures_are_the_daemons_own(tmp_path):
    d, clock = training(tmp_path)
    steps(d, clock, "w1", 1, 30)
    s = snap(d, clock)
    run = d.runs["w1"]
    (dev,) = s.devices
    assert dev.simulated and dev.gpu == "0" and "A100" in dev.model
    assert dev.power_w == pytest.approx(300.0) and dev.power_limit_w is not None
    assert dev.utilization is not None and dev.memory_total_bytes == pytest.approx(40 * 2**30)
    (r,) = s.runs
    assert (r.id, r.name, r.currency, r.simulated) == ("w1", "w1", "USD", True)
    assert r.steps == run.steps == 30 and r.total_steps == 200
    assert r.steps_per_s is None  # no previous snapshot
    assert r.step_time_mean_s == pytest.approx(run.step_seconds.total / run.step_seconds.n)
    assert r.step_time_mean_s == pytest.approx(0.8)
    assert r.energy_j == pytest.approx(run.total_gpu_energy_j, rel=1e-12) and r.energy_j > 0
    assert r.cost == pytest.approx(run.cost.total, rel=1e-12) and r.cost > 0
    assert r.cost_rate_per_hour == pytest.approx(run.cost.rate_per_hour(clock.now), rel=1e-12)
    assert r.projected_cost == pytest.approx(projected(run.cost.total, 30, 200), rel=1e-12)
    assert r.waste_cost == pytest.approx(run.cost.waste_total) == 0.0
    per_step = (run.last_event_mono - run.start_mono) / 30
    assert r.projected_end == pytest.approx(d.wall() + 170 * per_step)
    text = watch.render_text(s, "http://x/metrics")
    assert "0*" in text and "w1" in text and "30/200" in text and "USD/h" in text
    assert "simulated GPU" in text


def test_steps_per_second_from_two_snapshots(tmp_path):
    d, clock = training(tmp_path)
    steps(d, clock, "w1", 1, 10)
    first = snap(d, clock)
    steps(d, clock, "w1", 11, 12, seconds=0.5)  # 12 steps in 6 s
    second = snap(d, clock, previous=first)
    assert second.runs[0].steps_per_s == pytest.approx(2.0)
    assert second != first  # a changed frame is redrawn; an unchanged one is not
    assert snap(d, clock, previous=second).runs[0].steps_per_s is None  # no time passed
    clock.now += 2.0
    assert snap(d, clock, previous=second).runs[0].steps_per_s == 0.0
    assert "2.00" in watch.render_text(second)


def test_unknown_figures_are_dashes_and_ended_runs_are_not_shown(tmp_path):
    d, clock = training(tmp_path, total_steps=None)
    d.sample()
    s = snap(d, clock)
    (r,) = s.runs
    assert r.steps == 0 and r.total_steps is None and r.step_time_mean_s is None
    assert r.projected_cost is None and r.projected_end is None
    row = next(ln for ln in watch.render_text(s).splitlines() if ln.startswith("w1"))
    # not priced yet, no energy, no steps, no budget
    assert row.split()[2:] == ["0"] + ["-"] * 9
    assert r.currency == "" and r.cost is None and r.energy_j is None
    # a device that reports no power: "-", not 0
    text = exposition(d).replace("profiler_gpu_power_watts{", "x_gone{")
    (dev,) = watch.build_snapshot(watch.parse(text), 0.0, 0.0).devices
    assert dev.power_w is None and dev.power_limit_w is not None
    d.runs["w1"].status = "finished"
    assert snap(d, clock).runs == ()
    assert "no running runs" in watch.render_text(snap(d, clock))


def test_no_daemon_says_so_in_one_line(tmp_path, capsys):
    assert watch.watch(Config(home=tmp_path)) == 1
    out = capsys.readouterr().out
    assert out == f"no daemon running for {tmp_path}; start one with `profiler start`\n"


def test_the_loop_exits_1_when_the_daemon_stops_and_0_on_ctrl_c(tmp_path, monkeypatch, capsys):
    d, clock = training(tmp_path)
    steps(d, clock, "w1", 1, 3)
    text = exposition(d)
    statuses = iter([{"metrics_url": "http://x/metrics"}, None])
    monkeypatch.setattr(watch, "daemon_status", lambda config: next(statuses))
    answers = iter([text, OSError("connection refused")])

    def fetch(url):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return watch.parse(answer)

    monkeypatch.setattr(watch, "fetch", fetch)
    screen = io.StringIO()
    console = Console(file=screen, width=200, force_terminal=True, color_system=None)
    assert watch.watch(Config(home=tmp_path), interval=0.01, console=console) == 1
    assert "w1" in screen.getvalue()
    assert "stopped" in capsys.readouterr().out

    def interrupted(url):
        raise KeyboardInterrupt

    running = {"metrics_url": "u"}
    monkeypatch.setattr(watch, "daemon_status", lambda config: running)
    monkeypatch.setattr(watch, "fetch", interrupted)
    assert watch.watch(Config(home=tmp_path), console=console) == 0


@pytest.mark.slow
def test_once_shows_the_simulated_device_and_the_running_run(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="w-tiny")
    train = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "scripts" / "train_tiny.py"), "--steps", "600",
         "--step-sleep", "0.01"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: sample_value(daemon.metrics(), "profiler_run_steps_total", run="w-tiny"),
                 timeout=60, what="the run's first steps")  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-m", "profiler", "watch", "--once"],
            env=daemon.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "A100-SXM4-40GB" in out.stdout and "0*" in out.stdout, out.stdout
        row = next(ln for ln in out.stdout.splitlines() if ln.startswith("w-tiny"))
        assert "/600" in row and ("J*" in row or "Wh*" in row), out.stdout
        assert "simulated GPU" in out.stdout
    finally:
        _, err = train.communicate(timeout=120)
    assert train.returncode == 0, err
