"""Peers reading the simulated GPU, each in its own process where ``pynvml`` *is* a
:class:`bench.simgpu.PeerNVML` on the same scripted trace, anchored at the same monotonic time.

Subcommands (each prints one JSON line on stdout; energies in joules, times monotonic seconds):

``codecarbon-run``
    ``EmissionsTracker()`` with its defaults (``measure_power_secs=15``, machine tracking, CSV
    output in the working directory, online geo lookup), hardware detected before the window,
    ``start()`` at the run's start and ``stop()`` at its end. CodeCarbon 3.3 reads NVML's energy
    counter at each measurement when the device has one, and otherwise averages the power it
    samples every second (``--no-counter``). Reports its GPU energy and the window it covered.
``zeus-run``
    ``ZeusMonitor`` (GPU 0, no CPU) with one window over the run: energy-counter difference.
``zeus-steps``
    ``ZeusMonitor`` windows around each step of a per-step script, for step lengths in turn;
    ``--counter-update-s U``: the simulated counter advances every U seconds, as a real one
    does, instead of continuously.
``codecarbon-idle``
    ``EmissionsTracker()`` started at once and left running (for the footprint benchmark); prints
    ``started`` when ``start()`` returned (with the GPUs it detected) and runs until killed.

CodeCarbon only looks for NVIDIA GPUs when ``nvidia-smi`` runs, so the parent puts a stand-in
``nvidia-smi`` (exit status 0) on ``PATH``; see :func:`fake_nvidia_smi`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.simgpu import concat, install_as_pynvml, make_sim, step_script  # noqa: E402

KWH_J = 3.6e6
ZEUS_STARTUP_S = 8.0  # generous: importing Zeus takes 2-3 s alone on a busy 2-core machine


def fake_nvidia_smi(directory: Path) -> Path:
    """A directory holding an ``nvidia-smi`` that exits 0 (CodeCarbon's GPU probe); put it first
    on ``PATH`` for a peer process."""
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "nvidia-smi"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return directory


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05) if left > 0.002 else 0)


def _load_phases(path: str) -> list[tuple[float, float]]:
    return [tuple(p) for p in json.loads(Path(path).read_text())]


def codecarbon_run(args: argparse.Namespace) -> dict[str, Any]:
    sim = make_sim(_load_phases(args.trace), args.t0, counter=not args.no_counter)
    install_as_pynvml(sim)
    logging.disable(logging.WARNING)  # CodeCarbon's warnings about CPU and geo lookups
    from codecarbon import EmissionsTracker

    tracker = EmissionsTracker()
    hardware = tracker.get_detected_hardware()  # detection done before the window
    _sleep_until(args.start)
    before_start = time.monotonic()
    tracker.start()
    started = time.monotonic()
    _sleep_until(args.end)
    stopping = time.monotonic()
    tracker.stop()
    stopped = time.monotonic()
    data = tracker.final_emissions_data
    energy = [t for t, kind in sim.reads if kind == "energy" and t >= before_start]
    return {
        "peer": "codecarbon",
        "gpu_energy_j": data.gpu_energy * KWH_J,
        "window": [started, stopping],
        "calls": {"start_s": started - before_start, "stop_s": stopped - stopping},
        "counter_reads": [energy[0], energy[-1]] if energy else None,
        "power_reads": sum(1 for t, k in sim.reads if k == "power" and t >= before_start),
        "gpu_model": hardware.get("gpu_model"),
        "late_s": max(0.0, before_start - args.start),
    }


def zeus_monitor(sim: Any) -> Any:
    install_as_pynvml(sim)
    logging.disable(logging.WARNING)
    from zeus.monitor import ZeusMonitor

    return ZeusMonitor(gpu_indices=[0], cpu_indices=[])


def zeus_run(args: argparse.Namespace) -> dict[str, Any]:
    sim = make_sim(_load_phases(args.trace), args.t0)
    monitor = zeus_monitor(sim)
    _sleep_until(args.start)
    monitor.begin_window("run", sync_execution=False)
    begin = sim.reads[-1][0]
    _sleep_until(args.end)
    m = monitor.end_window("run", sync_execution=False)
    end = sim.reads[-1][0]
    return {"peer": "zeus", "gpu_energy_j": m.gpu_energy[0], "window": [begin, end]}


def zeus_steps(args: argparse.Namespace) -> dict[str, Any]:
    """Per step length: each step's (window energy, exact energy of that window), joules."""
    pairs = zip(args.lengths, args.counts, strict=True)
    scripts = [step_script(length, n, lead_s=0.3, tail_s=0.2) for length, n in pairs]
    phases, offsets = concat(scripts)
    t0 = time.monotonic() + ZEUS_STARTUP_S  # the trace starts once Zeus is imported and set up
    sim = make_sim([phases], t0)
    sim.set_counter_update_s(args.counter_update_s)  # 0: the continuous counter
    monitor = zeus_monitor(sim)
    late = time.monotonic() - t0
    out: dict[str, Any] = {"peer": "zeus", "lengths": {}, "setup_late_s": max(0.0, late)}
    for length, script, offset in zip(args.lengths, scripts, offsets, strict=True):
        pairs = []
        for i, (a, b) in enumerate(script.steps):
            _sleep_until(t0 + offset + a)
            monitor.begin_window(f"s{i}", sync_execution=False)
            begin = sim.reads[-1][0]
            _sleep_until(t0 + offset + b)
            m = monitor.end_window(f"s{i}", sync_execution=False)
            end = sim.reads[-1][0]
            pairs.append((m.gpu_energy[0], sim.exact_energy_j(0, begin, end)))
        out["lengths"][repr(length)] = pairs
    return out


def codecarbon_idle(args: argparse.Namespace) -> None:
    sim = make_sim(_load_phases(args.trace), args.t0, args.gpus, repeat=True)
    install_as_pynvml(sim)
    logging.disable(logging.WARNING)
    # stdout carries only the JSON line: importing CodeCarbon imports ``amdsmi``, which prints
    # to stdout when ``libamd_smi.so`` is missing; anything printed goes to stderr instead.
    with contextlib.redirect_stdout(sys.stderr):
        from codecarbon import EmissionsTracker

        tracker = EmissionsTracker()
        tracker.start()
        started = time.monotonic()
        hardware = tracker.get_detected_hardware()
    line = {"started": started, "gpu_count": hardware.get("gpu_count")}
    print(json.dumps({**line, "gpu_model": hardware.get("gpu_model")}), flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", choices=("codecarbon-run", "zeus-run", "zeus-steps", "codecarbon-idle")
    )
    parser.add_argument("--trace", help="JSON list of [duration_s, watts] phases")
    parser.add_argument("--t0", type=float, default=0.0, help="trace anchor, monotonic s")
    parser.add_argument("--start", type=float, default=0.0, help="window start, monotonic s")
    parser.add_argument("--end", type=float, default=0.0, help="window end, monotonic s")
    parser.add_argument("--no-counter", action="store_true")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--lengths", type=float, nargs="*", default=[])
    parser.add_argument("--counts", type=int, nargs="*", default=[])
    parser.add_argument(
        "--counter-update-s", type=float, default=0.0,
        help="zeus-steps: the simulated counter advances every this many seconds (0: always)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "codecarbon-idle":
        codecarbon_idle(args)
        return 0
    run = {"codecarbon-run": codecarbon_run, "zeus-run": zeus_run, "zeus-steps": zeus_steps}
    result = run[args.command](args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
