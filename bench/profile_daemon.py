"""Where the daemon's CPU goes: py-spy on the footprint and scrape benchmarks' set-ups.

- ``footprint``: the real daemon (:mod:`bench.sim_daemon`, 8 scripted simulated GPUs at 10 Hz)
  with 8 live runs streaming 100 steps/s each through the hooks' fast lane (as
  :mod:`bench.footprint`), sampled by ``py-spy record`` for ``--seconds`` while ``psutil`` reads
  the daemon's CPU seconds over the same window.
- ``scrape``: the same daemon with 200 live runs x 8 GPUs (the feeder of :mod:`bench.scrape`),
  ``/metrics`` fetched every 0.1 s while py-spy samples; the stacks under the render function
  say what a render spends its time on.

py-spy samples every thread (cProfile on Python 3.11 sees only the thread that enabled it) and
drops idle ones (sleeping or blocked), so a function's share of samples is its share of the
daemon's CPU. Writes the raw collapsed stacks and a JSON summary (top functions by self and
cumulative samples, per thread) to ``--out-dir``. Needs ``py-spy`` in the venv
(``pip install py-spy``) and ptrace rights over the daemon.

Run: ``.venv/bin/python -m bench.profile_daemon {footprint,scrape} [--seconds 30] [--out-dir D]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, cpu_seconds, progress, sample_values, scrape, wait_for  # noqa: E402
from bench.footprint import GPUS, RUNS, STEPS_PER_S  # noqa: E402
from bench.ingest import collect, go, spawn_sender  # noqa: E402
from bench.simgpu import start_sim_daemon, training_loop  # noqa: E402


@dataclass
class Profile:
    """Collapsed stacks (py-spy ``raw`` with ``--threads --function``): sample counts by stack,
    each stack a tuple of frames from the thread's root to the leaf (the first is the thread)."""

    stacks: Counter[tuple[str, ...]] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Profile:
        p = cls()
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                p.stacks[tuple(stack.split(";"))] += int(count)
        return p

    @property
    def total(self) -> int:
        return sum(self.stacks.values())

    def under(self, frame_prefix: str) -> Profile:
        """The samples whose stack holds a frame starting with ``frame_prefix``, re-rooted there."""
        out = Profile()
        for stack, n in self.stacks.items():
            for i, f in enumerate(stack):
                if f.startswith(frame_prefix):
                    out.stacks[stack[i:]] += n
                    break
        return out

    def self_counts(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            c[stack[-1]] += n
        return c

    def cumulative_counts(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            for f in set(stack[1:] if stack[0].startswith("thread") else stack):
                c[f] += n
        return c

    def threads(self) -> Counter[str]:
        """Samples by thread name (threads of one name, e.g. HTTP request threads, together)."""
        c: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            c[re.sub(r"\(\d+\): ", "", stack[0])] += n
        return c


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py:12)``, relative to the repo when inside."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for root in (str(REPO) + "/", "/lib/python3.11/", "site-packages/"):
        if root in where:
            where = where.split(root, 1)[1]
    return f"{name} ({where})" if where else name


def top(counts: Counter[str], total: int, n: int = 20) -> list[dict[str, Any]]:
    return [
        {"function": _short(f), "samples": k, "share": k / total if total else float("nan")}
        for f, k in counts.most_common(n)
    ]


def summarise(p: Profile, cpu_ratio: float | None) -> dict[str, Any]:
    total = p.total
    return {
        "samples": total,
        "cpu_ratio_of_one_core": cpu_ratio,
        "threads": top(p.threads(), total, 10),
        "self": top(p.self_counts(), total),
        "cumulative": top(p.cumulative_counts(), total),
    }


GIL = False  # --gil: only samples of the thread holding the GIL (Python running)


def _spy(pid: int, seconds: float, out: Path, rate: int) -> subprocess.Popen:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
            str(rate), "--format", "raw", "--threads", "--function", "--nonblocking",
            "--output", str(out), *(["--gil"] if GIL else [])]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """User and system CPU seconds of each thread of ``pid``, by native thread id."""
    import psutil

    return {t.id: (t.user_time, t.system_time) for t in psutil.Process(pid).threads()}


