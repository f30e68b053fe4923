"""Run every benchmark and print one table: figure | ours | peer | target | met.

The benchmarks (see bench/README.md): hook overhead (:mod:`bench.overhead`), ingest
(:mod:`bench.ingest`), energy accuracy (:mod:`bench.accuracy`), daemon footprint
(:mod:`bench.footprint`), ``/metrics`` scrape (:mod:`bench.scrape`), the monthly report
(:mod:`bench.report_bench`) and attribution on a shared GPU (:mod:`bench.attribution`). Each
runs in its own process (so one benchmark's imports and threads do not weigh on another's
figures), one after the other; ``--smoke`` runs each tiny and all at
once (in two waves), for CI: the figures are then numbers, not measurements.

Writes ``bench/results/bench-<date>.json`` (``--out`` to change; a smoke run writes to a
temporary directory): every figure, every benchmark's raw result, the machine and its load
average before and after.

Run: ``make bench`` or ``.venv/bin/python bench/run_all.py [--smoke] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/run_all.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, RESULTS, dumps, profiler_env, progress  # noqa: E402

BENCHMARKS = {
    "overhead": "bench.overhead",
    "ingest": "bench.ingest",
    "accuracy": "bench.accuracy",
    "footprint": "bench.footprint",
    "scrape": "bench.scrape",
    "report": "bench.report_bench",
    "attribution": "bench.attribution",
}
# The accuracy benchmark schedules its processes against one clock: it goes first, with only
# the light report benchmark beside it; then the rest together.
SMOKE_WAVES = (
    ("accuracy", "report", "attribution"),
    ("overhead", "ingest", "footprint", "scrape"),
)
TIMEOUT_S = {"overhead": 420, "ingest": 420, "accuracy": 240, "footprint": 240, "scrape": 240,
             "report": 180, "attribution": 120}  # fmt: skip


class _Child:
    """One benchmark process; its stderr is echoed line by line (progress) and kept."""

    def __init__(self, name: str, smoke: bool, out: Path) -> None:
        self.name, self.out = name, out
        self.started = time.monotonic()
        argv = [sys.executable, "-m", BENCHMARKS[name], "--out", str(out)]
        if smoke:
            argv.append("--smoke")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=profiler_env(out.parent / f"{name}-home"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._echo, daemon=True)
        self._reader.start()

    def _echo(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("["):  # a progress line
                print(f"  {self.name}: {line}", file=sys.stderr, flush=True)

    def finish(self) -> dict[str, Any]:
        """Wait for the benchmark; its figures, or a failure with the reason."""
        limit = TIMEOUT_S[self.name]
        try:
            self.proc.wait(timeout=max(1.0, self.started + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.lines.append(f"timed out after {limit} s")
        self._reader.join(10)
        seconds = time.monotonic() - self.started
        if self.proc.returncode == 0 and self.out.exists():
            progress(f"{self.name}: done in {seconds:.0f} s")
            return {"seconds": seconds, **json.loads(self.out.read_text())}
        tail = "\n".join(ln for ln in self.lines if not ln.startswith("["))[-1500:]
        progress(f"{self.name}: FAILED after {seconds:.0f} s (exit {self.proc.returncode})")
        return {"seconds": seconds, "failed": tail or f"exit {self.proc.returncode}"}


def run(names: list[str], smoke: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="profiler-bench-all-"))
    results: dict[str, Any] = {}
    if smoke:  # concurrently, in two waves: CI wants numbers, not measurements
        for wave in SMOKE_WAVES:
            todo = [name for name in wave if name in names]
            progress(f"starting {', '.join(todo)} (smoke, at once)")
            children = [_Child(name, True, tmp / f"{name}.json") for name in todo]
            results.update({c.name: c.finish() for c in children})
        return results
    for name in names:
        progress(f"{name}: starting")
        results[name] = _Child(name, False, tmp / f"{name}.json").finish()
    return results


def _met(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def table(figures: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (notes below it, one per figure that has one)."""
    rows = [("figure", "ours", "peer", "target", "met")]
    rows += [(f["label"], f["ours"], f["peer"], f["target"], _met(f["met"])) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows[1:]]
    notes = [f"- {f['label']}: {f['note']}" for f in figures if f.get("note")]
    return "\n".join(out + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every benchmark tiny, at once")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    results = run(args.only, args.smoke)
    took = time.monotonic() - t0
    figures = [f for name in args.only for f in results[name].get("figures", [])]
    failed = {name: r["failed"] for name, r in results.items() if "failed" in r}
    date = time.strftime("%Y-%m-%d")
    payload = {
        "date": date,
        "command": "python bench/run_all.py" + (" --smoke" if args.smoke else ""),
        "smoke": args.smoke,
        "seconds": took,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "figures": figures,
        "failed": failed,
        "benchmarks": results,
    }
    if args.out is not None:
        out = args.out
    elif args.smoke:  # numbers, not measurements: not for bench/results/
        out = Path(tempfile.mkdtemp(prefix="profiler-bench-smoke-")) / f"bench-{date}-smoke.json"
    else:
        out = RESULTS / f"bench-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(payload))
    print(table(figures))
    print(
        f"\n{len(figures)} figures, {sum(f['met'] is False for f in figures)} targets missed; "
        f"{took:.0f} s; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}; "
        f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}"
    )
    for name, reason in failed.items():
        print(f"\n{name} FAILED:\n{reason}")
    if args.smoke:  # the table is numbers, not measurements
        print("(smoke run: tiny sizes, benchmarks side by side; the figures are not measurements)")
    return 1 if failed or any(not _finite(f.get("value")) for f in figures) else 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


if __name__ == "__main__":
    sys.exit(main())
