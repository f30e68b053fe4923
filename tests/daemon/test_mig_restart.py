"""A daemon restart on a GPU in MIG mode (review of issue 16): the energy the parent's counter
measured across the gap is not the run's to take as a whole GPU. A run on a 1g.10gb instance
holds 1/7 of the GPU; crediting it the gap "in equal shares" of the parent (as on a GPU without
MIG) would charge it 7x the GPU-seconds (and cost) for that span and give it the other
instances' energy. In process, one simulated A100-80GB (its counter goes on across daemons)."""

from __future__ import annotations

import os

import pytest
from inprocess import FakeClock, hello
from test_restart_energy import finish, kill_and_restart, new_daemon, sample_until

from profiler.sensors.simulated import SimulatedNVML


def test_a_restart_on_a_mig_gpu_never_charges_a_run_the_whole_gpu_for_the_gap(tmp_path):
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-80GB", 1, clock=clock, traces=None, mig=("3g.40gb", "1g.10gb"))
    pid = os.getpid()
    sim.set_process_load(pid, 0.5)
    d1 = new_daemon(tmp_path, sim, clock)
    d1.sample()
    sample_until(d1, clock, clock.now + 1.0)
    small = next(i for i in d1.gpu_sensor.devices[0].mig_instances if i.profile == "1g.10gb")
    d1.handle(hello("r", pid, clock.now, devices=(small.uuid,)))
    t = clock.now
    d2, _ = kill_and_restart(
        tmp_path, d1, sim, clock, t, flush_at=t + 10.0, killed_at=t + 12.0, restart_at=t + 17.0
    )
    finish(d2, clock, "r", pid, t + 25.0)
    run = d2.runs["r"]
    parent = next(iter(d2.devices))
    held_s = run.end_mono - t  # from its hello (before the restart) to its end
    assert parent not in run.gpu_seconds, run.gpu_seconds  # never keyed as the whole GPU
    assert set(run.gpu_seconds) == {small.uuid}
    # at most the instance's 1/7 of the time held (the gap may stay unmeasured: less)
    assert run.total_gpu_seconds <= held_s / 7 + 1e-6
    assert run.total_gpu_seconds == pytest.approx((held_s - 5.0 - 2.0) / 7, abs=0.2)
