"""`profiler status` says when a GPU has no per-process activity (issue 16): the sensor asks the
driver once at its start (NotSupported), before the daemon writes its status file, so the line
that `profiler status` (a real CLI process) prints about a real daemon process says so."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from conftest import REPO, profiler_env, run_cli, wait_for

NOT_SUPPORTED = "per-process activity: not supported on gpu 0 (equal split)"

# The real daemon (Service, configured from the environment as `profiler daemon`) on a simulated
# GPU whose driver answers NotSupported to nvmlDeviceGetProcessUtilization. Its file name ends in
# "daemon", so `profiler status` takes it for one (profiler.daemon.lock.looks_like_daemon).
SCRIPT = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
from profiler.config import load_config
from profiler.daemon.service import build_daemon, serve
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML

daemon = build_daemon(load_config(env={{**os.environ, "PROFILER_GPU": "none"}}))
sim = SimulatedNVML("A100-SXM4-40GB", 1)
sim.set_process_utilization_supported(0, False)
daemon.gpu_sensor = NvmlSensor(sim)
daemon.gpu_source = daemon.gpu_sensor.source
serve(daemon)
"""


def test_profiler_status_says_a_gpu_has_no_per_process_activity(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "noactivity_daemon.py"
    script.write_text(SCRIPT)
    env = profiler_env(home)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: (home / "daemon.json").exists() or proc.poll() is not None,
                 timeout=30, what="the daemon's status file")  # fmt: skip
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        out = run_cli(env, "status")
        assert out.returncode == 0, out.stderr
        gpu_line = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("gpu "))
        assert gpu_line.rstrip().endswith(NOT_SUPPORTED), out.stdout
        body = json.loads(run_cli(env, "status", "--json").stdout)
        assert body["gpu"].endswith(NOT_SUPPORTED)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
