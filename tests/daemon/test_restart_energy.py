"""GPU energy across a daemon restart: the energy the GPU's own counter measured between the
dead daemon's last flush and the new daemon's first reading belongs to the runs that held the
GPU (issue "Reliability, round two", item 10). In process: two Daemon objects, one after the
other, on one ledger and one simulated GPU (its counter goes on across them) with a fake clock,
checked against the simulator's exact integral."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from inprocess import FakeClock, hello

from profiler.accounting.energy import CounterMark, split_gap
from profiler.cli.run_records import run_record
from profiler.config import Config
from profiler.daemon.core import Daemon
from profiler.ingest.messages import Bye
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML

# 1 s idle, then power that changes every 0.5 s (at sample times), long enough for every test
TRACE = [(1.0, 55.0)] + [(0.5, 200.0 + 37.0 * (i % 7)) for i in range(60)]


def new_daemon(home, sim: SimulatedNVML, clock: FakeClock) -> Daemon:
    """A daemon as `profiler daemon` builds one: a fresh sensor on the GPU, then the ledger."""
    sensor = NvmlSensor(sim, clock=clock)
    d = Daemon(Config(home=home), gpu_sensor=sensor, clock=clock, wall=lambda: 1.7e9 + clock.now)
    d.open_ledger()
    return d


def sample_until(d: Daemon, clock: FakeClock, t: float) -> None:
    while clock.now < t - 1e-9:
        clock.now += 0.1
        d.sample()


def stored_mark(d: Daemon, run_id: str) -> CounterMark:
    return CounterMark.from_meta(d.ledger.run(run_id)["meta"]["gpu_counters"][_uuid(d)])


def _uuid(d: Daemon) -> str:
    return next(iter(d.devices))


def kill_and_restart(home, d1: Daemon, sim, clock, t0: float, *, flush_at: float,
                     killed_at: float, restart_at: float) -> tuple[Daemon, float]:  # fmt: skip
    """Run ``d1`` to ``flush_at``, flush, go on unflushed to ``killed_at`` (SIGKILL: what it held
    is lost), no daemon until ``restart_at``; returns the new daemon (one sample taken) and its
    start time."""
    sample_until(d1, clock, flush_at)
    assert d1.flush()
    sample_until(d1, clock, killed_at)  # attributed, never flushed
    d1.gpu_sensor.close()
    clock.now = restart_at
    d2 = new_daemon(home, sim, clock)
    clock.now += 0.1
    d2.sample()
    return d2, restart_at


def finish(d: Daemon, clock: FakeClock, run_id: str, pid: int, end: float) -> None:
    sample_until(d, clock, end)
    d.handle(Bye(run_id, pid, "finished", end))
    sample_until(d, clock, end + 1.0)
    d.attribute_all()
    assert d.flush()


def test_gap_energy_goes_to_the_run_that_held_the_gpu(tmp_path):
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[TRACE])
    t0 = clock.now
    d1 = new_daemon(tmp_path, sim, clock)
    pid = os.getpid()
    d1.sample()
    sample_until(d1, clock, t0 + 1.0)
    d1.handle(hello("r", pid, clock.now))
    start = clock.now
    d2, restarted = kill_and_restart(
        tmp_path, d1, sim, clock, t0, flush_at=t0 + 5.0, killed_at=t0 + 6.0, restart_at=t0 + 9.0
    )
    run = d2.runs["r"]
    assert run.unmeasured_s == pytest.approx(0.0, abs=1e-9)  # the counter measured the gap
    assert d2.health["restart_gap_measured"] == 1
    mark = stored_mark(d2, "r")  # where the dead daemon's last flush had split the energy
    gap = sim.exact_energy_j(0, mark.t_s, clock.now)
    assert run.gap_gpu_energy_j == pytest.approx(gap, rel=1e-6)
    d2.handle(hello("r", pid, clock.now))  # the hook reconnects
    finish(d2, clock, "r", pid, t0 + 14.0)
    run = d2.runs["r"]
    exact = sim.exact_energy_j(0, start, t0 + 14.0)
    assert run.total_gpu_energy_j == pytest.approx(exact, rel=1e-6)
    assert run.total_gpu_seconds == pytest.approx(t0 + 14.0 - start, rel=1e-6)
    assert run.unmeasured_s == pytest.approx(0.0, abs=1e-9)
    row = d2.ledger.run("r")
    assert row["gpu_energy_j"] == pytest.approx(exact, rel=1e-6)
    assert row["meta"]["unmeasured_s"] == pytest.approx(0.0, abs=1e-9)
    shown = run_record(row)  # `profiler runs --json`
    assert shown["unmeasured_s"] == pytest.approx(0.0, abs=1e-9)
    assert shown["gap_gpu_energy_j"] == pytest.approx(gap, rel=1e-6)
    # the minute rollups hold the gap too: they add up to the run's total
    rollups = sum(r["gpu_energy_j"] for r in d2.ledger.rollups("r"))
    assert rollups == pytest.approx(exact, rel=1e-6)
    assert restarted > t0 + 6.0


def test_two_live_runs_share_the_gap_equally(tmp_path):
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[TRACE])
    t0 = clock.now
    d1 = new_daemon(tmp_path, sim, clock)
    a, b = os.getpid(), os.getppid()
    d1.sample()
    sample_until(d1, clock, t0 + 1.0)
    d1.handle(hello("a", a, clock.now))
    sample_until(d1, clock, t0 + 2.0)
    d1.handle(hello("b", b, clock.now))
    d2, _ = kill_and_restart(
        tmp_path, d1, sim, clock, t0, flush_at=t0 + 5.0, killed_at=t0 + 6.0, restart_at=t0 + 9.0
    )
    mark = stored_mark(d2, "a")
    assert mark.holders == ("a", "b") and stored_mark(d2, "b") == mark
    end = t0 + 12.0
    sample_until(d2, clock, end)
    d2.attribute_all()
    ra, rb = d2.runs["a"], d2.runs["b"]
    shared = sim.exact_energy_j(0, t0 + 2.0, clock.now)
    assert ra.total_gpu_energy_j == pytest.approx(
        sim.exact_energy_j(0, t0 + 1.0, t0 + 2.0) + shared / 2, rel=1e-6
    )
    assert rb.total_gpu_energy_j == pytest.approx(shared / 2, rel=1e-6)
    assert ra.unmeasured_s == rb.unmeasured_s == pytest.approx(0.0, abs=1e-9)


def test_counter_reset_in_the_gap_leaves_it_unmeasured(tmp_path):
    """A driver reload while no daemon ran: the counter's epoch changed, so nothing is
    credited; the run has its energy up to the flush and from the restart, and the gap is
    stated in unmeasured_s."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[TRACE],
                        energy_offset_mj=10**9)  # fmt: skip
    t0 = clock.now
    d1 = new_daemon(tmp_path, sim, clock)
    pid = os.getpid()
    d1.sample()
    sample_until(d1, clock, t0 + 1.0)
    d1.handle(hello("r", pid, clock.now))
    start = clock.now
    sample_until(d1, clock, t0 + 5.0)
    assert d1.flush()
    flushed = clock.now
    mark = stored_mark(d1, "r")
    d1.gpu_sensor.close()
    clock.now = t0 + 7.0
    sim.reset_energy_counter(0)
    clock.now = t0 + 9.0
    d2 = new_daemon(tmp_path, sim, clock)
    clock.now += 0.1
    first = clock.now
    d2.sample()
    assert d2.health["restart_gap_unmeasured:counter_changed"] == 1
    run = d2.runs["r"]
    assert run.unmeasured_s == pytest.approx(t0 + 9.0 - flushed, rel=1e-9)
    d2.handle(hello("r", pid, clock.now))
    finish(d2, clock, "r", pid, t0 + 12.0)
    exact = sim.exact_energy_j(0, start, mark.t_s) + sim.exact_energy_j(0, first, t0 + 12.0)
    assert d2.runs["r"].total_gpu_energy_j == pytest.approx(exact, rel=1e-6)


