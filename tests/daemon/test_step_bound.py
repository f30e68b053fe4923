"""Each step's energy comes with a bound (profiler.accounting.energy.step_bound_j): on the
counter path the simulator's exact energy of every step lies within it, for steps far shorter
than the 10 Hz sampling interval too; the bound is exported."""

from __future__ import annotations

import os
import random
import re

import pytest
from inprocess import hello, make_daemon

from profiler.accounting.energy import EnergyCurve, step_bound_j
from profiler.daemon.exporter import render_metrics
from profiler.ingest.messages import Bye, StepBatch


def short_steps(length: float, n: int, seed: int):
    """0.5 s idle, then ``n`` back-to-back steps of ``length`` s: 80 % busy at a random
    250-400 W, 20 % gap at 90 W; a stall of three steps' length before one step in 25."""
    rng = random.Random(seed)
    phases, steps, t = [(0.5, 60.0)], [], 0.5
    for i in range(n):
        if i and i % 25 == 0:
            phases.append((3 * length, 70.0))
            t += 3 * length
        phases += [(0.8 * length, rng.uniform(250.0, 400.0)), (0.2 * length, 90.0)]
        steps.append((t, t + length))
        t += length
    phases.append((3.0, 60.0))
    return phases, steps


def run_steps(tmp_path, length: float, n: int):
    """The daemon on the counter path at 10 Hz with jitter; per step (stated joules, bound,
    exact joules), the daemon and the simulator."""
    phases, steps = short_steps(length, n, seed=int(length * 1000))
    d, sim, clock = make_daemon(tmp_path, [phases])
    t0, pid, rng = clock.now, os.getpid(), random.Random(3)
    figures: list[float] = []
    bounds: list[float] = []
    d.sample()
    d.handle(hello("b", pid, t0 + steps[0][0]))
    run = d.runs["b"]
    for hist, seen in ((run.step_joules, figures), (run.step_bound_joules, bounds)):
        observe = hist.observe  # still counted: the exporter reads the histograms
        hist.observe = lambda v, observe=observe, seen=seen: (seen.append(v), observe(v))
    sent = 0
    while clock.now < t0 + steps[-1][1] + 2.0:
        clock.now += 0.1 * (1 + rng.uniform(-0.2, 0.2))
        d.sample()
        done = [s for s in steps[sent:] if t0 + s[1] <= clock.now]
        if done:
            rows = tuple((sent + i + 1, t0 + a, t0 + b, 32, None) for i, (a, b) in enumerate(done))
            d.handle(StepBatch("b", pid, rows, 0))
            sent += len(done)
        if sent == len(steps) and not run.processes[pid].said_bye:
            d.handle(Bye("b", pid, "finished", t0 + steps[-1][1]))
    exact = [sim.exact_energy_j(0, t0 + a, t0 + b) for a, b in steps]
    assert len(figures) == len(bounds) == len(steps)
    return list(zip(figures, bounds, exact, strict=True)), d, sim


@pytest.mark.parametrize("length,n", [(0.005, 400), (0.02, 200), (0.1, 100)])
def test_every_steps_true_energy_lies_within_its_bound(tmp_path, length, n):
    rows, _d, _sim = run_steps(tmp_path, length, n)
    outside = [(f, b, e) for f, b, e in rows if abs(f - e) > b]
    assert not outside, f"{len(outside)} of {len(rows)} steps outside their bound: {outside[:3]}"
    # the bound is honest, not vacuous: the figures do miss by a good part of it, and a step
    # far shorter than the sampling interval gets a bound larger than its own energy
    assert max(abs(f - e) / b for f, b, e in rows) > 0.1
    if length < 0.1:
        assert sorted(b / e for _f, b, e in rows)[len(rows) // 2] > 1.0


def test_bound_is_exported_as_a_histogram(tmp_path):
    rows, d, _sim = run_steps(tmp_path, 0.02, 50)
    text = render_metrics(d).decode()
    assert "# TYPE profiler_step_energy_bound_joules histogram" in text
    count = re.search(r'^profiler_step_energy_bound_joules_count\{run="b"\} (\S+)$', text, re.M)
    total = re.search(r'^profiler_step_energy_bound_joules_sum\{run="b"\} (\S+)$', text, re.M)
    assert count and float(count.group(1)) == 50
    assert total and float(total.group(1)) == pytest.approx(sum(b for _f, b, _e in rows))


def test_bound_brackets_the_sampled_intervals():
    curve = EnergyCurve()
    for t, e, p in ((0.0, 0.0, 100.0), (0.1, 10.0, 100.0), (0.2, 40.0, 300.0), (0.3, 50.0, 100.0)):
        curve.append(t, e, p)
    # a step inside one interval: between 0 and that interval's energy
    assert curve.bracket(0.12, 0.15) == (0.0, 30.0)
    # a step over two sample points: at least what lies between them, at most the outer span
    assert curve.bracket(0.05, 0.25) == pytest.approx((30.0, 50.0))
    figure = curve.energy_between(0.12, 0.15)
    assert step_bound_j(curve, 0.12, 0.15, figure) == pytest.approx(
        max(figure, 30.0 - figure) + 0.002
    )
    assert curve.bracket(0.2, 0.4) is None  # not covered yet


def test_short_steps_are_stated_over_a_window_within_its_bound(tmp_path):
    from profiler.cli.run_records import run_record

    _rows, d, sim = run_steps(tmp_path, 0.02, 1200)  # 24 s of 20 ms steps: two windows of >= 10 s
    run = d.runs["b"]
    w = run.step_window
    assert w is not None and w.steps >= 450 and w.end_mono - w.start_mono >= 10.0
    _phases, steps = short_steps(0.02, 1200, seed=20)
    t0 = run.start_mono - steps[0][0]
    inside = [
        s for s in steps if w.start_mono - 1e-9 <= t0 + s[0] and t0 + s[1] <= w.end_mono + 1e-9
    ]
    assert len(inside) == w.steps
    # the window's energy: from its first step's start to its last step's end, stalls included
    truth = sim.exact_energy_j(0, w.start_mono, w.end_mono)
    assert abs(w.joules - truth) <= w.bound_j
    # one step's bound is larger than its energy; the window's is a few percent of its own
    assert w.bound_j / w.joules < 0.05
    assert w.joules_per_sample == pytest.approx(w.joules_per_step / 32)
    d.flush()
    record = run_record(d.ledger.run("b"))
    window = record["step_energy_window"]
    assert window["steps"] == w.steps
    assert window["joules_per_step"] == pytest.approx(w.joules / w.steps)
    assert window["bound_joules_per_step"] == pytest.approx(w.bound_j / w.steps)
