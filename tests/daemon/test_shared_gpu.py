"""A shared GPU, end to end in one process (issue 16): two runs on one simulated GPU in load mode,
one busy and one mostly idle, each given its measured share of the energy (active energy by its
process's activity, idle energy shared equally), checked against the simulator's exact
per-process ground truth; and the equal split, labelled, where the GPU gives no per-process
activity."""

from __future__ import annotations

import pytest
from inprocess import advance, hello, make_daemon

from profiler.cli.run_records import run_record
from profiler.daemon.exporter import render_metrics

SECONDS = 40.0


def share_gpu(tmp_path, pids: tuple[int, int], supported: bool = True):
    """A daemon on one load-mode simulated GPU; a busy run (load 0.9) and a mostly idle one
    (0.05) hold it for ``SECONDS``; returns (daemon, simulator, when they began, ended)."""
    d, sim, clock = make_daemon(tmp_path, [None])
    sim.set_process_utilization_supported(0, supported)
    busy, idle = pids
    sim.set_process_load(busy, 0.9)
    sim.set_process_load(idle, 0.05)
    d.sample()  # the daemon knows the device: hellos attach their processes to it
    advance(d, clock, 1.0)
    t0 = clock.now
    d.handle(hello("busy", busy, t0))
    d.handle(hello("idle", idle, t0))
    advance(d, clock, SECONDS)
    d.attribute_all()
    return d, sim, t0, clock.now


def test_a_busy_and_an_idle_run_get_their_exact_shares_of_a_shared_gpu(tmp_path, two_pids):
    d, sim, t0, t1 = share_gpu(tmp_path, two_pids)
    dev = next(iter(d.devices.values()))
    busy, idle = d.runs["busy"], d.runs["idle"]
    idle_half = sim.exact_idle_energy_j(0, t0, t1) / 2
    for run, pid in ((busy, two_pids[0]), (idle, two_pids[1])):
        exact = sim.exact_process_energy_j(0, pid, t0, t1) + idle_half
        assert run.total_gpu_energy_j == pytest.approx(exact, rel=0.02), run.id
        assert run.attribution == "activity", run.attribution_s
        assert run.gpu_idle_energy_j == pytest.approx(idle_half, rel=0.02)
        assert run.total_gpu_seconds == pytest.approx((t1 - t0) / 2, rel=0.01)  # still equal
    assert busy.total_gpu_energy_j > 3 * idle.total_gpu_energy_j
    # runs + the device's unattributed idle energy = its counter, and = the simulator's truth
    first, last = dev.curve.first, dev.curve.last
    runs_j = busy.total_gpu_energy_j + idle.total_gpu_energy_j
    assert runs_j + dev.idle_j == pytest.approx(last.energy_j - first.energy_j, rel=1e-9)
    assert runs_j + dev.idle_j == pytest.approx(
        sim.exact_energy_j(0, first.t_s, last.t_s), rel=0.001
    )
    # the basis and the idle part are shown: /metrics and `profiler runs --json`
    page = render_metrics(d).decode()
    assert 'profiler_run_attribution_info{run="busy",attribution="activity"} 1' in page
    assert 'profiler_run_gpu_idle_energy_joules_total{run="idle"}' in page
    d.flush()
    shown = run_record(d.ledger.run("busy"))
    assert shown["attribution"] == "activity"
    assert shown["gpu_idle_energy_j"] == pytest.approx(idle_half, rel=0.02)
    assert sum(shown["attribution_s"].values()) == pytest.approx(shown["gpu_seconds"])


def test_a_gpu_without_per_process_activity_splits_equally_says_so_and_loses_nothing(
    tmp_path, two_pids
):
    d, sim, t0, t1 = share_gpu(tmp_path, two_pids, supported=False)
    dev = next(iter(d.devices.values()))
    busy, idle = d.runs["busy"], d.runs["idle"]
    assert busy.attribution == idle.attribution == "equal"
    assert busy.total_gpu_energy_j == pytest.approx(idle.total_gpu_energy_j, rel=1e-9)
    runs_j = busy.total_gpu_energy_j + idle.total_gpu_energy_j
    measured = dev.curve.last.energy_j - dev.curve.first.energy_j
    assert runs_j + dev.idle_j == pytest.approx(measured, rel=1e-9)
    page = render_metrics(d).decode()
    assert 'profiler_run_attribution_info{run="idle",attribution="equal"} 1' in page
    # a missing capability, not a sensor error (the shipped "sensor errors" alert stays quiet);
    # `profiler status` says it instead
    assert not [k for k in d.health if k.startswith("sensor_error:")]
    assert "profiler_sensor_errors_total{" not in page
    assert d.describe_gpu().endswith("; per-process activity: not supported on gpu 0 (equal split)")


