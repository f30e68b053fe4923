"""A shared GPU end to end with real processes (issue 16): the real daemon service (its socket,
``/metrics`` server and main loop on the real clock) runs in a thread of the test process on a
simulated GPU in load mode, so the test reads the simulator's exact ground truth; the runs are
real subprocesses: a busy CPU-bound torch loop tracked by ``hooks.pytorch.track()`` and a mostly
idle ``profiler run -- python -c 'sleep'``. Each run's energy is checked against the simulator's
exact share of it over the time the run held the device, the basis in ``/metrics`` and in
``profiler runs --json``; then the same without per-process utilization (the equal split,
labelled, nothing lost), and a run the driver does not list whose hook declared the device.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pynvml
import pytest
from conftest import (
    BUSY_TORCH,
    DECLARED_STEPS,
    REPO,
    http_text,
    profiler_env,
    run_cli,
    service_in_thread,
    wait_for,
)

from profiler.daemon.core import Daemon
from profiler.daemon.service import Service
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML

pytestmark = pytest.mark.slow

BUSY_S = 8.0
IDLE_S = 14.0


class NamespacedNVML(SimulatedNVML):
    """The simulated GPU, except that the driver does not see the processes in ``hidden`` (as
    NVML on the host does not list a process by the pid its container gives it): they are left
    out of the process list and of the per-process utilization samples. Their load still
    drives the device's power."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden: set[int] = set()

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list:
        listed = super().nvmlDeviceGetComputeRunningProcesses(handle)
        return [p for p in listed if p.pid not in self.hidden]

    def nvmlDeviceGetProcessUtilization(self, handle: Any, lastSeenTimeStamp: int) -> list:
        return self._shown(super().nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp))

    def nvmlDeviceGetProcessesUtilizationInfo(self, handle: Any, timeStamp: int) -> list:
        return self._shown(super().nvmlDeviceGetProcessesUtilizationInfo(handle, timeStamp))

    def _shown(self, samples: list) -> list:
        shown = [s for s in samples if s.pid not in self.hidden]
        if not shown:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return shown


@dataclass
class InThreadDaemon:
    """The real daemon service on ``sim``, its loop in a thread of this process."""

    daemon: Daemon
    service: Service
    sim: NamespacedNVML
    env: dict[str, str]

    def metrics(self) -> str:
        return http_text(self.service.metrics_url)


@pytest.fixture
def shared_gpu(tmp_path: Path) -> Iterator[InThreadDaemon]:
    home = tmp_path / "home"
    sim = NamespacedNVML("A100-SXM4-40GB", 1, traces=[None])
    with service_in_thread(home, NvmlSensor(sim)) as (d, service):
        env = profiler_env(home, PROFILER_AUTOSTART="0", PYTHONPATH=str(REPO))
        yield InThreadDaemon(d, service, sim, env)


def start_busy(env: dict[str, str], seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(BUSY_TORCH), str(seconds), "busy", "busy"], env=env, cwd=REPO
    )


def start_idle(env: dict[str, str], seconds: float) -> subprocess.Popen:
    code = f"import time; time.sleep({seconds})"
    argv = [sys.executable, "-m", "profiler", "run", "--name", "idle", "--", sys.executable, "-c"]
    return subprocess.Popen([*argv, code], env=env, cwd=REPO)


def has_run(h: InThreadDaemon, name: str) -> bool:
    with h.daemon.lock:
        return any(r.name == name for r in h.daemon.runs.values())


def finished(h: InThreadDaemon, names: set[str]) -> dict[str, object] | None:
    """The daemon's runs named ``names`` once every one has finished (its energy all in)."""
    with h.daemon.lock:
        runs = {r.name: r for r in h.daemon.runs.values() if r.name in names}
        if set(runs) == names and all(
            r.id in h.daemon.lifecycle.finished_at for r in runs.values()
        ):
            return runs
    return None


def spans(runs, uuid: str) -> dict[str, tuple[float, float]]:
    """Per run name: the monotonic span it held the device (first seen there, to its end)."""
    return {name: (r.device_since[uuid], r.end_mono) for name, r in runs.items()}


def exact_shares(sim: SimulatedNVML, runs, uuid: str, *, by_activity: bool) -> dict[str, float]:
    """The simulator's exact share of each run over the spans the runs held the device: in each
    piece between the spans' ends, the idle energy shared equally among the holders plus each
    run's processes' exact active energy (``by_activity``), or the piece's whole energy shared
    equally (the equal split). A run holding the device alone is answerable for all of it: what
    a process drew after its run's end (its ``bye``; the simulator's power follows load one load
    period late) is the energy of the run that holds the device then."""
    held = spans(runs, uuid)
    points = sorted({t for span in held.values() for t in span})
    out = dict.fromkeys(held, 0.0)
    for lo, hi in pairwise(points):
        active = [name for name, (s, e) in held.items() if s <= lo and e >= hi]
        if not active:
            continue
        whole = sim.exact_energy_j(0, lo, hi)
        idle = sim.exact_idle_energy_j(0, lo, hi)
        for name in active:
            if not by_activity or len(active) == 1:
                out[name] += whole / len(active)
                continue
            own = sum(sim.exact_process_energy_j(0, pid, lo, hi) for pid in runs[name].processes)
            out[name] += idle / len(active) + own
    return out


def conserved(h: InThreadDaemon, runs) -> tuple[float, float, float]:
    """(the runs' energy + the device's unattributed energy, the device counter's energy over
    the span attributed so far, the simulator's exact energy there), joules."""
    with h.daemon.lock:
        dev = next(iter(h.daemon.devices.values()))
        t0, upto = dev.curve.first.t_s, dev.attributed_to
        measured = dev.curve.energy_between(t0, upto)
        total = sum(r.total_gpu_energy_j for r in runs.values()) + dev.idle_j
    return total, measured, h.sim.exact_energy_j(0, t0, upto)


