"""Faults the daemon and the hooks survive, injected into real processes where the fault is a
process's (a daemon SIGKILLed, a daemon started late) and into the real sensor and ledger code in
one process where the fault is a device's or a disk's (a hung or lost GPU, a driver reload, a full
or read-only ledger, a wall-clock step). Ground truth is the simulated GPU's exact integral."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import profiler_env, sample_value, start_daemon, wait_for
from inprocess import FakeClock, advance, hello, make_daemon

from profiler.config import Config
from profiler.daemon.core import Daemon
from profiler.daemon.exporter import render_metrics
from profiler.ingest.messages import Bye, StepBatch
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML

SCRIPTS = Path(__file__).parents[1] / "scripts"


def train(env: dict[str, str], run_id: str, steps: int, step_sleep: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / "train_tiny.py"), "--steps", str(steps),
         "--step-sleep", str(step_sleep)],
        env=dict(env, PROFILER_RUN_ID=run_id), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def run_of(d, run_id: str) -> dict | None:
    return next((r for r in d.runs() if r["id"] == run_id), None)


def finished(d, run_id: str) -> dict:
    return wait_for(
        lambda: (r := run_of(d, run_id)) and r["status"] != "running" and r,
        timeout=30, what=f"run {run_id} to end",
    )  # fmt: skip


# ---- process faults ----------------------------------------------------------------------


def test_daemon_sigkilled_mid_run_and_restarted_keeps_the_run(tmp_path):
    """Training goes on; the run keeps its id and its totals; what the dead daemon held in memory
    (at most one flush interval, 0.5 s here) and the steps sent while no daemon listened are the
    only loss, and both are accounted: dropped steps are counted, the gap is ``unmeasured_s``."""
    home = tmp_path / "home"
    d = start_daemon(home)
    # at most 100 steps/s: training outlasts the restart and the hook's reconnect backoff by seconds
    steps, step_sleep = 800, 0.01
    proc = train(d.env, "it-kill", steps, step_sleep)
    try:
        wait_for(lambda: (r := run_of(d, "it-kill")) and r["steps"] > 100, what="steps")
        before = run_of(d, "it-kill")
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
        killed_at = time.monotonic()
        time.sleep(1.0)
        d2 = start_daemon(home)
        gap = time.monotonic() - killed_at
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr
        run = finished(d2, "it-kill")
        assert run["status"] == "finished" and run["steps"] > before["steps"]
        assert run["gpu_energy_j"] > before["gpu_energy_j"]
        lost = steps - run["steps"] - run["dropped_steps"]
        # unflushed at the kill: one flush interval (0.5 s) of steps, plus those in flight
        assert 0 <= lost <= 100 * (0.5 + 0.5), (lost, run)
        assert gap <= run["unmeasured_s"] <= gap + 2.0, (gap, run["unmeasured_s"])
        metrics = d2.metrics()
        assert sample_value(metrics, "profiler_run_steps_total", run="it-kill") == run["steps"]
    finally:
        d2.stop()


def test_hooks_reconnect_to_a_daemon_started_after_training_began(tmp_path):
    """No daemon at first (autostart off): steps queue (bounded) while the hook keeps trying;
    once a daemon starts, every step arrives and the unmeasured start is stated, not zero."""
    home = tmp_path / "home"
    env = profiler_env(home, PROFILER_AUTOSTART="0")
    home.mkdir()
    proc = train(env, "it-late", 300, 0.01)
    try:
        first = proc.stderr.readline()  # the hook's one warning: training has begun
        assert "no profiler daemon at" in first and "will keep trying" in first, first
        time.sleep(1.5)
        assert proc.poll() is None
        d = start_daemon(home)
        stdout, stderr = proc.communicate(timeout=120)
        stderr = first + stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr
        assert stderr.count("no profiler daemon at") == 1, stderr
        assert "recording resumes" in stderr
        run = finished(d, "it-late")
        health = [ln for ln in d.metrics().splitlines()
                  if ln.startswith(("profiler_messages_", "profiler_message_"))]  # fmt: skip
        assert run["steps"] == 300 and run["dropped_steps"] == 0, (run, health, stderr)
        assert run["samples"] == 300 * 8 and run["gpu_energy_j"] > 0
        assert 1.0 <= run["unmeasured_s"] <= 10.0, run["unmeasured_s"]
        assert run["duration_s"] > run["unmeasured_s"]  # the run began before the daemon
    finally:
        d.stop()


# ---- device faults ----------------------------------------------------------------------


def metrics_text(d: Daemon) -> str:
    return render_metrics(d).decode()


def test_a_hung_gpu_call_is_bounded_and_the_other_gpu_keeps_sampling():
    sim = SimulatedNVML("A100-SXM4-40GB", 2, traces=[[(60.0, 200.0)], [(60.0, 300.0)]])
    sensor = NvmlSensor(sim, call_timeout_s=0.2)
    t0 = sim.t0_s
    sensor.sample()
    sim.set_hang(0, 1.5)
    started = time.monotonic()
    samples = sensor.sample()
    waited = time.monotonic() - started
    assert [s.index for s in samples] == [1]
    assert waited < 1.2  # bounded by the timeout, not by the 1.5 s hang
    assert sensor.errors["gpu0:Timeout"] == 1
    sim.set_hang(0, 0.0)
    for _ in range(3):  # while the hung call is out, GPU 0 is skipped without waiting again
        assert [s.index for s in sensor.sample()] == [1]
    assert sensor.errors["gpu0:Timeout"] == 1
    time.sleep(1.6)  # the hung call returns
    by_index = {s.index: s for s in sensor.sample()}
    assert set(by_index) == {0, 1}
    # the energy counter covers the gap: GPU 0's figure is still the exact integral
    exact = sim.exact_energy_j(0, t0, by_index[0].t_s)
    assert by_index[0].energy_j == pytest.approx(exact - 0.0, abs=0.5)
    sensor.close()


def test_daemon_keeps_both_runs_exact_through_a_hung_gpu(tmp_path):
    d, sim, clock = make_daemon(tmp_path, [[(60.0, 250.0)], [(60.0, 350.0)]], count=2,
                                call_timeout_s=0.1)  # fmt: skip
    t0 = clock.now
    d.sample()
    d.handle(hello("a", os.getpid(), t0, devices=("0",)))
    d.handle(hello("b", os.getppid(), t0, devices=("1",)))
    advance(d, clock, 2.0)
    sim.set_hang(0, 0.6)
    advance(d, clock, 1.0)  # GPU 0 hangs once (0.1 s wait), then is skipped while it is out
    sim.set_hang(0, 0.0)
    time.sleep(0.7)
    advance(d, clock, 2.0)
    d.attribute_all()
    a, b = d.runs["a"], d.runs["b"]
    last = {dev.index: dev.curve.last.t_s for dev in d.devices.values()}
    assert a.total_gpu_energy_j == pytest.approx(sim.exact_energy_j(0, t0, last[0]), rel=1e-3)
    assert b.total_gpu_energy_j == pytest.approx(sim.exact_energy_j(1, t0, last[1]), rel=1e-3)
    text = metrics_text(d)
    assert sample_value(text, "profiler_sensor_errors_total", sensor="gpu", reason="gpu0:Timeout")


def test_a_lost_gpu_is_left_out_while_the_other_gpu_is_measured_exactly(tmp_path):
    d, sim, clock = make_daemon(tmp_path, [[(60.0, 250.0)], [(60.0, 350.0)]], count=2)
    t0 = clock.now
    d.sample()
    d.handle(hello("a", os.getpid(), t0, devices=("0",)))
    d.handle(hello("b", os.getppid(), t0, devices=("1",)))
    advance(d, clock, 2.0)
    sim.set_lost(0, True)
    lost_at = clock.now
    advance(d, clock, 3.0)
    d.attribute_all()
    a, b = d.runs["a"], d.runs["b"]
    assert b.total_gpu_energy_j == pytest.approx(sim.exact_energy_j(1, t0, clock.now), rel=1e-6)
    # GPU 0's energy is what it reported until it was lost: never invented after
    assert a.total_gpu_energy_j == pytest.approx(sim.exact_energy_j(0, t0, lost_at), rel=1e-3)
    text = metrics_text(d)
    assert sample_value(text, "profiler_sensor_errors_total", sensor="gpu",
                        reason="gpu0:GpuIsLost") >= 30  # fmt: skip


def test_a_driver_reload_resetting_the_counter_keeps_the_run_exact(tmp_path):
    phases = [[(1.0, 100.0)] + [(0.5, 200.0 + 10 * i) for i in range(20)] + [(10.0, 100.0)]]
    d, sim, clock = make_daemon(tmp_path, phases)
    t0 = clock.now
    d.sample()
    d.handle(hello("reload", os.getpid(), t0))
    advance(d, clock, 4.0)
    sim.reset_energy_counter(0)
    advance(d, clock, 4.0)
    d.attribute_all()
    exact = sim.exact_energy_j(0, t0, clock.now)
    # the reset interval (0.1 s) is estimated from power; the rest is the counter
    assert d.runs["reload"].total_gpu_energy_j == pytest.approx(exact, rel=0.005)
    assert d.gpu_sensor.errors["gpu0:CounterReset"] == 1


# ---- ledger faults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "break_it, mend_it",
    [
        # SQLITE_FULL, as on a full disk
        ("PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1073741823"),
        # a ledger that refuses writes, as on a read-only file system
        ("PRAGMA query_only = ON", "PRAGMA query_only = OFF"),
    ],
    ids=["disk-full", "read-only"],
)
def test_ledger_write_failures_keep_data_in_memory_and_write_it_later(
    tmp_path, caplog, break_it, mend_it
):
    d, sim, clock = make_daemon(tmp_path, [[(100.0, 300.0)]])
    t0 = clock.now
    pid = os.getpid()
    d.sample()
    d.handle(hello("disk", pid, t0))
    advance(d, clock, 1.0)
    d.flush()
    d.ledger.db.execute("VACUUM")  # no free pages left (a migration may leave some) to write in
    pages = d.ledger.db.execute("PRAGMA page_count").fetchone()[0]
    d.ledger.db.execute(break_it.format(pages=pages))
    caplog.set_level(logging.ERROR, logger="profiler.daemon.persist")
    step = 0
    for _ in range(5):  # five flush intervals of steps and energy, none written
        rows = tuple((step + i, clock.now + 0.01 * i, clock.now + 0.01 * i + 0.01, 4, None)
                     for i in range(50))  # fmt: skip
        step += 50
        d.handle(StepBatch("disk", pid, rows, 0))
        advance(d, clock, 60.0)  # a new minute rollup each time: the file must grow
        d.flush()
    failures = d.health["ledger_write_errors"]
    assert failures >= 3  # a full file may first take a write or two into free pages
    assert len([r for r in caplog.records if "ledger write failed" in r.message]) == 1
    assert (d.ledger.run("disk")["steps"] or 0) < 250  # null: no step written yet
    text = metrics_text(d)  # /metrics goes on from memory
    assert sample_value(text, "profiler_run_steps_total", run="disk") == 250
    assert sample_value(text, "profiler_ledger_write_errors_total") == failures
    d.ledger.db.execute(mend_it)
    d.handle(Bye("disk", pid, "finished", clock.now))
    advance(d, clock, 1.0)
    d.flush()
    row = d.ledger.run("disk")
    run = d.runs["disk"]
    assert row["steps"] == 250 and row["samples"] == 1000 and row["status"] == "finished"
    assert row["gpu_energy_j"] == pytest.approx(run.total_gpu_energy_j)
    minutes = d.ledger.db.execute(
        "SELECT sum(steps), sum(gpu_energy_j) FROM rollups WHERE run_id = 'disk'"
    ).fetchone()
    assert minutes[0] == 250 and minutes[1] == pytest.approx(run.total_gpu_energy_j)


# ---- clocks ----------------------------------------------------------------------


def test_a_wall_clock_step_during_a_run_changes_no_duration_or_energy(tmp_path):
    """Step times and energy live on the monotonic clock; an NTP step of the wall clock (here
    one hour forward mid-run) moves no duration, and the run's wall times keep its anchor."""
    clock = FakeClock()
    jump = {"s": 0.0}
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[[(100.0, 300.0)]])
    d = Daemon(Config(home=tmp_path), gpu_sensor=NvmlSensor(sim, clock=clock), clock=clock,
               wall=lambda: 1.7e9 + clock.now + jump["s"])  # fmt: skip
    d.open_ledger()
    t0 = clock.now
    pid = os.getpid()
    d.sample()
    d.handle(hello("ntp", pid, t0))
    for i in range(40):
        if i == 20:
            jump["s"] = 3600.0
        d.handle(StepBatch("ntp", pid, ((i, clock.now, clock.now + 0.1, 1, None),), 0))
        advance(d, clock, 0.1)
    d.handle(Bye("ntp", pid, "finished", clock.now))
    advance(d, clock, 1.0)
    run = d.runs["ntp"]
    assert run.status == "finished"
    assert run.step_time_sum_s == pytest.approx(40 * 0.1)
    assert run.ended_at - run.started_at == pytest.approx(clock.now - 1.0 - t0)
    assert run.total_gpu_energy_j == pytest.approx(300.0 * (clock.now - 1.0 - t0), rel=1e-6)


