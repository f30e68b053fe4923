"""AMD GPUs end to end (issue 17): the real daemon service (socket, ``/metrics`` server, main loop
on the real clock) in a thread of the test process, on the simulated amdsmi in load mode read by
the real AmdSmiSensor, so the test reads the simulator's exact ground truth; the training is a
real torch subprocess with one added line. Its run's energy is checked against the exact
integral over the time it held the device (counter path: 0.5%; counter unsupported, power
integration: 2%), its steps exactly, its cost against the catalog's MI300X price, and the
``/metrics`` page against the same training on the simulated NVIDIA GPU: the same series and
label names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUSY_TORCH, REPO, http_text, profiler_env, service_in_thread, wait_for

from profiler.cost.pricing import resolve_pricing
from profiler.daemon.core import Daemon
from profiler.daemon.service import Service
from profiler.sensors.amdsmi import AmdSmiSensor
from profiler.sensors.base import GpuSensor
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML
from profiler.sensors.simulated_amd import SimulatedAmdSmi

pytestmark = pytest.mark.slow

BUSY_S = 5.0
MI300X_GPU_HOUR = 1.85  # USD, the catalog's vultr:MI300X (one GPU), typed in from the entry


def daemon_on(home: Path, sensor: GpuSensor):
    """The real daemon service on ``sensor``, its loop in a thread of this process, priced as
    the catalog's vultr:MI300X; yields (daemon, service)."""
    return service_in_thread(home, sensor, resolve_pricing({"pricing": "vultr:MI300X"}, env={}))


def train(home: Path, run_id: str) -> int:
    """Run the training to its end; the steps it says it made."""
    env = profiler_env(home, PROFILER_AUTOSTART="0", PYTHONPATH=str(REPO))
    argv = [sys.executable, str(BUSY_TORCH), str(BUSY_S), "amd-train", run_id]
    out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(re.search(r"steps=(\d+)", out.stdout).group(1))


def finished_run(d: Daemon, run_id: str):
    def done():
        with d.lock:
            run = d.runs.get(run_id)
            return run if run is not None and run_id in d.lifecycle.finished_at else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


def metrics(service: Service) -> str:
    return http_text(service.metrics_url)


def shape(page: str) -> set[tuple[str, tuple[str, ...]]]:
    """(series name, its label names) of every sample on a /metrics page."""
    out = set()
    for line in page.splitlines():
        m = re.match(r"([a-z_:]+)(?:\{(.*)\})? ", line)
        if m and not line.startswith("#"):
            names = tuple(sorted(re.findall(r'([a-z_]+)="', m.group(2) or "")))
            out.add((m.group(1), names))
    return out


def labels_of(page: str, series: str) -> dict[str, str]:
    [line] = [x for x in page.splitlines() if x.startswith(series + "{")]
    return dict(re.findall(r'([a-z_]+)="([^"]*)"', line))


def check_run(d: Daemon, sim: SimulatedAmdSmi, run_id: str, steps: int, rel: float):
    run = finished_run(d, run_id)
    [uuid] = list(d.devices)
    assert run.steps == steps and run.samples == 8 * steps
    exact = sim.exact_energy_j(0, run.device_since[uuid], run.end_mono)
    assert run.total_gpu_energy_j == pytest.approx(exact, rel=rel)
    assert run.total_gpu_energy_j > 1.2 * 140 * BUSY_S  # above the MI300X's idle: it was busy
    assert run.cost.gpu_time_cost == pytest.approx(
        run.total_gpu_seconds / 3600 * MI300X_GPU_HOUR, rel=1e-6
    )
    return run


def test_torch_training_on_the_simulated_mi300x_counter_path_and_metrics_shape(tmp_path):
    sim = SimulatedAmdSmi("MI300X", 1, traces=[None])
    with daemon_on(tmp_path / "amd", AmdSmiSensor(sim)) as (d, service):
        steps = train(tmp_path / "amd", "amd-counter")
        check_run(d, sim, "amd-counter", steps, rel=0.005)
        assert next(iter(d.devices.values())).latest.energy_source == "counter"
        amd_page = metrics(service)
    nv_sim = SimulatedNVML("A100-SXM4-40GB", 1, traces=[None])
    with daemon_on(tmp_path / "nvidia", NvmlSensor(nv_sim)) as (d, service):
        train(tmp_path / "nvidia", "nv-run")
        finished_run(d, "nv-run")
        nv_page = metrics(service)
    info = labels_of(amd_page, "profiler_gpu_info")
    assert (info["vendor"], info["model_name"], info["source"]) == (
        "amd", "AMD Instinct MI300X", "simulated")  # fmt: skip
    assert labels_of(nv_page, "profiler_gpu_info")["vendor"] == "nvidia"
    # the same series with the same label names; only what a shared NVIDIA GPU adds may differ
    assert shape(amd_page) == shape(nv_page), shape(amd_page) ^ shape(nv_page)


def test_torch_training_on_the_simulated_mi300x_without_an_energy_counter(tmp_path):
    """A VM guest: amdsmi_get_energy_count is NOT_SUPPORTED, so the run's energy comes from
    integrating power (2%), labelled."""
    sim = SimulatedAmdSmi("MI300X", 1, traces=[None])
    sim.set_energy_supported(0, False)
    with daemon_on(tmp_path / "amd", AmdSmiSensor(sim)) as (d, service):
        steps = train(tmp_path / "amd", "amd-power")
        check_run(d, sim, "amd-power", steps, rel=0.02)
        assert next(iter(d.devices.values())).latest.energy_source == "power_integration"
        assert 'energy_source="power_integration"' in metrics(service)
