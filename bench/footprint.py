"""Daemon footprint: CPU (% of one core), resident memory, and time from spawn to first sample,
next to CodeCarbon's tracker doing its default job on the same machine at the same time.

- **Ours**: a real daemon subprocess sampling 8 simulated A100s at 10 Hz (the default
  ``sample_interval_s``) with 8 live runs, each a separate process streaming 100 steps/s through
  the hooks' fast lane. Measured twice: on the scripted simulated GPU (:mod:`bench.sim_daemon`:
  what the daemon itself costs; the headline) and as shipped with ``PROFILER_GPU=simulated``,
  whose load model walks ``/proc`` for every attached process (the simulator's cost included).
  Time to first sample: from ``Popen`` until ``/metrics`` shows a ``profiler_gpu_power_watts``
  series (interpreter start and imports included).
- **CodeCarbon**: ``EmissionsTracker()`` with its defaults (measurements every 15 s, a monitor
  thread every 1 s, CPU by load x TDP, RAM model, CSV output), in its own process reading the
  same 8 simulated GPUs through ``pynvml``; time to first sample is from ``Popen`` until
  ``start()`` returned (it takes its first measurement inside ``start()``). CodeCarbon normally
  lives inside the training process: its RSS here is a process doing nothing else.

CPU is ``psutil`` user+system seconds over a window divided by its wall seconds; RSS is the
largest of several readings. Targets: <= 2 % of one core, <= 60 MB RSS, < 1 s to first sample.
Run: ``.venv/bin/python -m bench.footprint [--smoke] [--out FILE]``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DaemonProc,
    Figure,
    bench_main,
    cpu_seconds,
    profiler_env,
    progress,
    rss_bytes,
    sample_values,
    start_daemon,
)
from bench.ingest import collect, go, spawn_sender  # noqa: E402
from bench.peers import fake_nvidia_smi  # noqa: E402
from bench.simgpu import start_sim_daemon, training_loop  # noqa: E402

TARGET_CPU = 0.02
TARGET_RSS_MB = 60.0
TARGET_FIRST_SAMPLE_S = 1.0
GPUS = 8
RUNS = 8
STEPS_PER_S = 100.0
MB = 1e6


def first_sample_s(d: DaemonProc, timeout_s: float = 30.0) -> float:
    """Seconds from spawn until ``/metrics`` shows GPU power (NaN if it never does)."""
    deadline = d.spawned_at + timeout_s
    while time.monotonic() < deadline:
        try:
            if sample_values(d.metrics(5), "profiler_gpu_power_watts"):
                return time.monotonic() - d.spawned_at
        except OSError:
            pass
        time.sleep(0.01)
    return float("nan")


def _usage(pid: int, window_s: float, readings: int = 6) -> dict[str, float]:
    """CPU ratio of one core and peak RSS of ``pid`` over ``window_s`` seconds from now."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    rss = 0
    for _ in range(readings):
        time.sleep(window_s / readings)
        rss = max(rss, rss_bytes(pid))
    return {"cpu_ratio": (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0), "rss_mb": rss / MB}


def measure_daemon(shipped: bool, window_s: float) -> dict[str, Any]:
    """One daemon with 8 GPUs and 8 live runs; ``shipped``: ``profiler daemon`` with
    ``PROFILER_GPU=simulated`` (load model), else the scripted simulator."""
    home = Path(tempfile.mkdtemp(prefix="profiler-bench-footprint-"))
    if shipped:
        d = start_daemon(home, PROFILER_GPU=f"simulated:A100-SXM4-40GB:{GPUS}")
    else:
        d = start_sim_daemon(home, training_loop(), time.monotonic(), gpus=GPUS, repeat=True)
    try:
        first = first_sample_s(d)
        flag = home / "go"
        senders = [
            spawn_sender(d, f"footprint-{i}", i, 1, STEPS_PER_S, window_s + 3.0, flag, "fast")
            for i in range(RUNS)
        ]
        go(senders, flag)
        time.sleep(min(2.0, window_s / 2))  # the runs are live and the daemon has settled
        usage = _usage(d.proc.pid, window_s)
        collect(senders, 60)
    finally:
        d.stop()
    return {"first_sample_s": first, **usage}


def _json_line(proc: subprocess.Popen, timeout_s: float) -> tuple[dict[str, Any] | None, str]:
    """The first stdout line of ``proc`` that is a JSON object (None if it exits or
    ``timeout_s`` passes first), and the other lines it printed before it."""
    found: dict[str, Any] = {}
    other: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                found.update(json.loads(line))
                return
            other.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return (found or None), " | ".join(filter(None, other))


def _tail(path: Path, chars: int = 300) -> str:
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return " | ".join(text[-chars:].splitlines())


