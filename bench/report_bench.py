"""Time the monthly report on a month of 5,000 runs (about 1M minute rollups).

Run: ``.venv/bin/python bench/report_bench.py`` (``--runs N`` to change the size). It builds the
ledger in a temporary directory with the real :class:`profiler.ledger.Ledger` (one write per 200
runs), then times ``build_report`` + rendering for each format, with every grouping. Target: under
5 s per format. Exit status 1 when a format misses it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

from profiler.ledger import Ledger, Rollup
from profiler.report import FORMATS, GROUP_KEYS, build_report, render

TARGET_S = 5.0
MINUTES_PER_RUN = 200  # 5,000 runs x 200 minutes = 1M rollups


def seed(ledger: Ledger, runs: int, rng: random.Random) -> int:
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp()
    month_minutes = 30 * 24 * 60
    written = 0
    batch_runs, batch_devices, batch_rollups = [], [], []
    for i in range(runs):
        first = start + 60 * rng.randrange(month_minutes - MINUTES_PER_RUN)
        rid = f"run-{i:05d}"
        batch_runs.append({
            "id": rid, "name": f"model-{i % 40}", "project": f"project-{i % 12}",
            "user": f"user-{i % 30}", "framework": ("pytorch", "keras-tensorflow")[i % 2],
            "host": f"node-{i % 16}", "status": "finished", "started_at": first,
            "simulated": False, "currency": "USD", "meta": {},
        })  # fmt: skip
        batch_devices.append((rid, f"GPU-{i % 64}", ("A100", "H100", "L4")[i % 3], 1.0, 1.0))
        for m in range(MINUTES_PER_RUN):
            batch_rollups.append(Rollup(
                rid, int(first + 60 * m), gpu_energy_j=18000.0, cpu_energy_j=1200.0,
                gpu_seconds=60.0, steps=120, samples=7680, cost_gpu_time=0.0457,
                cost_energy=0.0, co2_g=2.1, waste_cost=0.0,
            ))  # fmt: skip
        written += MINUTES_PER_RUN
        if len(batch_runs) == 200 or i == runs - 1:
            ledger.write(batch_runs, batch_devices, batch_rollups, [])
            batch_runs, batch_devices, batch_rollups = [], [], []
            print(f"  seeded {i + 1}/{runs} runs", file=sys.stderr, flush=True)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="profiler-report-bench-")) / "ledger.sqlite"
    ledger = Ledger(path)
    t0 = time.perf_counter()
    rollups = seed(ledger, args.runs, random.Random(1))
    size_mb, took = path.stat().st_size / 1e6, time.perf_counter() - t0
    print(f"ledger: {args.runs:,} runs, {rollups:,} minute rollups, {size_mb:.0f} MB, "
          f"seeded in {took:.1f} s")  # fmt: skip
    ok = True
    for fmt in FORMATS:
        t0 = time.perf_counter()
        report = build_report(ledger, "2026-11", list(GROUP_KEYS), budget=10_000.0)
        text = render(report, fmt)
        seconds = time.perf_counter() - t0
        ok &= seconds < TARGET_S
        print(f"  {fmt:<5} {seconds:6.2f} s  ({len(text) / 1e3:,.0f} kB)  "
              f"{'ok' if seconds < TARGET_S else 'MISSED'} (target < {TARGET_S:g} s)")  # fmt: skip
    ledger.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
