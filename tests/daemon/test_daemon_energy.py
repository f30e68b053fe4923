"""The daemon's attribution, end to end in one process: hook messages plus a scripted simulated
GPU sampled at 10 Hz, checked against the simulator's exact integral."""

from __future__ import annotations

import os
import random

import pytest
from inprocess import hello, make_daemon

from profiler.ingest.messages import Bye, StepBatch, StepExtras


def step_trace(n: int, seed: int):
    """1 s idle, then n back-to-back steps of 200-600 ms each at its own power, then idle."""
    rng = random.Random(seed)
    phases, steps, t = [(1.0, 55.0)], [], 1.0
    for _ in range(n):
        duration = rng.uniform(0.2, 0.6)
        phases.append((duration, rng.uniform(200.0, 400.0)))
        steps.append((t, t + duration))
        t += duration
    phases.append((5.0, 55.0))
    return phases, steps


def test_run_energy_within_half_percent_and_steps_within_two_percent(tmp_path):
    phases, steps = step_trace(80, seed=11)
    d, sim, clock = make_daemon(tmp_path, [phases])
    t0 = clock.now  # the simulator's trace starts here
    pid = os.getpid()
    captured: list[float] = []
    rng = random.Random(5)
    sent = 0
    d.sample()
    d.handle(hello("acc", pid, t0 + steps[0][0]))
    d.runs["acc"].step_joules.observe = captured.append  # record each step's energy
    while clock.now < t0 + steps[-1][1] + 2.0:
        clock.now += 0.1 * (1 + rng.uniform(-0.2, 0.2))  # 10 Hz with jitter
        d.sample()
        done = [s for s in steps[sent:] if t0 + s[1] <= clock.now]
        if done:  # the hook sends batches of finished steps
            rows = tuple((sent + i + 1, t0 + a, t0 + b, 32, None) for i, (a, b) in enumerate(done))
            d.handle(StepBatch("acc", pid, rows, 0))
            sent += len(done)
        if sent == len(steps) and d.runs["acc"].processes[pid].said_bye is False:
            d.handle(Bye("acc", pid, "finished", t0 + steps[-1][1]))
    run = d.runs["acc"]
    assert run.status == "finished" and run.steps == 80 and run.samples == 80 * 32
    exact = sim.exact_energy_j(0, t0 + steps[0][0], t0 + steps[-1][1])
    assert run.total_gpu_energy_j == pytest.approx(exact, rel=0.005)
    assert run.total_gpu_seconds == pytest.approx(steps[-1][1] - steps[0][0], rel=1e-6)
    assert len(captured) == 80
    errors = [
        abs(j - sim.exact_energy_j(0, t0 + a, t0 + b)) / sim.exact_energy_j(0, t0 + a, t0 + b)
        for j, (a, b) in zip(captured, steps, strict=True)
    ]
    assert max(errors) < 0.02, f"worst step error {max(errors):.2%}"
    # idle energy before and after the run is kept apart, and nothing is lost or doubled
    d.attribute_all()
    dev = next(iter(d.devices.values()))
    measured = dev.curve.last.energy_j - dev.curve.first.energy_j
    assert dev.idle_j + run.total_gpu_energy_j == pytest.approx(measured, rel=1e-9)
    # the ledger holds the same totals
    row = d.ledger.run("acc")
    assert row["gpu_energy_j"] == pytest.approx(run.total_gpu_energy_j)
    assert row["steps"] == 80 and row["status"] == "finished" and row["simulated"] == 1


def test_two_runs_on_one_device_split_it_and_never_double_count(tmp_path):
    d, sim, clock = make_daemon(tmp_path, [[(100.0, 300.0)]])
    t0 = clock.now
    pid = os.getpid()
    d.sample()
    d.handle(hello("a", pid, t0 + 1.0))
    d.handle(hello("b", os.getppid(), t0 + 3.0))
    for _ in range(60):  # 6 s
        clock.now += 0.1
        d.sample()
    d.attribute_all()  # attribution runs half a second behind; bring it to the last sample
    a, b = d.runs["a"], d.runs["b"]
    span = clock.now - t0
    assert a.total_gpu_energy_j == pytest.approx(300 * 2 + 300 * (span - 3) / 2, rel=1e-6)
    assert b.total_gpu_energy_j == pytest.approx(300 * (span - 3) / 2, rel=1e-6)
    assert a.total_gpu_seconds + b.total_gpu_seconds == pytest.approx(span - 1.0, rel=1e-6)
    dev = next(iter(d.devices.values()))
    assert dev.idle_j == pytest.approx(300 * 1.0, rel=1e-6)


