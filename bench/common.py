"""What the benchmarks share: a daemon subprocess on a private home, scraping, statistics, the
result rows of the summary table, and progress lines.

Times are seconds unless a name says otherwise (``_ms``, ``_us``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
_T0 = time.monotonic()


def progress(text: str) -> None:
    """One progress line on stderr, with seconds since the benchmarks started."""
    print(f"[{time.monotonic() - _T0:6.1f} s] {text}", file=sys.stderr, flush=True)


# ---- result rows ---------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the summary table.

    ``value`` is our figure as a number in ``unit`` (NaN when it could not be measured);
    ``ours`` / ``peer`` are the texts shown; ``met`` is None where no target applies.
    """

    key: str
    label: str
    value: float
    unit: str
    ours: str
    target: str = "-"
    met: bool | None = None
    peer: str = "-"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return clean(asdict(self))


# ---- statistics ----------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def pct(x: float, digits: int = 2) -> str:
    """A ratio as a percentage text (``0.0123`` -> ``1.23%``); ``n/a`` for NaN."""
    return "n/a" if not math.isfinite(x) else f"{x * 100:.{digits}f}%"


# ---- a daemon on a private home ------------------------------------------------------------------


def profiler_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a daemon, CLI or hook on ``home``: no inherited ``PROFILER_*``, a free
    metrics port, the simulated GPU, no autostart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")}
    env.update(
        PROFILER_HOME=str(home),
        PROFILER_METRICS_PORT="0",
        PROFILER_GPU="simulated:A100-SXM4-40GB:1",
        PROFILER_AUTOSTART="0",
        PYTHONUNBUFFERED="1",
    )
    pythonpath = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env.update(extra)
    return env


@dataclass
class DaemonProc:
    """A daemon subprocess and where it serves."""

    home: Path
    env: dict[str, str]
    proc: subprocess.Popen
    status: dict[str, Any]
    spawned_at: float  # monotonic seconds at spawn

    @property
    def metrics_url(self) -> str:
        return self.status["metrics_url"]

    def metrics(self, timeout_s: float = 10.0) -> str:
        return scrape(self.metrics_url, timeout_s)[1]

    def runs(self) -> list[dict[str, Any]]:
        """``profiler runs --json`` for this home."""
        out = subprocess.run(
            [sys.executable, "-m", "profiler", "runs", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"profiler runs --json failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self) -> str:
        try:
            return (self.home / "bench-daemon.log").read_text()[-2000:]
        except OSError:
            return ""


def start_daemon(
    home: Path, *, argv: Sequence[str] | None = None, timeout_s: float = 60.0, **env_extra: str
) -> DaemonProc:
    """Start ``python -m profiler daemon`` (or ``argv``) on ``home``; return once its status file
    names its pid. Raises RuntimeError with the log's tail if it does not start."""
    home.mkdir(parents=True, exist_ok=True)
    env = profiler_env(home, **env_extra)
    log = open(home / "bench-daemon.log", "ab")  # noqa: SIM115 - lives as long as the daemon
    spawned = time.monotonic()
    proc = subprocess.Popen(
        list(argv) if argv else [sys.executable, "-m", "profiler", "daemon"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    log.close()
    d = DaemonProc(home, env, proc, {}, spawned)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited at start:\n{d.log_tail()}")
        try:
            status = json.loads((home / "daemon.json").read_text())
            if status.get("pid") == proc.pid:
                d.status = status
                return d
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    d.stop()
    raise RuntimeError(f"the daemon did not start in {timeout_s:g} s:\n{d.log_tail()}")


def scrape(url: str, timeout_s: float = 10.0) -> tuple[float, str]:
    """GET ``url``: (seconds until the whole body was read, body text)."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        body = r.read()
    return time.perf_counter() - t0, body.decode()


def sample_values(text: str, name: str) -> list[tuple[str, float]]:
    """Every series of metric ``name`` in exposition text: (label text, value)."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            out.append((labels, float(value)))
        elif line.startswith(name + " "):
            out.append(("", float(line.rsplit(" ", 1)[1])))
    return out


def wait_for(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.1) -> Any:
    """Poll ``predicate`` until truthy (returned) or ``timeout_s`` passed (returns the last
    falsy value)."""
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = predicate()
    return value


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (not its children)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def rss_bytes(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


# ---- one benchmark as a command --------------------------------------------------------------


def bench_main(
    doc: str,
    measure: Callable[[bool], dict[str, Any]],
    figures: Callable[[dict[str, Any]], list[Figure]],
    argv: Sequence[str] | None = None,
) -> int:
    """The command line every benchmark module shares: ``[--smoke] [--out FILE]``. Runs
    ``measure``, prints the figures, and writes ``{"result": ..., "figures": [...]}`` as JSON
    to ``--out`` when given."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = measure(args.smoke)
    figs = figures(result)
    for f in figs:
        met = "" if f.met is None else ("  met" if f.met else "  MISSED")
        print(f"{f.label:<58} {f.ours:>22}  target {f.target}{met}")
        if f.peer != "-":
            print(f"{'':<58} peer: {f.peer}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"result": result, "figures": [f.to_json() for f in figs]}
        args.out.write_text(dumps(payload))
    return 0


def clean(value: Any) -> Any:
    """``value`` made strict-JSON-safe: NaN and infinities become None, paths and sets
    become strings and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(value: Any) -> str:
    """Strict JSON (no NaN) of ``value``, indented."""
    return json.dumps(clean(value), indent=1, allow_nan=False) + "\n"