def test_a_busy_daemon_delays_steps_but_loses_none(tmp_path):
    """A receiver that reads slowly fills its queue (Linux queues ~10 datagrams): the hook keeps
    what the socket refuses and sends it later; every step arrives once, in order."""
    from hooks.client import Client
    from profiler.ingest.messages import StepBatch
    from profiler.ingest.receiver import Receiver

    receiver = Receiver(tmp_path / "daemon.sock")
    got: list[int] = []
    dropped: list[int] = []
    stop = threading.Event()

    def slow_daemon() -> None:
        while not stop.is_set():
            for m in receiver.drain(limit=3):
                if isinstance(m, StepBatch):
                    got.extend(row[0] for row in m.rows)
                    dropped.append(m.dropped)
            time.sleep(0.05)

    client = Client("busy", {"name": "busy"}, home=tmp_path, autostart=False, flush_every=10)
    assert client.ready.wait(5)
    reader = threading.Thread(target=slow_daemon)
    reader.start()
    try:
        now = time.monotonic()
        for i in range(3000):
            client.step(i, now + i * 1e-4, now + (i + 1) * 1e-4, 1)
        client.close()
        wait_for(lambda: len(got) >= 3000, timeout=10, what="every step")
    finally:
        stop.set()
        reader.join()
        receiver.close()
    assert got == list(range(3000)) and sum(dropped) == 0 and client.dropped_total == 0


def test_slow_gpus_each_get_their_own_time_and_none_is_taken_for_hung():
    """Four GPUs whose power and energy reads take 0.12 s each (0.24 s a device): one reader
    goes through them in turn for about 1 s, but no single device is over the 0.3 s limit."""
    sim = SimulatedNVML("A100-SXM4-40GB", 4, traces=[[(60.0, 200.0)]] * 4)
    sensor = NvmlSensor(sim, call_timeout_s=0.3)
    sensor.sample()
    for i in range(4):
        sim.set_hang(i, 0.12)
    try:
        assert [s.index for s in sensor.sample()] == [0, 1, 2, 3]
        assert not any(key.endswith(":Timeout") for key in sensor.errors)
    finally:
        for i in range(4):
            sim.set_hang(i, 0.0)
        sensor.close()