def per_thread(
    before: dict[int, tuple[float, float]],
    after: dict[int, tuple[float, float]],
    seconds: float,
    p: Profile,
) -> list[dict[str, Any]]:
    """Each thread's CPU over the window as a ratio of one core (user, system), named from
    py-spy's thread frames (``thread (TID): NAME``)."""
    names: dict[int, str] = {}
    for stack in p.stacks:
        m = re.match(r"thread \((\d+)\): (.*)$", stack[0])
        if m:
            names[int(m.group(1))] = m.group(2)
    out = []
    for tid, (user, system) in after.items():
        u0, s0 = before.get(tid, (0.0, 0.0))
        out.append({"thread": names.get(tid, f"tid {tid}"), "user": (user - u0) / seconds,
                    "system": (system - s0) / seconds})  # fmt: skip
    return sorted(out, key=lambda t: -(t["user"] + t["system"]))


def profile_footprint(seconds: float, out_dir: Path, rate: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="profiler-profile-footprint-"))
    d = start_sim_daemon(home, training_loop(), time.monotonic(), gpus=GPUS, repeat=True)
    raw = out_dir / f"footprint{'-gil' if GIL else ''}.raw.txt"
    try:
        wait_for(lambda: sample_values(d.metrics(5), "profiler_gpu_power_watts"), 30)
        flag = home / "go"
        senders = [
            spawn_sender(d, f"profile-{i}", i, 1, STEPS_PER_S, seconds + 6.0, flag, "fast")
            for i in range(RUNS)
        ]
        go(senders, flag)
        time.sleep(2.0)
        progress(f"profile: footprint set-up, py-spy for {seconds:g} s")
        threads0 = thread_cpu(d.proc.pid)
        cpu0, t0 = cpu_seconds(d.proc.pid), time.monotonic()
        spy = _spy(d.proc.pid, seconds, raw, rate)
        spy.wait(seconds + 60)
        took = time.monotonic() - t0
        cpu = (cpu_seconds(d.proc.pid) - cpu0) / took
        threads1 = thread_cpu(d.proc.pid)
        collect(senders, 60)
    finally:
        d.stop()
    p = Profile.parse(raw.read_text())
    return {
        "setup": "footprint",
        "seconds": seconds,
        "gil": GIL,
        "thread_cpu": per_thread(threads0, threads1, took, p),
        **summarise(p, cpu),
    }


def profile_scrape(seconds: float, out_dir: Path, rate: int, runs: int = 200) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="profiler-profile-scrape-"))
    d = start_sim_daemon(home, training_loop(), time.monotonic(), gpus=GPUS, repeat=True)
    raw = out_dir / f"scrape{'-gil' if GIL else ''}.raw.txt"
    feed = subprocess.Popen(
        [sys.executable, "-m", "bench.scrape", "feeder", "--home", str(home), "--runs", str(runs),
         "--gpus", str(GPUS), "--seconds", str(seconds + 90)],
        env=d.env, cwd=REPO,
    )  # fmt: skip
    latencies: list[float] = []
    try:

        def ready() -> bool:
            text = d.metrics(30)
            return len(sample_values(text, "profiler_run_info")) >= runs

        wait_for(ready, timeout_s=60, interval_s=0.5)
        progress(f"profile: scrape set-up ({runs} runs x {GPUS} GPUs), py-spy for {seconds:g} s")
        cpu0, t0 = cpu_seconds(d.proc.pid), time.monotonic()
        spy = _spy(d.proc.pid, seconds, raw, rate)
        while time.monotonic() < t0 + seconds:
            latencies.append(scrape(d.metrics_url, 30)[0])
            time.sleep(0.1)
        spy.wait(60)
        cpu = (cpu_seconds(d.proc.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        feed.kill()
        feed.wait(10)
        d.stop()
    p = Profile.parse(raw.read_text())
    render = p.under("render_unless ")  # a scrape's render (metrics_http -> exporter)
    s = sorted(latencies)
    return {
        "setup": "scrape",
        "seconds": seconds,
        "gil": GIL,
        "gets": len(latencies),
        "median_ms": s[len(s) // 2] * 1e3 if s else None,
        "p95_ms": s[int(0.95 * (len(s) - 1))] * 1e3 if s else None,
        **summarise(p, cpu),
        "render": {
            "samples": render.total,
            "share_of_daemon": render.total / p.total if p.total else None,
            "self": top(render.self_counts(), render.total),
            "cumulative": top(render.cumulative_counts(), render.total),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setup", choices=["footprint", "scrape"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--runs", type=int, default=200, help="scrape: live runs")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--out-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="profile-")))
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    global GIL
    GIL = args.gil
    if args.setup == "footprint":
        result = profile_footprint(args.seconds, args.out_dir, args.rate)
    else:
        result = profile_scrape(args.seconds, args.out_dir, args.rate, args.runs)
    (args.out_dir / f"{args.setup}{'-gil' if GIL else ''}.json").write_text(
        json.dumps(result, indent=1) + "\n"
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