def test_a_new_simulator_is_a_new_counter(tmp_path):
    """Each simulated GPU (each real `profiler daemon`) counts from its own start: a daemon on
    another simulator credits nothing across the gap."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[TRACE])
    d1 = new_daemon(tmp_path, sim, clock)
    pid = os.getpid()
    d1.sample()
    sample_until(d1, clock, clock.now + 1.0)
    d1.handle(hello("r", pid, clock.now))
    sample_until(d1, clock, clock.now + 3.0)
    assert d1.flush()
    d1.gpu_sensor.close()
    clock.now += 2.0
    other = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[TRACE])
    d2 = new_daemon(tmp_path, other, clock)
    clock.now += 0.1
    d2.sample()
    assert d2.health["restart_gap_unmeasured:counter_changed"] == 1
    assert d2.runs["r"].unmeasured_s == pytest.approx(2.0, rel=1e-9)


def test_a_holder_that_died_in_the_gap_leaves_it_unmeasured_for_all(tmp_path):
    """Two runs held the GPU at the flush; one's process died while no daemon ran (when, no one
    knows): the gap is not split by guess, it stays unmeasured for both."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[TRACE])
    t0 = clock.now
    d1 = new_daemon(tmp_path, sim, clock)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        d1.sample()
        sample_until(d1, clock, t0 + 1.0)
        d1.handle(hello("live", os.getpid(), clock.now))
        d1.handle(hello("dies", child.pid, clock.now))
        sample_until(d1, clock, t0 + 4.0)
        assert d1.flush()
        assert stored_mark(d1, "live").holders == ("dies", "live")
        d1.gpu_sensor.close()
    finally:
        child.kill()
        child.wait()
    clock.now = t0 + 8.0
    d2 = new_daemon(tmp_path, sim, clock)
    assert d2.runs["dies"].status == "lost"
    clock.now += 0.1
    d2.sample()
    assert d2.health["restart_gap_unmeasured:holder_ended"] == 1
    assert d2.runs["live"].unmeasured_s == pytest.approx(4.0, rel=1e-9)


