"""``profiler demo``: a real small PyTorch training with the one-line hook, then its summary.

The training process's hook finds no daemon and starts one (the embedded default), which samples
the simulated GPU unless a daemon already runs for this home or ``--gpu`` says otherwise. The
daemon keeps running afterwards (``profiler stop`` stops it), serving ``/metrics``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from typing import Any

from hooks.runid import run_id_from_env
from profiler.cli.errors import CliError
from profiler.cli.run_records import read_runs
from profiler.config import Config
from profiler.daemon.control import daemon_status
from profiler.daemon.lock import home_error

DEFAULT_DEMO_GPU = "simulated:A100-SXM4-40GB:1"
# Priced like one A100 of an AWS p4d.24xlarge unless profiler.toml or PROFILER_PRICING says else.
DEFAULT_DEMO_PRICING = "aws:p4d.24xlarge"
FINISH_TIMEOUT_S = 30.0


TORCH_MISSING = (
    "the demo trains a small PyTorch model, and torch is not installed for {python}: "
    "install it (`pip install torch`, or the CPU-only wheel: `pip install torch "
    "--index-url https://download.pytorch.org/whl/cpu`), then run `profiler demo` again"
)


def torch_installed() -> bool:
    """Whether ``import torch`` can find torch (without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


def run_demo(config: Config, *, seconds: float, gpu: str | None) -> int:
    if not torch_installed():
        raise CliError(TORCH_MISSING.format(python=sys.executable))
    running = daemon_status(config)
    env = dict(os.environ, PROFILER_HOME=str(config.home), PYTHONUNBUFFERED="1")
    if not running:  # the training's hook starts one there: say now if it cannot
        try:
            config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(config.home / "autostart.lock", os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as e:
            raise CliError(home_error(config.home, e)) from None
    if running:
        pid, gpu_text = running.get("pid") or "unknown", running.get("gpu") or "unknown"
        print(f"Using the daemon already running for {config.home} (pid {pid}, GPU: {gpu_text}).")
    else:
        env["PROFILER_GPU"] = gpu or os.environ.get("PROFILER_GPU") or DEFAULT_DEMO_GPU
        if env["PROFILER_GPU"] == "auto" and not gpu:
            env["PROFILER_GPU"] = DEFAULT_DEMO_GPU
        if not config.cost.get("pricing") and not os.environ.get("PROFILER_PRICING"):
            env["PROFILER_PRICING"] = DEFAULT_DEMO_PRICING
        if instance := simulated_mig_instance(env["PROFILER_GPU"]):  # train on it, as a job would
            env["CUDA_VISIBLE_DEVICES"] = instance
    run_id = run_id_from_env("demo-mlp", {})
    env["PROFILER_RUN_ID"] = run_id
    print(f"Training a small MLP on the CPU for {seconds:g} s, profiled by one added line:")
    print('  from hooks.pytorch import track; track(name="demo-mlp", batch_size=64)')
    code = subprocess.call(
        [sys.executable, "-m", "profiler.cli.demo_train", "--seconds", str(seconds)], env=env
    )
    if code != 0:
        raise CliError(f"the demo training exited with status {code}")
    print("Training done; waiting for the daemon to close the run ...", flush=True)
    run = _wait_for_run(config, run_id)
    status = daemon_status(config) or {}
    print()
    print(format_summary(run, status, config))
    return 0


def simulated_mig_instance(spec: str) -> str | None:
    """The ``MIG-`` uuid of the first instance of device 0 of a simulated GPU spec in MIG mode
    (``simulated:A100-SXM4-80GB:1:mig=3g.40gb``; its uuids are deterministic), else None (an
    invalid spec too: the daemon says what is wrong with it)."""
    if not spec.startswith("simulated:") or "mig=" not in spec.lower():
        return None
    from profiler.sensors.simulated_mig import MigLayout, parse_simulated_mig_spec

    try:
        model, _count, profiles = parse_simulated_mig_spec(spec)
    except ValueError:
        return None
    return MigLayout.build(model, 0, profiles).instances[0].uuid if profiles else None


def _wait_for_run(config: Config, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    found = None
    while time.monotonic() < deadline:
        found = next((r for r in read_runs(config) if r["id"] == run_id), None)
        if found and found["status"] != "running":
            return found
        time.sleep(0.25)
    if found is None:
        raise CliError(
            f"run {run_id} never reached the daemon; see {config.log_file} and `profiler status`"
        )
    raise CliError(f"run {run_id} did not end within {FINISH_TIMEOUT_S:g} s; see {config.log_file}")


def _fmt(value: float | None, spec: str, unit: str = "", unknown: str = "n/a") -> str:
    """``value`` formatted, or ``unknown`` ("n/a") when unknown (None), never 0."""
    return unknown if value is None else f"{value:{spec}}{unit}"


def _cost_lines(run: dict[str, Any]) -> list[str]:
    profiles = [p for p in run["pricing_profiles"] if p != "none"]
    emissions = f"  emissions      {_fmt(run['co2_g'], ',.2f', ' g CO2e', 'unknown')}"
    if not run["currency"] or not profiles:
        return ["  cost           not priced (set [cost] in profiler.toml; see `profiler prices`)",
                emissions]  # fmt: skip
    if run["cost"] is None:  # priced, but no GPU sensor measured the GPU time it bills
        return [
            f"  cost           unknown (no GPU sensor measured the GPU time; energy "
            f"{run['cost_energy']:.4f} {run['currency']}; priced as {', '.join(profiles)})",
            emissions,
        ]
    return [
        f"  cost           {run['cost']:.4f} {run['currency']}"
        f"  (GPU time {run['cost_gpu_time']:.4f} + energy {run['cost_energy']:.4f};"
        f" priced as {', '.join(profiles)})",
        emissions,
    ]


def _gpu_time_line(gpu_seconds: float | None) -> str:
    """GPU-hours held; unknown (not 0) when no GPU sensor could measure them."""
    if gpu_seconds is None:
        return "  GPU time       unknown (no GPU sensor)"
    return f"  GPU time       {gpu_seconds / 3600:.5f} GPU-hours ({gpu_seconds:.1f} GPU-seconds)"


def format_summary(run: dict[str, Any], status: dict[str, Any], config: Config) -> str:
    """The end-of-run summary as text. A figure no source could measure reads "n/a" or
    "unknown", never 0: GPU energy, power and time with no GPU sensor, steps no hook timed,
    CPU energy with no CPU source, money when unpriced, emissions with no grid intensity."""
    mean_ms = None if run["step_time_mean_s"] is None else run["step_time_mean_s"] * 1e3
    p95_ms = None if run["step_time_p95_s"] is None else run["step_time_p95_s"] * 1e3
    framework = f"{run['framework']} {run['framework_version']}".strip() or "no step hook"
    metrics = status.get("metrics_url") or ("unknown" if status else "daemon not running")
    daemon_pid = status.get("pid") or "unknown"
    if run["steps"] is not None:
        step_lines = [
            f"  steps          {run['steps']:,}    samples "
            + ("unknown (no batch size)" if run["samples"] is None else f"{run['samples']:,}")
            + f"    dropped {run['dropped_steps']}",
            f"  step time      mean {_fmt(mean_ms, '.2f', ' ms')}"
            f"    p95 {_fmt(p95_ms, '.2f', ' ms')}",
        ]
    else:  # `profiler run` without hooks: steps are unknown, not zero
        step_lines = ["  steps          not timed (add --hooks, or one line in the script)"]
    lines = [
        f"Run {run['id']}  ({run['name']}, {framework})  {run['status']}",
        *step_lines,
        f"  time           wall {_fmt(run['duration_s'], ',.1f', ' s')}"
        f"    CPU {_fmt(run.get('cpu_seconds'), ',.1f', ' s')} (process tree)",
        f"  GPU energy     {_fmt(run['gpu_energy_j'], ',.1f', ' J')}"
        f"  ({_fmt(run['gpu_energy_kwh'], '.6f', ' kWh')})",
        f"  GPU power      mean {_fmt(run['gpu_power_mean_w'], '.1f', ' W')}"
        f"    peak {_fmt(run['gpu_power_peak_w'], '.1f', ' W')}",
        _gpu_time_line(run["gpu_seconds"]),
        f"  CPU energy     {_fmt(run['cpu_energy_j'], ',.1f', ' J')}"
        f" ({run['cpu_energy_source'] or 'unsupported'}, by CPU-time share)",
        *_cost_lines(run),
        f"  metrics        {metrics}",
        f"  ledger         {config.ledger}",
        f"  daemon         pid {daemon_pid}, still running; `profiler stop` stops it",
    ]
    if run["simulated"]:
        lines.append(
            f"  NOTE: {status.get('gpu') or 'SIMULATED GPU (a power model, not hardware)'}; "
            "the figures above are not hardware measurements."
        )
    elif run["gpu_energy_j"] is None:
        lines.append("  NOTE: no GPU was sampled, so GPU energy is unsupported (not zero).")
    return "\n".join(lines)


def cmd_demo(config: Config, args: argparse.Namespace) -> int:
    """``profiler demo [--seconds S] [--gpu SPEC]``."""
    return run_demo(config, seconds=args.seconds, gpu=args.gpu)
