"""The benchmarks run and produce numbers (``bench/run_all.py --smoke``), and a short version of
issue 7's load: 64 sender processes at 1,000 steps/s each against one real daemon, where every
step of every rank must be recorded or counted as dropped by its hook, and the per-run totals in
the ledger must match what the processes sent. No timing is asserted anywhere."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The headline figure of each benchmark.
HEADLINES = {
    "overhead": "overhead_pytorch_added_us",
    "ingest": "ingest_events_per_s",
    "accuracy": "energy_run_error_counter",
    "footprint": "footprint_cpu",
    "scrape": "scrape_ms",
    "report": "report_s",
    "attribution": "attribution_error_shared_gpu",
}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")}


@pytest.mark.slow
def test_smoke_run_gives_every_figure_as_a_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/run_all.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    payload = json.loads(out.read_text())
    assert payload["failed"] == {}
    for bench, key in HEADLINES.items():
        figures = payload["benchmarks"][bench]["figures"]
        assert key in {f["key"] for f in figures}, f"{bench} gave no {key}"
        for f in figures:
            value = f["value"]
            assert isinstance(value, (int, float)) and math.isfinite(value), f
            assert f["ours"] and f["target"], f
    assert "| figure" in proc.stdout and "| met" in proc.stdout  # the one table


@pytest.mark.slow
def test_64_ranks_every_step_is_recorded_or_counted(tmp_path: Path) -> None:
    """64 processes (8 runs x 8 ranks), 1,000 steps/s each for 5 s, through the hooks' real
    client; totals come back through ``profiler runs --json``."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "load", "--procs", "64", "--rate", "1000",
         "--seconds", "5"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout)
    assert r["failed_senders"] == 0 and r["sender_errors"] == 0
    assert r["sent"] == 64 * 5000
    # no silent loss: what a hook did not count as dropped reached its run
    assert r["uncounted"] == 0, r["mismatches"]
    assert r["recorded"] + r["dropped_by_hooks"] == r["sent"]
    # per rank and per run, the ledger matches what the processes sent
    assert r["exact"], r["mismatches"]
    # the stated bound: at most 1% lost (none is, on an idle machine), and all of it counted
    assert r["dropped_by_hooks"] <= 0.01 * r["sent"], r["dropped_by_hooks"]
    # /metrics answered every scrape (every 0.25 s) during the load; how fast is a benchmark
    assert r["scrapes"] >= 10 and r["scrape_errors"] == 0
