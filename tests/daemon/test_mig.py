"""A GPU in MIG mode, end to end in one process (issue 16): three runs on three MIG instances of
one simulated A100-SXM4-80GB (3g.40gb, 2g.20gb, 1g.10gb: 6 of its 7 slices), each holding its
instance, not the GPU: device-seconds and cost by the instance's slices, energy by activity
within the parent (checked against the simulator's exact per-process ground truth), idle power
by slices with the unheld slice's share left unattributed, runs + unattributed = the counter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import DECLARED_STEPS, REPO, profiler_env, run_cli, start_daemon, wait_for
from inprocess import FakeClock, advance, hello, pricing

from profiler.cli.run_records import run_record
from profiler.config import Config
from profiler.daemon.core import Daemon
from profiler.daemon.exporter import render_metrics
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML

SECONDS = 40.0
PROFILES = ("3g.40gb", "2g.20gb", "1g.10gb")
SLICES = (3, 2, 1)
LOADS = (0.6, 0.3, 0.05)
IDLE_W = 60.0  # the simulated A100-SXM4-80GB's idle power


def mig_daemon(tmp_path, pids, *, supported: bool = True, gph: float = 3.6):
    """A daemon on a simulated A100-80GB in MIG mode; run ``r<i>`` on instance ``i`` (declared
    by its hook as a ``MIG-`` device) holds it for ``SECONDS``; returns (daemon, sim, t0, t1)."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-80GB", 1, clock=clock, traces=None, mig=PROFILES)
    sim.set_process_utilization_supported(0, supported)
    sensor = NvmlSensor(sim, clock=clock)
    d = Daemon(Config(home=tmp_path), gpu_sensor=sensor, clock=clock,
               wall=lambda: 1.7e9 + clock.now, pricing=pricing(gph=gph))  # fmt: skip
    d.open_ledger()
    for pid, load in zip(pids, LOADS, strict=True):
        sim.set_process_load(pid, load)
    d.sample()
    advance(d, clock, 1.0)
    t0 = clock.now
    instances = sensor.devices[0].mig_instances
    for i, pid in enumerate(pids):
        d.handle(hello(f"r{i}", pid, t0, devices=(instances[i].uuid,)))
    advance(d, clock, SECONDS)
    d.attribute_all()
    return d, sim, t0, clock.now


