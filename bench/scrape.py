"""Scrape: ``/metrics`` latency with 200 live runs on a node with 8 GPUs.

A real daemon subprocess (8 simulated A100s on a scripted load, :mod:`bench.sim_daemon`) and a
feeder process that opens 200 runs, each declaring all 8 GPUs (the worst case: 1,600 run x GPU
series per per-device family), and keeps every run stepping (5 steps every 0.5 s each, 2,000
step events/s in all) while ``/metrics`` is fetched 100 times (or for 45 s), 0.1 s apart, each
timed from request to the last byte of the body. Figure: median and p95 latency. Target <= 20 ms.

Run: ``.venv/bin/python -m bench.scrape [--smoke] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO,
    Figure,
    bench_main,
    median,
    progress,
    quantile,
    sample_values,
    scrape,
    wait_for,
)
from bench.simgpu import start_sim_daemon, training_loop  # noqa: E402

TARGET_MS = 20.0
MAX_SECONDS = 45.0  # stop fetching after this long (slow scrapes), once 5 are timed
RUNS = 200
GPUS = 8


def feeder(home: Path, runs: int, gpus: int, seconds: float) -> int:
    """Open ``runs`` runs on every GPU and keep them stepping for ``seconds`` (blocking sends:
    this is a load generator, not a hook)."""
    from hooks import wire
    from hooks.options import RunOptions

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(wire.socket_path(home))
    pid = os.getpid()
    ids = [f"scrape-{i:03d}" for i in range(runs)]
    fields = RunOptions(name="scrape", project="bench", batch_size=32).hello_fields(
        framework="bench",
        framework_version="",
        hook="bench.scrape",
        samples_source="argument",
        ranks=(0, 0, 1),
        devices=[str(g) for g in range(gpus)],
    )
    now = time.monotonic()
    for run in ids:
        sock.sendto(
            wire.encode(wire.hello(run, pid, **fields, mono=now, wall=time.time(), since=now)), path
        )
    step = 0
    last = now
    end = now + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        t = time.monotonic()
        rows = [
            [step + k + 1, last + (t - last) * k / 5, last + (t - last) * (k + 1) / 5, 32]
            for k in range(5)
        ]
        for run in ids:
            sock.sendto(wire.encode(wire.steps(run, pid, rows)), path)
        step += 5
        last = t
    return 0


def measure(smoke: bool = False) -> dict[str, Any]:
    n, runs = (5, 20) if smoke else (100, RUNS)
    home = Path(tempfile.mkdtemp(prefix="profiler-bench-scrape-"))
    d = start_sim_daemon(home, training_loop(), time.monotonic(), gpus=GPUS, repeat=True)
    feed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.scrape",
            "feeder",
            "--home",
            str(home),
            "--runs",
            str(runs),
            "--gpus",
            str(GPUS),
            "--seconds",
            str(60 + MAX_SECONDS),
        ],
        env=d.env,
        cwd=REPO,
    )
    progress(f"scrape: {runs} live runs x {GPUS} GPUs, {n} GETs of /metrics")
    try:

        def ready() -> bool:
            text = d.metrics(30)
            energy = len(sample_values(text, "profiler_run_energy_joules_total"))
            return len(sample_values(text, "profiler_run_info")) >= runs and energy >= runs * GPUS

        ok = wait_for(ready, timeout_s=30, interval_s=0.5)
        latencies, size, series = [], 0, 0
        give_up = time.monotonic() + MAX_SECONDS
        while len(latencies) < n and (len(latencies) < 5 or time.monotonic() < give_up):
            seconds, text = scrape(d.metrics_url, 30)
            latencies.append(seconds)
            size = len(text)
            series = sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))
            time.sleep(0.1)
    finally:
        feed.kill()
        feed.wait(10)
        d.stop()
    return {
        "runs": runs,
        "gpus": GPUS,
        "gets": len(latencies),
        "all_series_present": bool(ok),
        "median_ms": median(latencies) * 1e3,
        "p95_ms": quantile(latencies, 0.95) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "body_bytes": size,
        "series": series,
    }


def figures(result: dict[str, Any]) -> list[Figure]:
    p95, med = result["p95_ms"], result["median_ms"]
    return [
        Figure(
            "scrape_ms",
            f"/metrics, {result['runs']} live runs x {result['gpus']} GPUs, p95",
            p95,
            "ms",
            f"{p95:.1f} ms (median {med:.1f})",
            f"<= {TARGET_MS:g} ms",
            p95 <= TARGET_MS,
            note=f"{result['series']:,} series, {result['body_bytes'] / 1e6:.1f} MB per scrape; "
            f"max {result['max_ms']:.0f} ms over {result['gets']} GETs",
            extra=result,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["feeder"]:
        p = argparse.ArgumentParser()
        p.add_argument("--home", type=Path, required=True)
        p.add_argument("--runs", type=int, default=RUNS)
        p.add_argument("--gpus", type=int, default=GPUS)
        p.add_argument("--seconds", type=float, default=60.0)
        a = p.parse_args(args[1:])
        return feeder(a.home, a.runs, a.gpus, a.seconds)
    return bench_main(__doc__ or "", measure, figures, args)


if __name__ == "__main__":
    sys.exit(main())