def measure_codecarbon(window_s: float, startup_s: float = 60.0) -> dict[str, Any]:
    """CodeCarbon's idle tracker next to the daemon; on failure NaNs and ``failed`` (the
    reason), never zeros."""
    tmp = Path(tempfile.mkdtemp(prefix="profiler-bench-codecarbon-"))
    (tmp / "trace.json").write_text(json.dumps([list(p) for p in training_loop()]))
    env = profiler_env(tmp)
    env["PATH"] = f"{fake_nvidia_smi(tmp / 'bin')}{os.pathsep}{env.get('PATH', '')}"
    stderr = tmp / "stderr.txt"
    spawned = time.monotonic()
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.peers",
                "codecarbon-idle",
                "--trace",
                str(tmp / "trace.json"),
                "--t0",
                repr(spawned),
                "--gpus",
                str(GPUS),
            ],
            env=env,
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        line, other = _json_line(proc, startup_s)
        if line is None or line.get("gpu_count") != GPUS:
            if line is not None:
                why = f"detected {line.get('gpu_count')} GPUs, not {GPUS}"
            elif proc.poll() is not None:
                why = f"exited {proc.returncode} before start() returned"
            else:
                why = f"start() did not return within {startup_s:g} s"
            detail = "; ".join(filter(None, (other, _tail(stderr))))
            nan = float("nan")
            failed = f"{why}: {detail}" if detail else why
            return {"first_sample_s": nan, "cpu_ratio": nan, "rss_mb": nan, "failed": failed}
        time.sleep(min(2.0, window_s / 2))
        usage = _usage(proc.pid, window_s)
    finally:
        proc.kill()
        proc.wait(10)
    return {"first_sample_s": line["started"] - spawned, **usage, "gpu_model": line["gpu_model"]}


def measure(smoke: bool = False) -> dict[str, Any]:
    window = 1.0 if smoke else 30.0
    progress(f"footprint: daemon (8 GPUs at 10 Hz, 8 live runs) and CodeCarbon, {window:g} s")
    # CodeCarbon alongside the scripted daemon (side by side), then the shipped daemon alone.
    cc: dict[str, Any] = {}

    def peer() -> None:
        try:
            cc.update(measure_codecarbon(window))
        except Exception as e:  # noqa: BLE001 - shown as n/a with the reason, never as zeros
            nan = float("nan")
            failed = f"{type(e).__name__}: {e}"
            cc.update(first_sample_s=nan, cpu_ratio=nan, rss_mb=nan, failed=failed)

    thread = threading.Thread(target=peer)
    thread.start()
    ours = measure_daemon(shipped=False, window_s=window)
    thread.join()
    progress("footprint: the daemon as shipped with PROFILER_GPU=simulated (load model)")
    shipped = measure_daemon(shipped=True, window_s=window)
    return {
        "ours": ours,
        "shipped_simulated": shipped,
        "codecarbon": cc,
        "window_s": window,
        "gpus": GPUS,
        "runs": RUNS,
        "steps_per_s_per_run": STEPS_PER_S,
    }


def _peer(c: dict[str, Any], key: str, fmt: str, unit: str = "") -> str:
    """CodeCarbon's figure as text; ``n/a`` when it failed or was not measured."""
    value = c.get(key, float("nan"))
    if c.get("failed") or not math.isfinite(value):
        return "CodeCarbon n/a"
    return f"CodeCarbon {value:{fmt}}{unit}"


def figures(result: dict[str, Any]) -> list[Figure]:
    o, s, c = result["ours"], result["shipped_simulated"], result["codecarbon"]
    why = c.get("failed") or ("" if math.isfinite(c.get("cpu_ratio", math.nan)) else "not measured")
    cc_note = f"; CodeCarbon n/a: {why}" if why else ""
    return [
        Figure(
            "footprint_cpu",
            "daemon CPU, 8 GPUs at 10 Hz + 8 live runs",
            o["cpu_ratio"],
            "ratio of one core",
            f"{o['cpu_ratio']:.2%}",
            f"<= {TARGET_CPU:.0%}",
            o["cpu_ratio"] <= TARGET_CPU,
            peer=_peer(c, "cpu_ratio", ".2%"),
            note=f"with PROFILER_GPU=simulated (its load model walks /proc): {s['cpu_ratio']:.2%}"
            + cc_note,
            extra=result,
        ),
        Figure(
            "footprint_rss_mb",
            "daemon RSS",
            o["rss_mb"],
            "MB",
            f"{o['rss_mb']:.1f} MB",
            f"<= {TARGET_RSS_MB:g} MB",
            o["rss_mb"] <= TARGET_RSS_MB,
            peer=_peer(c, "rss_mb", ".1f", " MB"),
            note=f"shipped simulated: {s['rss_mb']:.1f} MB{cc_note}",
        ),
        Figure(
            "footprint_first_sample_s",
            "daemon spawn to first GPU sample",
            o["first_sample_s"],
            "s",
            f"{o['first_sample_s']:.2f} s",
            f"< {TARGET_FIRST_SAMPLE_S:g} s",
            o["first_sample_s"] < TARGET_FIRST_SAMPLE_S,
            peer=_peer(c, "first_sample_s", ".2f", " s"),
            note=f"shipped simulated: {s['first_sample_s']:.2f} s; interpreter start and "
            f"imports included{cc_note}",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__ or "", measure, figures, argv)


if __name__ == "__main__":
    sys.exit(main())