def test_three_runs_on_three_mig_instances_get_their_slices_and_exact_energy(tmp_path, three_pids):
    d, sim, t0, t1 = mig_daemon(tmp_path, three_pids)
    dev = next(iter(d.devices.values()))
    instances = dev.mig_instances
    assert [m.profile for m in instances] == list(PROFILES)
    # the simulator lists each process in its instance
    listed = {p.pid: p.gpu_instance_id for p in dev.latest.processes}
    assert listed == {pid: m.gpu_instance_id for pid, m in zip(three_pids, instances, strict=True)}
    runs_j = 0.0
    for i, pid in enumerate(three_pids):
        run = d.runs[f"r{i}"]
        inst = instances[i]
        # device-seconds follow the instance size exactly, keyed by the instance's uuid
        assert set(run.gpu_seconds) == {inst.uuid}
        assert run.total_gpu_seconds == pytest.approx((t1 - t0) * SLICES[i] / 7, rel=1e-9)
        # cost (priced per GPU-hour) follows the device-seconds: 3.6 / h -> 0.001 / s
        assert run.cost.gpu_time_cost == pytest.approx(run.total_gpu_seconds * 0.001, rel=1e-9)
        # energy: its process's exact active share, plus its instance's slices of the idle power
        idle_share = IDLE_W * (t1 - t0) * SLICES[i] / 7
        exact = sim.exact_process_energy_j(0, pid, t0, t1) + idle_share
        assert run.total_gpu_energy_j == pytest.approx(exact, rel=0.02), run.id
        assert run.gpu_idle_energy_j == pytest.approx(idle_share, rel=1e-6)
        assert run.attribution == "activity", run.attribution_s
        runs_j += run.total_gpu_energy_j
    assert d.runs["r0"].total_gpu_energy_j > 5 * d.runs["r2"].total_gpu_energy_j
    # the unheld slice's idle share is the GPU's unattributed energy; nothing is lost
    first, last = dev.curve.first, dev.curve.last
    assert runs_j + dev.idle_j == pytest.approx(last.energy_j - first.energy_j, rel=1e-9)
    assert runs_j + dev.idle_j == pytest.approx(
        sim.exact_energy_j(0, first.t_s, last.t_s), rel=0.001
    )
    assert dev.idle_j >= IDLE_W * (t1 - t0) / 7 * 0.999

    page = render_metrics(d).decode()
    parent = dev.uuid
    for i, inst in enumerate(instances):
        mig = (
            f'gpu="0",uuid="{inst.uuid}",model_name="NVIDIA A100-SXM4-80GB",'
            f'hostname="{d.hostname}",parent_uuid="{parent}",mig_profile="{PROFILES[i]}",'
            f'gpu_instance_id="{inst.gpu_instance_id}"'
        )
        assert (
            f'profiler_gpu_mig_instance_info{{{mig},slices="{SLICES[i]}",gpu_slices="7"}} 1' in page
        )
        assert f'profiler_run_gpu_seconds_total{{run="r{i}",{mig}}}' in page
        assert f'profiler_run_energy_joules_total{{run="r{i}",{mig}}}' in page
    # the parent's own series are unchanged
    assert f'profiler_gpu_energy_joules_total{{gpu="0",uuid="{parent}",' in page
    promtool = shutil.which("promtool")
    if promtool is not None:  # the MIG series are valid exposition (checked where installed)
        check = subprocess.run(
            [promtool, "check", "metrics"], input=page, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr

    d.flush()
    shown = run_record(d.ledger.run("r0"))
    assert shown["mig_instances"] == [{
        "gpu": 0, "parent_uuid": parent, "uuid": instances[0].uuid, "mig_profile": "3g.40gb",
        "gpu_instance_id": instances[0].gpu_instance_id, "slices": 3, "gpu_slices": 7,
    }]  # fmt: skip
    assert shown["gpu_seconds"] == pytest.approx((t1 - t0) * 3 / 7, rel=1e-9)
    assert shown["attribution"] == "activity"


def test_a_mig_gpu_without_per_process_activity_splits_by_instance_size_and_says_so(
    tmp_path, three_pids
):
    """Real drivers may answer NotSupported for per-process utilization in MIG mode: the active
    energy then goes by the held instances' slices (basis "slices"), and nothing is lost."""
    d, sim, t0, t1 = mig_daemon(tmp_path, three_pids, supported=False)
    dev = next(iter(d.devices.values()))
    first, last = dev.curve.first, dev.curve.last
    runs = [d.runs[f"r{i}"] for i in range(3)]
    for run, slices in zip(runs, SLICES, strict=True):
        assert run.attribution == "slices", run.attribution_s
        assert run.total_gpu_seconds == pytest.approx((t1 - t0) * slices / 7, rel=1e-9)
    # by slices: 3 : 2 : 1, exactly
    assert runs[0].total_gpu_energy_j == pytest.approx(3 * runs[2].total_gpu_energy_j, rel=1e-9)
    assert runs[1].total_gpu_energy_j == pytest.approx(2 * runs[2].total_gpu_energy_j, rel=1e-9)
    runs_j = sum(r.total_gpu_energy_j for r in runs)
    assert runs_j + dev.idle_j == pytest.approx(last.energy_j - first.energy_j, rel=1e-9)
    page = render_metrics(d).decode()
    assert 'profiler_run_attribution_info{run="r1",attribution="slices"} 1' in page
    assert "MIG: 3g.40gb, 2g.20gb, 1g.10gb" in d.describe_gpu()


@pytest.mark.slow
def test_a_real_run_on_a_mig_instance_through_the_cli(tmp_path):
    """The real daemon on ``PROFILER_GPU=simulated:A100-SXM4-80GB:1:mig=...``, a real process
    whose hook declares its MIG device (as ``CUDA_VISIBLE_DEVICES=MIG-...`` gives it): the
    instance on ``/metrics`` and in ``profiler runs --json``, its device-seconds 3/7 of the
    run's time held."""
    spec = "simulated:A100-SXM4-80GB:1:mig=3g.40gb,2g.20gb"
    d = start_daemon(tmp_path / "home", PROFILER_GPU=spec)
    try:
        assert d.status["gpu"].endswith("; gpu 0 MIG: 3g.40gb, 2g.20gb")
        page = d.metrics()
        info = [line for line in page.splitlines() if line.startswith("profiler_gpu_mig_instance")]
        assert len(info) == 2 and 'mig_profile="3g.40gb"' in info[0], info
        mig_uuid = info[0].split('uuid="')[1].split('"')[0]
        assert mig_uuid.startswith("MIG-")
        env = {**d.env, "PROFILER_AUTOSTART": "0", "PYTHONPATH": str(REPO)}
        subprocess.run(
            [sys.executable, str(DECLARED_STEPS), "3", mig_uuid, "on-mig", "on-mig"],
            env=env,
            check=True,
            timeout=60,
        )

        def held() -> list[dict]:  # ended, and its GPU time attributed up to its end
            return [
                r
                for r in d.runs()
                if r["status"] != "running"
                and r["gpu_seconds"]
                and r["gpu_seconds"] >= 0.8 * r["duration_s"] * 3 / 7
            ]

        (run,) = wait_for(held, what="the run ended, attributed and flushed")
        (hold,) = run["mig_instances"]
        assert hold.pop("parent_uuid").startswith("GPU-")
        assert hold == {
            "gpu": 0, "uuid": mig_uuid, "mig_profile": "3g.40gb", "gpu_instance_id": 1,
            "slices": 3, "gpu_slices": 7,
        }  # fmt: skip
        # held from its first sample on the device to its end: at most 3/7 of its duration
        assert run["gpu_seconds"] <= run["duration_s"] * 3 / 7 * (1 + 1e-6)
        assert (
            f'profiler_run_gpu_seconds_total{{run="{run["id"]}",gpu="0",uuid="{mig_uuid}"'
            in d.metrics()
        )
    finally:
        d.stop()


def test_steps_on_mig_instances_get_their_runs_share_of_the_gpu(tmp_path, three_pids):
    """Steps of three runs on three MIG instances of one GPU, back to back over 30 s: each step
    gets its run's share of the parent's energy over the step (the pieces of the MIG split its
    run's energy came from: active part by activity, idle part by instance size), so a run's
    step energies add up to its exact share over the same span; not the whole GPU's energy,
    nor a third of it."""
    sums, sim, t0, t1 = steps_on_mig(tmp_path, three_pids)
    # the unheld slice's idle energy is in no step; the rest of the GPU's energy is
    unheld = IDLE_W * (t1 - t0) / 7
    assert sum(sums) + unheld == pytest.approx(sim.exact_energy_j(0, t0, t1), rel=0.001)
    assert sums[0] > 5 * sums[2]


def test_steps_of_a_run_alone_on_a_mig_instance_get_its_instances_share(tmp_path, three_pids):
    """A run alone on a 3g.40gb instance: its steps get its share (all the active energy, 3/7
    of the idle), as its run energy does; not the whole GPU's energy."""
    sums, sim, t0, t1 = steps_on_mig(tmp_path, three_pids[:1])
    assert sums[0] < sim.exact_energy_j(0, t0, t1) - IDLE_W * (t1 - t0) * 3 / 7


def steps_on_mig(tmp_path, pids):
    """Runs ``r<i>`` on instance ``i`` each end a 0.1 s step per sample for 30 s; checks each
    run's step energies add up to its exact share; returns (their sums, sim, t0, t1)."""
    from profiler.ingest.messages import StepBatch

    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-80GB", 1, clock=clock, traces=None, mig=PROFILES)
    sensor = NvmlSensor(sim, clock=clock)
    d = Daemon(Config(home=tmp_path), gpu_sensor=sensor, clock=clock,
               wall=lambda: 1.7e9 + clock.now, pricing=pricing())  # fmt: skip
    d.open_ledger()
    for pid, load in zip(pids, LOADS, strict=False):
        sim.set_process_load(pid, load)
    d.sample()
    advance(d, clock, 1.0)
    instances = sensor.devices[0].mig_instances
    for i, pid in enumerate(pids):
        d.handle(hello(f"r{i}", pid, clock.now, devices=(instances[i].uuid,)))
    advance(d, clock, 2.0)
    t0 = clock.now
    for k in range(300):  # one 0.1 s step per run per sample, sent as it ends
        start = clock.now
        clock.now += 0.1
        for i, pid in enumerate(pids):
            d.handle(StepBatch(f"r{i}", pid, ((k, start, clock.now, 8, None),), 0))
        d.sample()
    t1 = clock.now
    advance(d, clock, 4.0)  # attribution passes the last step (its activity reading too)
    sums = []
    for i, pid in enumerate(pids):
        run = d.runs[f"r{i}"]
        assert run.steps_with_energy == 300 and not run.pending
        idle_share = IDLE_W * (t1 - t0) * SLICES[i] / 7
        exact = sim.exact_process_energy_j(0, pid, t0, t1) + idle_share
        assert run.step_energy_sum_j == pytest.approx(exact, rel=0.02), run.id
        sums.append(run.step_energy_sum_j)
    return sums, sim, t0, t1


UNDECLARED = """
import sys, time
from hooks.client import Client
from hooks.options import RunOptions
fields = RunOptions(name="undeclared").hello_fields(
    framework="none", framework_version="", hook="test", samples_source="none")
client = Client("undeclared", fields, autostart=False)
time.sleep(float(sys.argv[1]))
client.close("finished")
"""


@pytest.mark.slow
def test_processes_under_a_mig_cuda_visible_devices_hold_that_instance(tmp_path):
    """No hook declares a device: a process that ``profiler run`` starts, and a hooked process
    whose hook knows no device, both under ``CUDA_VISIBLE_DEVICES=MIG-<uuid>``, hold that
    instance of the simulated MIG GPU (its uuids are deterministic), not the whole GPU."""
    spec = "simulated:A100-SXM4-80GB:1:mig=3g.40gb,2g.20gb"
    d = start_daemon(tmp_path / "home", PROFILER_GPU=spec)
    mig = [f"MIG-5137a7ed-0000-4000-8000-{slot:012x}" for slot in (0, 1)]
    try:
        env = {**d.env, "PROFILER_AUTOSTART": "0", "PYTHONPATH": str(REPO)}
        run = subprocess.Popen(
            [sys.executable, "-m", "profiler", "run", "--name", "plain", "--",
             sys.executable, "-c", "import time; time.sleep(3)"],
            env={**env, "CUDA_VISIBLE_DEVICES": mig[0]},
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-c", UNDECLARED, "3"],
            env={**env, "CUDA_VISIBLE_DEVICES": f"{mig[1]}"}, check=True, timeout=60,
        )  # fmt: skip
        assert run.wait(timeout=60) == 0

        def held() -> list[dict]:
            return [r for r in d.runs() if r["status"] != "running" and r["mig_instances"]]

        done = wait_for(lambda: len(held()) == 2 and held(), what="both runs held an instance")
        by_name = {r["name"]: r for r in done}
        assert [h["uuid"] for h in by_name["plain"]["mig_instances"]] == [mig[0]]
        assert [h["uuid"] for h in by_name["undeclared"]["mig_instances"]] == [mig[1]]
        for r, slices in ((by_name["plain"], 3), (by_name["undeclared"], 2)):
            assert r["gpu_seconds"] <= r["duration_s"] * slices / 7 * (1 + 1e-6), r
    finally:
        d.stop()


@pytest.mark.slow
def test_the_demo_on_a_simulated_mig_gpu_trains_on_its_instance(tmp_path):
    """``profiler demo --gpu simulated:A100-SXM4-80GB:1:mig=3g.40gb``: its training runs on the
    instance (as ``CUDA_VISIBLE_DEVICES=MIG-...`` would put it), so its GPU time is 3/7 of the
    time it held the GPU, and its run names the instance."""
    pytest.importorskip("torch")
    env = profiler_env(tmp_path / "home")
    spec = "simulated:A100-SXM4-80GB:1:mig=3g.40gb"
    try:
        out = run_cli(env, "demo", "--seconds", "3", "--gpu", spec, timeout=120)
        assert out.returncode == 0, out.stderr
        (run,) = json.loads(run_cli(env, "runs", "--json").stdout)
        (hold,) = run["mig_instances"]
        assert hold["uuid"] == "MIG-5137a7ed-0000-4000-8000-000000000000"
        assert hold["mig_profile"] == "3g.40gb"
        assert 0 < run["gpu_seconds"] <= run["duration_s"] * 3 / 7 * (1 + 1e-6)
    finally:
        run_cli(env, "stop")