def test_a_busy_run_that_pauses_keeps_the_activity_basis(tmp_path, two_pids):
    """While nobody is busy NVML has no new sample (NotFound): the sensor reads that as "nobody
    busy" ({}), not "not read", so the readings go on through a 10 s pause and the runs' split
    stays measured ("activity"), with the idle energy shared and nothing lost."""
    d, sim, clock = make_daemon(tmp_path, [None])
    busy, idle = two_pids
    sim.set_process_load(busy, 0.9)
    sim.set_process_load(idle, 0.0)  # holds the GPU, never busy: NVML never lists it
    d.sample()
    advance(d, clock, 1.0)
    t0 = clock.now
    d.handle(hello("busy", busy, t0))
    d.handle(hello("idle", idle, t0))
    advance(d, clock, 10.0)
    sim.set_process_load(busy, 0.0)  # the pause: every process idle
    advance(d, clock, 10.0)
    sim.set_process_load(busy, 0.9)
    advance(d, clock, 10.0)
    d.attribute_all()
    t1 = clock.now
    dev = next(iter(d.devices.values()))
    assert dev.activity_source == "simulated"
    assert any(not r.by_pid for r in dev.activity)  # the pause was read, as nobody busy
    idle_half = sim.exact_idle_energy_j(0, t0, t1) / 2
    for run_id, pid in (("busy", busy), ("idle", idle)):
        run = d.runs[run_id]
        assert run.attribution == "activity", run.attribution_s
        assert run.attribution_s["activity"] == pytest.approx(run.total_gpu_seconds)
        exact = sim.exact_process_energy_j(0, pid, t0, t1) + idle_half
        assert run.total_gpu_energy_j == pytest.approx(exact, rel=0.02), run_id
    assert sim.exact_process_energy_j(0, idle, t0, t1) == 0.0
    runs_j = d.runs["busy"].total_gpu_energy_j + d.runs["idle"].total_gpu_energy_j
    measured = dev.curve.last.energy_j - dev.curve.first.energy_j
    assert runs_j + dev.idle_j == pytest.approx(measured, rel=1e-9)
    page = render_metrics(d).decode()
    assert 'profiler_run_attribution_info{run="busy",attribution="activity"} 1' in page


def test_a_shared_gpus_step_energy_follows_the_same_split_as_the_runs_energy(tmp_path, two_pids):
    """Steps of a busy and a mostly idle run on one shared GPU, back to back over 30 s: each
    step gets its run's share of the device's energy over the step (the active part by activity,
    the idle part shared equally; the pieces of the split the run's energy came from), so the
    sum of a run's step energies is its share over the same span, checked against the
    simulator's exact per-process truth; not the equal split (half each)."""
    from profiler.ingest.messages import StepBatch

    d, sim, clock = make_daemon(tmp_path, [None])
    busy, idle = two_pids
    sim.set_process_load(busy, 0.9)
    sim.set_process_load(idle, 0.05)
    d.sample()
    advance(d, clock, 1.0)
    d.handle(hello("busy", busy, clock.now))
    d.handle(hello("idle", idle, clock.now))
    advance(d, clock, 2.0)
    t0 = clock.now
    for k in range(300):  # one 0.1 s step per run per sample, sent as it ends
        start = clock.now
        clock.now += 0.1
        for run_id, pid in (("busy", busy), ("idle", idle)):
            d.handle(StepBatch(run_id, pid, ((k, start, clock.now, 8, None),), 0))
        d.sample()
    t1 = clock.now
    advance(d, clock, 4.0)  # attribution passes the last step (its activity reading too)
    idle_half = sim.exact_idle_energy_j(0, t0, t1) / 2
    sums = {}
    for run_id, pid in (("busy", busy), ("idle", idle)):
        run = d.runs[run_id]
        assert run.steps_with_energy == 300 and not run.pending
        exact = sim.exact_process_energy_j(0, pid, t0, t1) + idle_half
        sums[run_id] = run.step_energy_sum_j
        assert run.step_energy_sum_j == pytest.approx(exact, rel=0.02), run_id
    whole = sim.exact_energy_j(0, t0, t1)
    assert sums["busy"] + sums["idle"] == pytest.approx(whole, rel=0.001)  # nothing lost
    assert sums["busy"] > 5 * sums["idle"]
