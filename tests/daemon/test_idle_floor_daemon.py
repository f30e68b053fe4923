"""Idle power on a GPU whose sensor gives none (real NVML and amdsmi GPUs; issue 16): the daemon
measures the floor, the lowest power seen while the device was truly idle, and splits a shared
GPU's idle part with it as with the model's figure. Run on a simulated GPU built with
``idle_power_known=False``, so the real-hardware path runs against the simulator's exact truth
(with no load it draws exactly its model's idle watts)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from inprocess import FakeClock, advance, hello

from profiler.config import Config
from profiler.daemon.core import Daemon
from profiler.daemon.exporter import render_metrics
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML

MODEL_IDLE_W = 55.0  # the simulated A100-SXM4-40GB's idle watts
SECONDS = 40.0


def hidden_idle_daemon(tmp_path, pids: tuple[int, int]):
    """A daemon on one load-mode simulated A100 that does not give its idle power; a busy
    (load 0.9) and a mostly idle (0.05) process are ready to hold it."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[None], idle_power_known=False)
    d = Daemon(Config(home=tmp_path), gpu_sensor=NvmlSensor(sim, clock=clock), clock=clock,
               wall=lambda: 1.7e9 + clock.now)  # fmt: skip
    d.open_ledger()
    sim.set_process_load(pids[0], 0.9)
    sim.set_process_load(pids[1], 0.05)
    d.sample()  # the daemon knows the device: hellos attach their processes to it
    return d, sim, clock


def share(d, clock, pids: tuple[int, int]) -> tuple[float, float]:
    """The two runs hold the GPU for ``SECONDS``; returns when they began and ended."""
    t0 = clock.now
    d.handle(hello("busy", pids[0], t0))
    d.handle(hello("idle", pids[1], t0))
    advance(d, clock, SECONDS)
    d.attribute_all()
    return t0, clock.now


def test_an_idle_gpu_without_an_idle_figure_measures_its_floor_and_splits_as_with_the_model(
    tmp_path, two_pids
):
    d, sim, clock = hidden_idle_daemon(tmp_path, two_pids)
    dev = next(iter(d.devices.values()))
    assert dev.latest.idle_power_w is None  # the sensor gives none: the real-hardware path
    advance(d, clock, 3.0)  # idle: no process, no run
    assert dev.idle_power_w == pytest.approx(MODEL_IDLE_W, rel=1e-9)
    assert dev.idle_power_source == "measured_floor"
    page = render_metrics(d).decode()
    assert f'source="measured_floor"}} {MODEL_IDLE_W:g}' in page
    assert "profiler_gpu_idle_power_watts{" in page
    promtool = shutil.which("promtool")
    if promtool is not None:  # valid exposition (checked where installed)
        check = subprocess.run(
            [promtool, "check", "metrics"], input=page, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    t0, t1 = share(d, clock, two_pids)
    assert dev.idle_power_w == pytest.approx(MODEL_IDLE_W, rel=1e-9)  # busy: not lowered
    busy, idle = d.runs["busy"], d.runs["idle"]
    idle_half = sim.exact_idle_energy_j(0, t0, t1) / 2
    for run, pid in ((busy, two_pids[0]), (idle, two_pids[1])):
        exact = sim.exact_process_energy_j(0, pid, t0, t1) + idle_half
        assert run.total_gpu_energy_j == pytest.approx(exact, rel=0.02), run.id
        assert run.attribution == "activity", run.attribution_s
        assert run.gpu_idle_energy_j == pytest.approx(idle_half, rel=0.02)
    assert busy.total_gpu_energy_j > 3 * idle.total_gpu_energy_j
    runs_j = busy.total_gpu_energy_j + idle.total_gpu_energy_j
    measured = dev.curve.last.energy_j - dev.curve.first.energy_j
    assert runs_j + dev.idle_j == pytest.approx(measured, rel=1e-9)


def test_before_any_idle_reading_the_idle_power_is_unknown_and_the_split_has_no_idle_part(
    tmp_path, two_pids
):
    d, sim, clock = hidden_idle_daemon(tmp_path, two_pids)
    dev = next(iter(d.devices.values()))
    t0, t1 = share(d, clock, two_pids)  # held from the first sample: never idle
    assert dev.idle_power_w is None and dev.idle_power_source is None  # unknown, never 0
    busy, idle = d.runs["busy"], d.runs["idle"]
    for run in (busy, idle):
        assert run.attribution == "activity", run.attribution_s
        assert run.gpu_idle_energy_j is None
    assert busy.total_gpu_energy_j > 3 * idle.total_gpu_energy_j
    runs_j = busy.total_gpu_energy_j + idle.total_gpu_energy_j
    measured = dev.curve.last.energy_j - dev.curve.first.energy_j
    assert runs_j + dev.idle_j == pytest.approx(measured, rel=1e-9)  # nothing lost
    page = render_metrics(d).decode()
    assert "profiler_gpu_idle_power_watts" not in page
    assert "profiler_run_gpu_idle_energy_joules_total{" not in page


def test_the_simulated_gpus_model_figure_is_labelled_model(tmp_path):
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-40GB", 1, clock=clock, traces=[None])
    d = Daemon(Config(home=tmp_path), gpu_sensor=NvmlSensor(sim, clock=clock), clock=clock,
               wall=lambda: 1.7e9 + clock.now)  # fmt: skip
    d.sample()
    dev = next(iter(d.devices.values()))
    assert (dev.idle_power_w, dev.idle_power_source) == (MODEL_IDLE_W, "model")
    assert f'source="model"}} {MODEL_IDLE_W:g}' in render_metrics(d).decode()
