"""Time the monthly report on a month of 5,000 runs (1,000,000 minute rollups).

The ledger is built in a temporary directory with the real :class:`profiler.ledger.store.Ledger`
(one
write per 200 runs, 200 minute rollups per run), then ``build_report`` + ``render`` is timed for
each format, with every grouping (project, user, framework, host, GPU model) and a budget.
Figure: the slowest format. Target <= 5 s.

Run: ``.venv/bin/python bench/report_bench.py [--smoke] [--runs N] [--out FILE]``.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/report_bench.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, bench_main, progress  # noqa: E402
from profiler.ledger.store import Ledger, Rollup  # noqa: E402
from profiler.report.model import GROUP_KEYS  # noqa: E402
from profiler.report.monthly import build_report  # noqa: E402
from profiler.report.render import FORMATS, render  # noqa: E402

TARGET_S = 5.0
MINUTES_PER_RUN = 200  # 5,000 runs x 200 minutes = 1M rollups
RUNS = 5000
RUNS_SMOKE = 50


def seed(ledger: Ledger, runs: int, rng: random.Random) -> int:
    """Write ``runs`` finished runs of November 2026 with their minute rollups; returns the
    number of rollups written."""
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp()
    month_minutes = 30 * 24 * 60
    written = 0
    batch_runs: list[dict[str, Any]] = []
    batch_devices: list[tuple[str, str, str, float, float]] = []
    batch_rollups: list[Rollup] = []
    for i in range(runs):
        first = start + 60 * rng.randrange(month_minutes - MINUTES_PER_RUN)
        rid = f"run-{i:05d}"
        batch_runs.append(
            {
                "id": rid,
                "name": f"model-{i % 40}",
                "project": f"project-{i % 12}",
                "user": f"user-{i % 30}",
                "framework": ("pytorch", "keras-tensorflow")[i % 2],
                "host": f"node-{i % 16}",
                "status": "finished",
                "started_at": first,
                "simulated": False,
                "currency": "USD",
                "meta": {},
            }
        )
        batch_devices.append((rid, f"GPU-{i % 64}", ("A100", "H100", "L4")[i % 3], 1.0, 1.0))
        for m in range(MINUTES_PER_RUN):
            batch_rollups.append(
                Rollup(
                    rid,
                    int(first + 60 * m),
                    gpu_energy_j=18000.0,
                    cpu_energy_j=1200.0,
                    gpu_seconds=60.0,
                    steps=120,
                    samples=7680,
                    cost_gpu_time=0.0457,
                    cost_energy=0.0,
                    co2_g=2.1,
                    waste_cost=0.0,
                )
            )
        written += MINUTES_PER_RUN
        if len(batch_runs) == 200 or i == runs - 1:
            ledger.write(batch_runs, batch_devices, batch_rollups, [])
            batch_runs, batch_devices, batch_rollups = [], [], []
    return written


def measure(smoke: bool = False, runs: int | None = None) -> dict[str, Any]:
    runs = runs or (RUNS_SMOKE if smoke else RUNS)
    path = Path(tempfile.mkdtemp(prefix="profiler-report-bench-")) / "ledger.sqlite"
    ledger = Ledger(path)
    progress(f"report: seeding a ledger of {runs:,} runs x {MINUTES_PER_RUN} minute rollups")
    t0 = time.perf_counter()
    rollups = seed(ledger, runs, random.Random(1))
    seeded_s = time.perf_counter() - t0
    formats: dict[str, dict[str, float]] = {}
    for fmt in FORMATS:
        t0 = time.perf_counter()
        report = build_report(ledger, "2026-11", list(GROUP_KEYS), budget=10_000.0)
        text = render(report, fmt)
        formats[fmt] = {"seconds": time.perf_counter() - t0, "kb": len(text) / 1e3}
        progress(f"  report {fmt}: {formats[fmt]['seconds']:.2f} s")
    ledger.close()
    return {
        "runs": runs,
        "rollups": rollups,
        "ledger_mb": path.stat().st_size / 1e6,
        "seeded_s": seeded_s,
        "formats": formats,
    }


def figures(result: dict[str, Any]) -> list[Figure]:
    worst_fmt, worst = max(result["formats"].items(), key=lambda kv: kv[1]["seconds"])
    each = ", ".join(f"{k} {v['seconds']:.2f}" for k, v in result["formats"].items())
    return [
        Figure(
            "report_s",
            f"monthly report, {result['runs']:,} runs ({result['rollups']:,} rollups)",
            worst["seconds"],
            "s",
            f"{worst['seconds']:.2f} s ({worst_fmt})",
            f"<= {TARGET_S:g} s",
            worst["seconds"] <= TARGET_S,
            note=f"per format (s): {each}",
            extra=result,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--runs" in args:  # the old interface: a ledger of N runs
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i : i + 2]
        return bench_main(__doc__ or "", lambda smoke: measure(smoke, runs), figures, args)
    return bench_main(__doc__ or "", measure, figures, args)


if __name__ == "__main__":
    sys.exit(main())