def test_ranks_of_one_run_count_steps_per_rank_and_each_device_once(tmp_path):
    """Three ranks of one job: ranks 0 and 1 share GPU 0, rank 2 has GPU 1. The run's steps are
    the job's steps, samples add up, step timing comes from rank 0, and each device's energy is
    counted once."""
    d, sim, clock = make_daemon(tmp_path, [[(100.0, 250.0)], [(100.0, 150.0)]], count=2)
    t0 = clock.now
    pids = [os.getpid(), os.getppid(), 1]
    d.sample()
    for rank, (pid, dev) in enumerate(zip(pids, ("0", "0", "1"), strict=True)):
        d.handle(hello("job", pid, t0 + 1.0, devices=(dev,), rank=rank, world=3))
    n = 0
    while clock.now < t0 + 6.0:
        clock.now += 0.1
        d.sample()
        n += 1
        for rank, pid in enumerate(pids):  # every rank finishes step n now
            extras = StepExtras(loss=2.0 - n / 100) if rank == 0 else None
            row = (n, clock.now - 0.1, clock.now - 0.001 * rank, 32, extras)
            d.handle(StepBatch("job", pid, (row,), 0))
    for pid in pids:
        d.handle(Bye("job", pid, "finished", clock.now))
    d.attribute_all()
    run = d.runs["job"]
    assert run.steps == n and run.rank_steps == {0: n, 1: n, 2: n}
    assert run.samples == 3 * n * 32 and run.timed_steps == n
    assert run.step_seconds.n == n and run.last_loss == pytest.approx(2.0 - n / 100)
    assert sum(r.steps for r in d.persist.rollups.values()) == n
    end = clock.now
    exact = sim.exact_energy_j(0, t0 + 1.0, end) + sim.exact_energy_j(1, t0 + 1.0, end)
    assert run.total_gpu_energy_j == pytest.approx(exact, rel=1e-6)
    assert run.gpu_seconds == pytest.approx({u: end - t0 - 1.0 for u in d.devices}, rel=1e-6)


def test_nonfinite_losses_are_counted_from_the_first_one(tmp_path):
    d, sim, clock = make_daemon(tmp_path, [[(100.0, 250.0)]])
    pid = os.getpid()
    d.handle(hello("nan", pid, clock.now))
    rows = tuple(
        (i, clock.now + i, clock.now + i + 1, 8, StepExtras(nonfinite=i >= 4) if i >= 2 else None)
        for i in range(1, 8)
    )
    d.handle(StepBatch("nan", pid, rows, 0))
    run = d.runs["nan"]
    assert run.nonfinite_loss_steps == 4 and run.first_nonfinite_step == 4


def test_power_integration_path_when_the_counter_is_unsupported(tmp_path):
    phases = [(1.0, 100.0)] + [(0.5, 200.0 + 10 * i) for i in range(20)] + [(5.0, 100.0)]
    d, sim, clock = make_daemon(tmp_path, [phases])
    sim.set_energy_counter_supported(0, False)
    t0 = clock.now
    d.sample()
    d.handle(hello("poll", os.getpid(), t0 + 1.0))
    while clock.now < t0 + 12.0:
        clock.now += 0.1
        d.sample()
    d.attribute_all()
    dev = next(iter(d.devices.values()))
    assert dev.latest.energy_source == "power_integration"
    exact = sim.exact_energy_j(0, t0 + 1.0, clock.now)
    assert d.runs["poll"].total_gpu_energy_j == pytest.approx(exact, rel=0.02)