def json_runs(h: InThreadDaemon) -> dict[str, dict]:
    out = run_cli(h.env, "runs", "--json")
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout)}


def busy_and_idle(h: InThreadDaemon) -> dict:
    """The idle run and, once it holds the GPU, the busy one, both to their end; the two runs
    (by name) once the daemon has ended them."""
    idle = start_idle(h.env, IDLE_S)
    wait_for(lambda: has_run(h, "idle"), timeout=30, what="the idle run")
    busy = start_busy(h.env, BUSY_S)
    assert busy.wait(timeout=60) == 0 and idle.wait(timeout=60) == 0
    return wait_for(lambda: finished(h, {"busy", "idle"}), timeout=30, what="both runs ended")


def test_a_busy_training_process_and_an_idle_one_get_their_exact_shares(shared_gpu):
    h = shared_gpu
    runs = busy_and_idle(h)
    uuid = next(iter(h.daemon.devices))
    exact = exact_shares(h.sim, runs, uuid, by_activity=True)
    for name, run in runs.items():
        assert run.total_gpu_energy_j == pytest.approx(exact[name], rel=0.02), (name, exact)
        assert run.attribution == "activity", (name, run.attribution_s)
    # the busy run draws several times the idle one's energy per second held (the idle run
    # holds the GPU longer; how busy the busy one gets depends on the CPU it is given)
    held = {name: end - since for name, (since, end) in spans(runs, uuid).items()}
    watts = {name: run.total_gpu_energy_j / held[name] for name, run in runs.items()}
    assert watts["busy"] > 3 * watts["idle"], watts
    total, measured, truth = conserved(h, runs)
    assert total == pytest.approx(measured, rel=1e-9)
    assert total == pytest.approx(truth, rel=0.001)
    page = h.metrics()
    for name in ("busy", "idle"):
        run_id = runs[name].id
        assert f'profiler_run_attribution_info{{run="{run_id}",attribution="activity"}} 1' in page
    shown = json_runs(h)
    assert shown["busy"]["attribution"] == shown["idle"]["attribution"] == "activity"
    assert shown["busy"]["gpu_energy_j"] == pytest.approx(runs["busy"].total_gpu_energy_j)


def test_without_per_process_utilization_the_split_is_equal_labelled_and_nothing_is_lost(
    shared_gpu,
):
    h = shared_gpu
    h.sim.set_process_utilization_supported(0, False)  # read on the sensor's next reading
    runs = busy_and_idle(h)
    uuid = next(iter(h.daemon.devices))
    exact = exact_shares(h.sim, runs, uuid, by_activity=False)
    for name, run in runs.items():
        assert run.total_gpu_energy_j == pytest.approx(exact[name], rel=0.02), (name, exact)
        assert set(run.attribution_s) == {"equal"}, (name, run.attribution_s)
    total, measured, truth = conserved(h, runs)
    assert total == pytest.approx(measured, rel=1e-9)
    assert total == pytest.approx(truth, rel=0.001)
    page = h.metrics()
    assert f'profiler_run_attribution_info{{run="{runs["busy"].id}",attribution="equal"}} 1' in page
    assert json_runs(h)["busy"]["attribution"] == "equal"
    assert "per-process activity: not supported on gpu 0 (equal split)" in h.daemon.describe_gpu()


def test_a_run_the_driver_does_not_list_holds_the_device_its_hook_declared(shared_gpu):
    """A process NVML does not show (another PID namespace, say) whose hook declared GPU 0: its
    run holds the device next to an activity-split run. Its activity is unknown, so where both
    hold the device the split is equal (basis "equal" for both); where the busy run holds it
    alone it gets all of it. Nothing is lost."""
    h = shared_gpu
    declared = subprocess.Popen(
        [sys.executable, str(DECLARED_STEPS), str(IDLE_S), "0", "declared", "declared"],
        env=h.env, cwd=REPO,
    )  # fmt: skip
    h.sim.hidden.add(declared.pid)  # before it says hello: the driver never lists it
    wait_for(lambda: has_run(h, "declared"), timeout=30, what="the declared run")
    busy = start_busy(h.env, BUSY_S)
    assert busy.wait(timeout=60) == 0 and declared.wait(timeout=60) == 0
    runs = wait_for(lambda: finished(h, {"busy", "declared"}), timeout=30, what="both runs ended")
    uuid = next(iter(h.daemon.devices))
    assert uuid in runs["declared"].device_since
    overlap = min(runs["busy"].end_mono, runs["declared"].end_mono) - max(
        runs["busy"].device_since[uuid], runs["declared"].device_since[uuid]
    )
    assert overlap > BUSY_S / 2
    # its activity is unknown: it is split equally throughout, and so is the busy run where
    # both hold the device (its half of the overlap in device-seconds)
    assert runs["declared"].attribution == "equal", runs["declared"].attribution_s
    assert runs["busy"].attribution_s["equal"] == pytest.approx(overlap / 2, rel=0.05)
    exact = exact_shares(h.sim, runs, uuid, by_activity=False)
    for name, run in runs.items():
        assert run.total_gpu_energy_j == pytest.approx(exact[name], rel=0.02), (name, exact)
    total, measured, truth = conserved(h, runs)
    assert total == pytest.approx(measured, rel=1e-9)
    assert total == pytest.approx(truth, rel=0.001)
