"""Ingest: how many step events per second the daemon takes with zero loss, and what a burst of
64 ranks loses.

Two measurements against one real daemon subprocess (``python -m profiler daemon``, 8 simulated
GPUs), each with real sender processes using the hooks' own hot path (``hooks.client.Client``
behind ``hooks.recorder.StepRecorder``, as ``hooks.pytorch`` and ``hooks.keras`` use them):

1. **Ramp** (``ramp``): ``senders`` processes together send step events at increasing total rates
   (25k, 50k, 75k, 100k, 150k, 200k, 400k events/s) for a few seconds each, through the fast
   lane that ``track()`` uses in its steady state (end times appended, handed to the client
   every 0.1 s; the sender appends each 20 ms tick's end times at once, so the senders' own CPU
   stays small).
   A level counts as taken when every event sent was recorded by the daemon (read back from
   ``/metrics``). The figure is the highest such level. Target >= 100k events/s.
2. **Load** (``load``, issues 7 and 8): 64 processes (8 runs x 8 ranks), half on the fast lane
   of ``track()``, half on the row path of the Keras callback and ``StepTimer``
   (``StepRecorder.end`` per step). *Sustained*: 20k steps/s in all (312.5 each) for 20 s, the
   processes starting at random offsets within 0.1 s. *Burst* (issue 7): 1,000 steps/s each for
   60 s, all starting at the same instant, so that their sends coincide as a data-parallel job's
   ranks' do. During the burst ``/metrics`` is scraped every 0.25 s (latency median, p95, max;
   target p95 <= 1 s, none failed). After each load, ``profiler runs --json`` gives each run's
   and rank's step totals, checked against what each process says it generated: every step must
   be recorded or counted as dropped by its hook (``uncounted`` must be 0), and the loss is the
   share not recorded. Targets: no loss at 20k/s sustained; in the burst, all loss counted.

Run: ``.venv/bin/python -m bench.ingest [--smoke] [--out FILE]`` for both, or
``python -m bench.ingest load [--procs N] [--rate R] [--seconds S]`` for one (JSON on stdout).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/ingest.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO,
    DaemonProc,
    Figure,
    bench_main,
    cpu_seconds,
    dumps,
    median,
    pct,
    progress,
    quantile,
    sample_values,
    scrape,
    wait_for,
)
from bench.simgpu import start_sim_daemon, training_loop  # noqa: E402

TARGET_EVENTS_PER_S = 100_000
TARGET_SUSTAINED_PER_S = 20_000
TARGET_RESPONSIVE_MS = 1000.0  # "/metrics stays responsive": p95 within 1 s, none failed
SUSTAINED_S = 20.0
BURST_S = 60.0
RAMP_LEVELS = (25_000, 50_000, 75_000, 100_000, 150_000, 200_000, 400_000)
SAMPLES_PER_STEP = 32
TICK_S = 0.02  # senders wake every 20 ms
DRAIN_S = 0.1  # the fast lane's hand-over interval (hooks.pytorch.FLUSH_INTERVAL_S)


# ---- a sender process --------------------------------------------------------------------------


def sender(args: argparse.Namespace) -> int:
    """One training process: ``rate`` steps/s for ``seconds`` from the monotonic time written in
    the ``go`` file (it prints ``ready`` and waits for that file),
    through the fast lane (``mode=fast``) or one ``StepRecorder.end`` per step
    (``mode=rows``); ``bulk`` appends each tick's end times at once. Prints one JSON line:
    steps generated, dropped and errors as the hook counts them."""
    from hooks.client import Client
    from hooks.options import RunOptions
    from hooks.recorder import StepRecorder

    logging.getLogger("hooks").setLevel(logging.ERROR)  # drops are counted, not printed
    options = RunOptions(name=args.run, project="bench", batch_size=SAMPLES_PER_STEP)
    fields = options.hello_fields(
        framework="bench",
        framework_version="",
        hook=f"bench.{args.mode}",
        samples_source="argument",
        ranks=(args.rank, args.rank % 8, args.world),
        devices=[str(args.rank % 8)],
    )
    client = Client(args.run, fields, home=Path(args.home), autostart=False)
    recorder = StepRecorder(client, batch_size=SAMPLES_PER_STEP)
    print("ready", flush=True)
    go = Path(args.go)
    while not go.exists():
        time.sleep(0.005)
    start_at = float(go.read_text())
    client.ready.wait(max(0.0, start_at - time.monotonic()))  # training does not wait longer
    start = max(start_at + args.offset, time.monotonic())
    total = int(round(args.rate * args.seconds))
    period = 1.0 / args.rate
    n = 0
    due = start + DRAIN_S
    monotonic, sleep = time.monotonic, time.sleep
    ends = recorder.ends
    if args.mode == "rows":
        recorder.begin(now=start)
    cpu0 = _cpu_s()
    while n < total:
        now = monotonic()
        upto = min(total, int((now - start) / period))
        if upto > n:
            if args.mode == "rows":
                for i in range(n + 1, upto + 1):
                    recorder.end(now=start + i * period)
            elif args.bulk:
                ends.extend(array("d", (start + i * period for i in range(n + 1, upto + 1))))
            else:
                for i in range(n + 1, upto + 1):
                    ends.append(start + i * period)
            n = upto
        if args.mode != "rows" and now >= due:  # what hooks.pytorch's fast hook does
            due = now + DRAIN_S
            recorder.drain_ends()
        sleep(TICK_S)
    recorder.finish()
    cpu_s = _cpu_s() - cpu0
    client.close("finished")
    print(
        json.dumps(
            {
                "cpu_s": cpu_s,
                "run": args.run,
                "rank": args.rank,
                "pid": os.getpid(),
                "steps": n,
                "samples": n * SAMPLES_PER_STEP,
                "dropped": client.dropped_total,
                "errors": recorder.errors,
                "mode": args.mode,
            }
        )
    )
    return 0


def _cpu_s() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def spawn_sender(
    d: DaemonProc,
    run: str,
    rank: int,
    world: int,
    rate: float,
    seconds: float,
    go: Path,
    mode: str,
    bulk: bool = False,
    offset_s: float = 0.0,
) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "bench.ingest",
        "sender",
        "--home",
        str(d.home),
        "--run",
        run,
        "--rank",
        str(rank),
        "--world",
        str(world),
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--go",
        str(go),
        "--mode",
        mode,
        "--offset",
        repr(offset_s),
    ]
    if bulk:
        argv.append("--bulk")
    return subprocess.Popen(argv, env=d.env, cwd=REPO, stdout=subprocess.PIPE, text=True)


def go(procs: list[subprocess.Popen], path: Path, delay_s: float = 0.5) -> float:
    """Wait until every sender printed ``ready``, then tell them all to start ``delay_s``
    from now (monotonic seconds, returned)."""
    for p in procs:
        assert p.stdout is not None
        p.stdout.readline()
    start_at = time.monotonic() + delay_s
    tmp = path.with_suffix(".tmp")
    tmp.write_text(repr(start_at))
    tmp.replace(path)
    return start_at


def collect(procs: list[subprocess.Popen], timeout_s: float) -> list[dict[str, Any]]:
    """Each sender's JSON line (a sender that failed gives ``{"failed": rc}``)."""
    out = []
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            stdout, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, _ = p.communicate()
        lines = [ln for ln in (stdout or "").splitlines() if ln.startswith("{")]
        out.append(json.loads(lines[-1]) if lines else {"failed": p.returncode})
    return out