def test_split_gap_refuses_what_it_cannot_measure():
    mark = CounterMark(10.0, 5000.0, "gpu@e1", ("a", "b"))
    ok = split_gap({"a": mark, "b": mark}, {"a", "b"}, 12.0, 5600.0, "gpu@e1")
    assert ok.reason is None and ok.energy_j == {"a": 300.0, "b": 300.0}
    assert ok.seconds == {"a": 1.0, "b": 1.0}
    assert split_gap({"a": mark, "b": mark}, {"a", "b"}, 12.0, 4999.0, "gpu@e1").reason == (
        "counter_backwards"
    )
    assert split_gap({"a": mark, "b": mark}, {"a", "b"}, 12.0, 5600.0, "gpu@e2").reason == (
        "counter_changed"
    )
    assert split_gap({"a": mark, "b": mark}, {"a", "b"}, 12.0, None, None).reason == (
        "counter_changed"
    )
    assert split_gap({"a": mark}, {"a"}, 12.0, 5600.0, "gpu@e1").reason == "holders_differ"
    assert split_gap({"a": mark, "b": mark}, {"a"}, 12.0, 5600.0, "gpu@e1").reason == (
        "holder_ended"
    )
    assert CounterMark.from_meta(mark.to_meta()) == mark
    assert CounterMark.from_meta({"t_s": "x"}) is None and CounterMark.from_meta(None) is None


def test_a_restored_run_holds_its_gpus_before_its_hook_says_hello_again(tmp_path):
    """The gap is not measured (a new counter), but from the new daemon's first reading on the
    restored run holds the GPUs its processes declared: the energy before its hook reconnects
    is the run's, not idle, and nothing but the gap is missing."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[TRACE])
    t0 = clock.now
    d1 = new_daemon(tmp_path, sim, clock)
    pid = os.getpid()
    d1.sample()
    sample_until(d1, clock, t0 + 1.0)
    d1.handle(hello("r", pid, clock.now))
    start = clock.now
    sample_until(d1, clock, t0 + 4.0)
    assert d1.flush()
    mark = stored_mark(d1, "r")
    d1.gpu_sensor.close()
    clock.now = t0 + 6.0
    sim.reset_energy_counter(0)
    sim.detach_process(pid)  # as a new simulator knows no process (NVML in a container neither)
    clock.now = t0 + 7.0
    d2 = new_daemon(tmp_path, sim, clock)
    clock.now += 0.1
    first = clock.now
    d2.sample()
    sample_until(d2, clock, t0 + 10.0)  # the hook has not reconnected yet
    d2.attribute_all()
    exact = sim.exact_energy_j(0, start, mark.t_s) + sim.exact_energy_j(0, first, clock.now)
    assert d2.runs["r"].total_gpu_energy_j == pytest.approx(exact, rel=1e-6)
    assert next(iter(d2.devices.values())).idle_j == pytest.approx(0.0, abs=1e-9)


def test_samples_carry_the_raw_counter_and_its_epoch():
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 2, clock=clock, traces=TRACE, energy_offset_mj=7000)
    sensor = NvmlSensor(sim, clock=clock)
    clock.now += 2.0
    s0, s1 = sensor.sample()
    assert s0.counter_j == pytest.approx(7.0 + sim.exact_energy_j(0, clock.now - 2.0, clock.now))
    assert s0.counter_id.startswith(s0.uuid + "@sim-") and s0.counter_id != s1.counter_id
    again = NvmlSensor(sim, clock=clock).sample()[0]  # another daemon, the same counter
    assert again.counter_id == s0.counter_id
    sim.reset_energy_counter(0)
    clock.now += 0.1
    after = sensor.sample()[0]
    assert after.counter_id != s0.counter_id and after.counter_j < s0.counter_j
    sim.set_energy_counter_supported(1, False)
    clock.now += 1.0
    unsupported = sensor.sample()[1]
    assert unsupported.energy_source == "power_integration"
    assert unsupported.counter_j is None and unsupported.counter_id is None


def test_a_restored_process_keeps_its_rank_until_it_says_hello_again(tmp_path):
    """The ranks a dead daemon flushed come back with the processes: until the hooks reconnect,
    the restored run still knows which process is its lowest rank (it times the run's steps)."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[TRACE])
    t0 = clock.now
    d1 = new_daemon(tmp_path, sim, clock)
    lead, other = os.getpid(), os.getppid()
    d1.sample()
    d1.handle(hello("r", other, clock.now, rank=1, world=2))
    d1.handle(hello("r", lead, clock.now, rank=0, world=2))
    d2, _ = kill_and_restart(
        tmp_path, d1, sim, clock, t0, flush_at=t0 + 2.0, killed_at=t0 + 2.5, restart_at=t0 + 3.0
    )
    procs = d2.runs["r"].processes
    assert (procs[lead].rank, procs[lead].world_size) == (0, 2)
    assert (procs[other].rank, procs[other].local_rank, procs[other].world_size) == (1, 1, 2)