def recorded_steps(d: DaemonProc, runs: set[str]) -> dict[str, float]:
    """``profiler_run_steps_total`` per run, for ``runs``."""
    text = d.metrics(30)
    out = {}
    for labels, value in sample_values(text, "profiler_run_steps_total"):
        run = labels.split('run="', 1)[1].split('"', 1)[0] if 'run="' in labels else ""
        if run in runs:
            out[run] = value
    return out


def settle(d: DaemonProc, runs: set[str], sent: int, timeout_s: float = 30.0) -> float:
    """Steps the daemon recorded for ``runs`` once all ``sent`` arrived, or once nothing more
    arrived for a second."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        now = sum(recorded_steps(d, runs).values())
        if now >= sent or now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(1.0)


# ---- 1. ramp -----------------------------------------------------------------------------------


def ramp(d: DaemonProc, *, senders: int, seconds: float, levels: tuple[int, ...]) -> dict:
    """Send at each level in turn (fresh runs per level); stop after the first lossy level."""
    results = []
    for level in levels:
        runs = [f"ramp-{level}-{i}" for i in range(senders)]
        flag = d.home / f"go-{level}"
        procs = [
            spawn_sender(d, run, 0, 1, level / senders, seconds, flag, "fast", bulk=True)
            for run in runs
        ]
        go(procs, flag)
        out = collect(procs, seconds + 60)
        sent = sum(o.get("steps", 0) for o in out)
        dropped = sum(o.get("dropped", 0) for o in out)
        recorded = settle(d, set(runs), sent)
        lost = sent - recorded
        results.append(
            {
                "events_per_s": level,
                "sent": sent,
                "recorded": recorded,
                "dropped_by_hooks": dropped,
                "lost": lost,
                "failed_senders": sum(1 for o in out if "failed" in o),
            }
        )
        progress(
            f"  ingest ramp {level:,}/s: sent {sent:,}, recorded {recorded:,.0f}, "
            f"lost {lost:,.0f} ({dropped:,} counted by hooks)"
        )
        if lost > 0 or sent == 0:
            break
    taken = [r["events_per_s"] for r in results if r["lost"] == 0 and r["sent"] > 0]
    return {
        "levels": results,
        "max_zero_loss_events_per_s": max(taken) if taken else 0,
        "senders": senders,
        "seconds_per_level": seconds,
    }


# ---- 2. load: 64 processes ---------------------------------------------------------------------


def load(
    d: DaemonProc,
    *,
    procs: int = 64,
    ranks_per_run: int = 8,
    rate: float = 1000.0,
    seconds: float = 60.0,
    scrape_every_s: float = 0.25,
    stagger: bool = False,
) -> dict[str, Any]:
    """``procs`` processes in runs of ``ranks_per_run`` ranks at ``rate`` steps/s each for
    ``seconds``, all starting together (``stagger``: each at a random offset within 0.1 s, so
    their sends do not coincide); /metrics scraped meanwhile. Checks per-run and per-rank totals
    through ``profiler runs --json``."""
    n_runs = max(1, math.ceil(procs / ranks_per_run))
    tag = f"load-{int(time.time())}"
    plan = [(f"{tag}-run{p // ranks_per_run}", p % ranks_per_run) for p in range(procs)]
    flag = d.home / f"go-{tag}"
    rng = random.Random(procs)
    children = [
        spawn_sender(
            d,
            run,
            rank,
            min(ranks_per_run, procs),
            rate,
            seconds,
            flag,
            "fast" if i % 2 == 0 else "rows",
            offset_s=rng.uniform(0.0, DRAIN_S) if stagger else 0.0,
        )
        for i, (run, rank) in enumerate(plan)
    ]
    start_at = go(children, flag)
    latencies: list[float] = []
    scrape_errors = 0
    stop = threading.Event()

    def scraper() -> None:
        nonlocal scrape_errors
        while not stop.is_set():
            try:
                latencies.append(scrape(d.metrics_url, 10)[0])
            except OSError:
                scrape_errors += 1
            stop.wait(scrape_every_s)

    wait_for(lambda: time.monotonic() >= start_at, timeout_s=60, interval_s=0.05)
    cpu0, t0 = cpu_seconds(d.proc.pid), time.monotonic()
    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    out = collect(children, seconds + 120)
    cpu1, t1 = cpu_seconds(d.proc.pid), time.monotonic()
    stop.set()
    thread.join(15)

    run_ids = sorted({run for run, _ in plan})

    def all_ended() -> list[dict[str, Any]] | None:
        rows = [r for r in d.runs() if r["id"] in run_ids]
        done = len(rows) == len(run_ids) and all(r["status"] != "running" for r in rows)
        return rows if done else None

    rows = wait_for(all_ended, timeout_s=60, interval_s=1.0) or [
        r for r in d.runs() if r["id"] in run_ids
    ]
    by_run = {r["id"]: r for r in rows}
    sent = sum(o.get("steps", 0) for o in out)
    dropped = sum(o.get("dropped", 0) for o in out)
    recorded = 0
    mismatches = []
    for run in run_ids:
        mine = [o for o in out if o.get("run") == run]
        row = by_run.get(run)
        rank_steps = {r["rank"]: r["steps"] for r in (row or {}).get("ranks", [])}
        for o in mine:
            got = rank_steps.get(o["rank"], 0)
            recorded += got
            if got + o["dropped"] != o["steps"]:
                mismatches.append(
                    f"{run} rank {o['rank']}: sent {o['steps']}, recorded {got}, "
                    f"dropped {o['dropped']}"
                )
        if row is None:
            mismatches.append(f"{run}: not in the ledger")
            continue
        want_samples = sum(o["samples"] - o["dropped"] * SAMPLES_PER_STEP for o in mine)
        want_steps = max((o["steps"] - o["dropped"] for o in mine), default=0)
        if row["samples"] != want_samples or row["steps"] != want_steps:
            mismatches.append(
                f"{run}: steps {row['steps']} (want {want_steps}), samples "
                f"{row['samples']} (want {want_samples})"
            )
    uncounted = sent - recorded - dropped
    result = {
        "procs": procs,
        "staggered": stagger,
        "runs": n_runs,
        "rate_per_proc": rate,
        "seconds": seconds,
        "offered_events_per_s": procs * rate,
        "sent": sent,
        "recorded": recorded,
        "dropped_by_hooks": dropped,
        "uncounted": uncounted,
        "lost_ratio": (sent - recorded) / sent if sent else math.nan,
        "exact": not mismatches
        and uncounted == 0
        and len(out) == procs
        and all("failed" not in o for o in out),
        "mismatches": mismatches[:20],
        "failed_senders": sum(1 for o in out if "failed" in o),
        "sender_errors": sum(o.get("errors", 0) for o in out),
        "daemon_cpu_ratio": (cpu1 - cpu0) / (t1 - t0),
        "senders_cpu_ratio": sum(o.get("cpu_s", 0.0) for o in out) / (t1 - t0),
        "scrapes": len(latencies),
        "scrape_errors": scrape_errors,
        "scrape_ms_median": median(latencies) * 1e3,
        "scrape_ms_p95": quantile(latencies, 0.95) * 1e3,
        "scrape_ms_max": max(latencies, default=math.nan) * 1e3,
        "statuses": sorted({r["status"] for r in rows}),
    }
    return result


# ---- all of it -----------------------------------------------------------------------------------


def daemon(home: Path) -> DaemonProc:
    """The daemon under test: 8 simulated GPUs on a scripted repeating load (see
    :mod:`bench.sim_daemon` for why not ``PROFILER_GPU=simulated``), 10 Hz sampling."""
    return start_sim_daemon(
        home,
        training_loop(),
        time.monotonic(),
        gpus=8,
        repeat=True,
        PROFILER_FINISHED_RUN_TTL="600",
    )


def _load_line(ld: dict[str, Any]) -> str:
    return (
        f"  sent {ld['sent']:,}, recorded {ld['recorded']:,}, dropped by hooks "
        f"{ld['dropped_by_hooks']:,}, uncounted {ld['uncounted']:,}; /metrics median "
        f"{ld['scrape_ms_median']:.0f} ms; runs {', '.join(ld['statuses'])}"
    )


def measure(smoke: bool = False) -> dict[str, Any]:
    """Ramp, sustained load and burst against one daemon (8 simulated GPUs); seconds in
    ``smoke`` mode."""
    d = daemon(Path(tempfile.mkdtemp(prefix="profiler-bench-ingest-")))
    try:
        progress("ingest: ramp of step events/s (zero loss)")
        levels = RAMP_LEVELS[:2] if smoke else RAMP_LEVELS
        r = ramp(d, senders=2 if smoke else 4, seconds=1.0 if smoke else 4.0, levels=levels)
        procs, seconds = (8, 1.0) if smoke else (64, SUSTAINED_S)
        rate = TARGET_SUSTAINED_PER_S / procs
        progress(f"ingest: sustained, {procs} processes x {rate:g} steps/s for {seconds:g} s")
        sustained = load(d, procs=procs, rate=rate, seconds=seconds, stagger=True)
        progress(_load_line(sustained))
        seconds = 1.0 if smoke else BURST_S
        progress(f"ingest: burst, {procs} processes x 1,000 steps/s for {seconds:g} s, in step")
        burst = load(d, procs=procs, rate=1000.0, seconds=seconds)
        progress(_load_line(burst))
    finally:
        d.stop()
    return {"ramp": r, "sustained": sustained, "burst": burst, "smoke": smoke}


def figures(result: dict[str, Any]) -> list[Figure]:
    r, su, bu = result["ramp"], result["sustained"], result["burst"]
    top = r["max_zero_loss_events_per_s"]
    lossy = next((lv for lv in r["levels"] if lv["lost"] > 0), None)
    note = (
        f"at {lossy['events_per_s'] / 1e3:g}k/s {lossy['lost'] / lossy['sent']:.1%} lost "
        f"({r['senders']} senders, {r['seconds_per_level']:g} s per level)"
        if lossy
        else "no loss up to the highest level tried"
    )

    def loss_note(ld: dict[str, Any]) -> str:
        return (
            f"all loss counted by the hooks: {'yes' if ld['uncounted'] == 0 else 'NO'}; "
            f"ledger totals exact: {'yes' if ld['exact'] else 'NO'}; runs ended "
            f"{'/'.join(ld['statuses'])}; daemon CPU {ld['daemon_cpu_ratio']:.0%}, senders "
            f"{ld['senders_cpu_ratio']:.0%} of a core"
        )

    return [
        Figure(
            "ingest_events_per_s",
            "ingest: step events/s taken with zero loss",
            float(top),
            "events/s",
            f">= {top / 1e3:g}k/s",
            f">= {TARGET_EVENTS_PER_S / 1e3:g}k/s",
            top >= TARGET_EVENTS_PER_S,
            note=note,
            extra=r,
        ),
        Figure(
            "ingest_sustained_loss",
            f"ingest: loss at {su['offered_events_per_s'] / 1e3:g}k/s sustained "
            f"({su['procs']} ranks, {su['seconds']:g} s)",
            su["lost_ratio"],
            "ratio",
            f"{pct(su['lost_ratio'], 3)} ({su['sent'] - su['recorded']:,} of {su['sent']:,})",
            "0",
            su["sent"] > 0 and su["recorded"] == su["sent"] and su["exact"],
            note=loss_note(su),
            extra=su,
        ),
        Figure(
            "ingest_burst_loss",
            f"ingest: loss, {bu['procs']} ranks x 1k steps/s in step, {bu['seconds']:g} s",
            bu["lost_ratio"],
            "ratio",
            f"{pct(bu['lost_ratio'], 2)} ({bu['sent'] - bu['recorded']:,} of {bu['sent']:,})",
            "0, or all counted",
            bu["uncounted"] == 0 and bu["exact"],
            note=loss_note(bu),
            extra=bu,
        ),
        Figure(
            "ingest_metrics_under_load_ms",
            "ingest: /metrics p95 during that burst",
            bu["scrape_ms_p95"],
            "ms",
            f"{bu['scrape_ms_p95']:.0f} ms (median {bu['scrape_ms_median']:.0f})",
            f"<= {TARGET_RESPONSIVE_MS:g} ms",
            bu["scrape_ms_p95"] <= TARGET_RESPONSIVE_MS and bu["scrape_errors"] == 0,
            note=f"{bu['scrapes']} scrapes every 0.25 s, {bu['scrape_errors']} failed, max "
            f"{bu['scrape_ms_max']:.0f} ms",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] not in (["sender"], ["ramp"], ["load"]):
        return bench_main(__doc__ or "", measure, figures, args)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sender", help="(internal) one sending process")
    s.add_argument("--home", required=True)
    s.add_argument("--run", required=True)
    s.add_argument("--rank", type=int, default=0)
    s.add_argument("--world", type=int, default=1)
    s.add_argument("--rate", type=float, required=True, help="steps per second")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--go", required=True, help="file that will hold the start time")
    s.add_argument("--mode", choices=("fast", "rows"), default="fast")
    s.add_argument("--bulk", action="store_true")
    s.add_argument("--offset", type=float, default=0.0, help="start this much after go, s")
    for name in ("ramp", "load"):
        p = sub.add_parser(name)
        p.add_argument("--seconds", type=float, default=None)
        p.add_argument("--procs", type=int, default=64)
        p.add_argument("--rate", type=float, default=1000.0)
        p.add_argument("--stagger", action="store_true", help="desynchronise the senders")
    a = parser.parse_args(args)
    if a.command == "sender":
        return sender(a)
    d = daemon(Path(tempfile.mkdtemp(prefix="profiler-bench-ingest-")))
    try:
        if a.command == "ramp":
            result = ramp(d, senders=4, seconds=a.seconds or 4.0, levels=RAMP_LEVELS)
        else:
            result = load(
                d, procs=a.procs, rate=a.rate, seconds=a.seconds or 60.0, stagger=a.stagger
            )
    finally:
        d.stop()
    print(dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
