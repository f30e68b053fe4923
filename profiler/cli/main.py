"""The ``profiler`` command: a thin face over the daemon, the ledger and the demo.

Every user mistake ends with one line ``profiler: error: ...`` that says what to do next, and
exit status 2; "not running" answers exit 1. Output into a closed pipe (``| head -1``) ends
quietly with status 141, as ``ls`` does. The daemon is the process holding ``daemon.lock``
(:mod:`profiler.daemon.lock`); no other process is ever signalled.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import io
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import IO, Any, NoReturn

from hooks.client import spawn_daemon
from profiler import __version__
from profiler.accounting.energy import percentile
from profiler.config import Config, ConfigError, load_config
from profiler.daemon.lock import (
    HomeUnusable,
    LockState,
    command_line,
    home_error,
    lock_state,
    looks_like_daemon,
    start_ticks,
)
from profiler.ledger.store import Ledger, LedgerError

DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "dashboards"


class CliError(Exception):
    """A one-line error for the user."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors on one line: what is wrong, and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        # argparse swallows a failed write (--help, --version into a closed pipe) and exits 0;
        # here the BrokenPipeError reaches main, which exits 141: output lost is never done.
        if message:
            stream = file or sys.stderr
            stream.write(message)
            stream.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="profiler",
        description="Energy and cost profiler for ML training: node daemon, runs, demo.",
    )
    parser.add_argument("--version", action="version", version=f"profiler {__version__}")
    parser.add_argument(
        "--config", help="profiler.toml to use (default: $PROFILER_HOME/profiler.toml)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("daemon", help="run the node daemon in the foreground")
    sub.add_parser("start", help="start the daemon in the background")
    sub.add_parser("stop", help="stop the background daemon (flushes the ledger)")
    status = sub.add_parser("status", help="is a daemon running, and where")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    runs = sub.add_parser("runs", help="runs recorded in the ledger, newest first")
    runs.add_argument("--json", action="store_true", help="a JSON list of run objects")
    runs.add_argument("--limit", type=_positive_int, default=50, help="at most N runs (50)")
    compare = sub.add_parser("compare", help="runs side by side, with ratios to the first")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run ids or names (newest)")
    compare.add_argument("--format", choices=("table", "md", "json"), default="table")
    report = sub.add_parser("report", help="the monthly cost report from the ledger")
    report.add_argument("--month", help="YYYY-MM (default: the last complete month, UTC)")
    report.add_argument("--format", choices=("md", "html", "csv", "json", "focus"), default="md",
                        help="focus: a FOCUS 1.2 cost-and-usage CSV")  # fmt: skip
    report.add_argument("--out", type=Path, help="write here instead of standard output")
    report.add_argument("--prometheus", metavar="URL",
                        help="the fleet, from the Prometheus scraping every daemon")  # fmt: skip
    report.add_argument("--group-by", action="append", default=[],
                        choices=("project", "user", "framework", "host", "gpu_model"),
                        help="a table per grouping (repeat for several)")  # fmt: skip
    report.add_argument("--budget", type=float,
                        help="the month's budget; else profiler.toml [budget] monthly")  # fmt: skip
    watch = sub.add_parser("watch", help="a live view of the daemon: GPUs and running runs")
    watch.add_argument("--interval", type=float, default=1.0,
                       help="seconds between refreshes (1)")  # fmt: skip
    watch.add_argument("--once", action="store_true",
                       help="print one frame as plain text and exit (for scripts)")  # fmt: skip
    dash = sub.add_parser("dashboards", help="Grafana dashboards")
    dsub = dash.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)
    push = dsub.add_parser("push", help="create or update the dashboards in Grafana (idempotent)")
    push.add_argument("--grafana-url", required=True, metavar="URL",
                      help="Grafana root, e.g. http://localhost:3000")  # fmt: skip
    push.add_argument("--token-file", metavar="F",
                      help="a file with a service-account token (else $GRAFANA_TOKEN)")  # fmt: skip
    push.add_argument("--folder", default="ML profiler", metavar="TITLE")
    push.add_argument("--dir", type=Path, default=DASHBOARDS_DIR, metavar="DIR",
                      help="the dashboard JSON files (default: the checkout's)")  # fmt: skip
    prices = sub.add_parser("prices", help="the pricing in force for this machine, and why")
    prices.add_argument("--list", action="store_true", help="show the whole price catalog")
    demo = sub.add_parser("demo", help="train a small PyTorch model with the hook, then summarise")
    demo.add_argument(
        "--seconds", type=_positive_float, default=30.0, help="training time in seconds (30)"
    )
    demo.add_argument(
        "--gpu",
        default=None,
        help="GPU source for a daemon the demo starts (default simulated:A100-SXM4-40GB:1)",
    )
    run = sub.add_parser(
        "run",
        help="run a command as one recorded run, no code changes: profiler run -- CMD ARGS",
        description="Run CMD (stdin/stdout/stderr and exit status untouched, signals forwarded) "
        "and record its whole process tree as one run; the summary goes to stderr.",
    )
    _run_identity(run)
    run.add_argument("--hooks", action="store_true",
                     help="also time steps: add the torch/Keras hooks when the program imports "
                          "them (off by default; run_hooks = true in profiler.toml, "
                          "or PROFILER_RUN_HOOKS=1)")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no summary at the end")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS ...]")
    attach = sub.add_parser("attach", help="record a running process tree as a run from now")
    attach.add_argument("pid", type=_positive_int, help="the process (its descendants count too)")
    _run_identity(attach)
    attach.add_argument("--no-wait", action="store_true",
                        help="return without waiting for the daemon to confirm")  # fmt: skip
    detach = sub.add_parser("detach", help="end a run recorded with run/attach now")
    detach.add_argument("target", nargs="?", metavar="RUN_OR_PID",
                        help="a running run's id, or the pid of one of its processes")  # fmt: skip
    detach.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="instead: every running run with this metadata")  # fmt: skip
    return parser


def _run_identity(parser: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``attach`` share: who the run is."""
    parser.add_argument("--name", help="the run's name (default: the script or program)")
    parser.add_argument("--project", help="the run's project (default: $SLURM_JOB_ACCOUNT)")
    parser.add_argument("--run-id", help="join or name this run id (default: $PROFILER_RUN_ID, "
                        "the launcher's or Slurm's job id, else a new one)")  # fmt: skip
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="run metadata for `profiler runs --json` (repeatable)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit:  # --help, --version: their output may meet a closed pipe
            sys.stdout.flush()
            raise
        config = load_config(args.config)
        handler = COMMANDS[args.command]
        code = handler(config, args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except (CliError, ConfigError, LedgerError) as e:
        print(f"profiler: error: {e}", file=sys.stderr)
        return 2
    except sqlite3.Error as e:  # a ledger read that LedgerError did not cover
        print(f"profiler: error: cannot read the ledger ({e}); if it is damaged, move it aside",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print("profiler: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of our output went away (``profiler runs | head -1``): stop quietly, as ``ls``
    does, with the shell's status for SIGPIPE. Output still buffered goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    os.close(devnull)
    return 128 + signal.SIGPIPE


def entry() -> None:
    _legible_streams()
    sys.exit(main())


def _legible_streams() -> None:
    """Text the terminal's encoding cannot show (``PYTHONIOENCODING=ascii``, a C or Latin-1
    locale with UTF-8 mode off) is written as backslash escapes instead of ending the command
    with a ``UnicodeEncodeError`` traceback; ``--out`` files are always UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


# ---- daemon control ----------------------------------------------------------------------


def daemon_status(config: Config) -> dict[str, Any] | None:
    """The running daemon's status file, or None when no process holds this home's lock.

    The daemon is the process holding ``daemon.lock`` (:mod:`profiler.daemon.lock`); its status
    file is trusted only when it names that process. When the file is missing, corrupt or names
    another process, the answer holds ``pid`` (the lock holder if it is proven to be a profiler
    daemon, else None), ``home`` and ``status_error`` (why the rest is unknown)."""
    try:
        state = lock_state(config.lock_file)
    except HomeUnusable as e:
        raise CliError(f"{e}: PROFILER_HOME={config.home} is not usable by you") from None
    error = ""
    for _ in range(50):  # the daemon writes its status file just after taking the lock
        if not state.held:
            return None
        try:
            status = json.loads(config.status_file.read_text())
        except FileNotFoundError:
            error = f"its status file {config.status_file} is missing"
        except OSError as e:
            error = f"its status file {config.status_file} cannot be read ({e.strerror})"
        except ValueError:  # written whole (rename), so corrupt for good: no point waiting
            error = f"its status file {config.status_file} is corrupt"
            break
        else:
            if isinstance(status, dict) and _proven(state, status):
                return status
            error = f"its status file {config.status_file} names another process"
        time.sleep(0.1)
        state = lock_state(config.lock_file)
    pid = state.pid if state.pid is not None and looks_like_daemon(state.pid) else None
    if state.pid is not None and pid is None:
        args = "".join(c if c.isprintable() else " " for c in " ".join(
            command_line(state.pid) or ["?"]))[:60]  # fmt: skip
        error = f"it is held by pid {state.pid} ({args}), which is not a profiler daemon"
    return {"pid": pid, "home": str(config.home), "status_error": error}


def _proven(state: LockState, status: dict[str, Any]) -> bool:
    """Whether ``status`` (a daemon's status file) names the process holding the lock: the pid
    ``/proc/locks`` gives; where it gives none, the same pid, start time and program."""
    pid = status.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return False
    if state.pid is not None:
        return pid == state.pid and looks_like_daemon(pid)
    ticks = status.get("start_ticks")
    return ticks is not None and ticks == start_ticks(pid) and looks_like_daemon(pid)


def cmd_daemon(config: Config, args: argparse.Namespace) -> int:
    from profiler.daemon.core import DaemonError, run_foreground

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run_foreground(config)
    except DaemonError as e:
        raise CliError(str(e)) from e
    return 0


def start_background(config: Config, timeout_s: float = 20.0) -> tuple[dict[str, Any], bool]:
    """Start ``profiler daemon`` detached (log in ``<home>/daemon.log``) unless one runs; wait
    until it serves. Returns its status and whether this call started it. Holds
    ``<home>/autostart.lock`` meanwhile (as the hooks do), so that any number of concurrent
    starts make one daemon and the others find it running."""
    deadline = time.monotonic() + timeout_s
    try:
        config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(config.home / "autostart.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as e:
        raise CliError(home_error(config.home, e)) from None
    with os.fdopen(fd, "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CliError(f"another process has been starting the daemon for over "
                                   f"{timeout_s:g} s; see {config.log_file}") from None  # fmt: skip
                time.sleep(0.05)
        status = daemon_status(config)
        if status:
            return status, False
        try:
            proc = spawn_daemon(config.home)
        except OSError as e:
            raise CliError(home_error(config.home, e)) from None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CliError(f"the daemon exited at start: {_last_error(config.log_file)}")
            status = daemon_status(config)
            if status and status.get("pid") == proc.pid:
                return status, True
            time.sleep(0.1)
    raise CliError(f"the daemon did not start within {timeout_s:g} s; see {config.log_file}")


def _last_error(log_file: Path) -> str:
    try:
        lines = [ln for ln in log_file.read_text().splitlines() if ln.strip()]
    except OSError:
        return f"see {log_file}"
    return (lines[-1] if lines else "no output") + f" (log: {log_file})"


def cmd_start(config: Config, args: argparse.Namespace) -> int:
    status = daemon_status(config)
    started = False
    if not status:
        status, started = start_background(config)
    if not started:
        print(f"daemon already running (pid {status.get('pid') or 'unknown'}), "
              f"metrics at {status.get('metrics_url') or 'unknown'}")  # fmt: skip
        if status.get("status_error"):
            print(f"profiler: warning: {status['status_error']}", file=sys.stderr)
        return 0
    print(f"daemon started (pid {status['pid']}): metrics at {status['metrics_url']}, "
          f"GPU: {status['gpu']}")  # fmt: skip
    return 0


def stop_daemon(config: Config, status: dict[str, Any], timeout_s: float = 15.0) -> int | None:
    """SIGTERM the daemon ``status`` names (a pid :func:`daemon_status` proved to hold the
    lock; never another) and wait until it lets the lock go. Returns its pid, or None when it
    had already gone; CliError when no proven daemon pid is known or it does not stop."""
    pid = status.get("pid")
    if not pid:
        raise CliError(f"a process holds {config.lock_file}, but none proven to be the daemon "
                       f"({status.get('status_error')}); nothing was signalled")  # fmt: skip
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not lock_state(config.lock_file).held:
            return pid
        time.sleep(0.1)
    raise CliError(f"daemon pid {pid} did not stop within {timeout_s:g} s; "
                   f"`kill -9 {pid}` forces it")  # fmt: skip


def cmd_stop(config: Config, args: argparse.Namespace) -> int:
    """``profiler stop``: SIGTERM the proven daemon and report its final ledger flush as the
    daemon recorded it (``daemon.exit.json``), never as assumed. Exit 0: it stopped and its
    report says the flush worked, or it is a daemon from before exit reports (its status file
    has no ``exit_report``), which stopped: one line says its final write cannot be confirmed
    (stopping it is what was asked; the write is not claimed). Exit 1: no daemon ran, its report
    says the flush failed, or a daemon that writes reports (or whose status file is unreadable,
    so its kind is unknown) left none (killed or crashed on the way out)."""
    status = daemon_status(config)
    pid = stop_daemon(config, status) if status else None
    if pid is None:
        print(f"no daemon running for {config.home}")
        return 1
    from profiler.ledger.recovery import read_exit_report

    # What the daemon's final flush did, as it recorded it: never claimed when not known.
    outcome = read_exit_report(config, pid)
    if (
        outcome is None
        and status
        and not status.get("status_error")
        and not status.get("exit_report")
    ):
        print(f"daemon stopped (pid {pid}); its final ledger write cannot be confirmed: a daemon "
              f"from before exit reports writes none; see {config.log_file}")  # fmt: skip
        return 0
    if outcome is None:
        print(f"profiler: error: daemon stopped (pid {pid}) without saying whether its final "
              f"ledger write worked; see {config.log_file}", file=sys.stderr)  # fmt: skip
        return 1
    if not outcome.ok:
        print(f"profiler: error: daemon stopped (pid {pid}), but {outcome.message}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"daemon stopped (pid {pid}); {outcome.message}")
    return 0


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    status = daemon_status(config)
    if not status:
        if args.json:
            print(json.dumps({"running": False, "home": str(config.home)}))
        else:
            print(f"no daemon running for {config.home}; start one with `profiler start`")
        return 1
    status = {"running": True, **status}
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    if status.get("status_error"):
        print(f"daemon running (pid {status['pid'] or 'unknown'}), but {status['status_error']}: "
              "its metrics URL, socket and settings are unknown; `profiler stop` and "
              "`profiler start` write it again")  # fmt: skip
        return 0
    print(f"daemon running (pid {status['pid']}, version {status.get('version')})")
    for key in ("metrics_url", "socket", "ledger", "log", "gpu", "cpu", "pricing"):
        print(f"  {key:<12} {status.get(key)}")
    return 0


# ---- runs --------------------------------------------------------------------------------------


def run_record(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row as the public run object (``profiler runs --json``)."""
    steps = row["steps"]
    ended = row["ended_at"]
    duration = (ended - row["started_at"]) if ended else None
    energy = row["gpu_energy_j"]
    meta = row["meta"]
    timed = meta.get("timed_steps", steps)
    cost_meta = meta.get("cost", {})
    currency = row.get("currency") or None  # absent in a schema-1 ledger
    # Unknown = no source could measure it: with no GPU sensor (``PROFILER_GPU=none``) GPU time,
    # and the money and waste priced from it, are unknown (null); with a sensor, 0 GPU-seconds
    # for a run that held no device is a measured zero.
    gpu_known = row["gpu_source"] != "none"
    priced = currency is not None and gpu_known
    return {
        "id": row["id"],
        "name": row["name"],
        "project": row["project"],
        "user": row["user"],
        "framework": row["framework"],
        "framework_version": row["framework_version"],
        "host": row["host"],
        "status": row["status"],
        "started_at": row["started_at"],
        "ended_at": ended,
        "duration_s": duration,
        "steps": steps,
        "samples": row["samples"],
        "dropped_steps": row["dropped_steps"],
        # steps a hook sent that a daemon killed before its flush did not record (no timing)
        "unrecorded_steps": meta.get("unrecorded_steps", 0),
        # seconds no daemon measured (run began before it, or it restarted): energy missing
        "unmeasured_s": meta.get("unmeasured_s", 0.0),
        # GPU joules of restart gaps, read from the GPU's own energy counter (in gpu_energy_j)
        "gap_gpu_energy_j": meta.get("gap_gpu_energy_j", 0.0),
        "step_time_mean_s": row["step_time_sum_s"] / timed if timed else None,
        "step_time_p50_s": percentile(sorted(meta.get("durations", [])), 0.5),
        "step_time_p95_s": row["step_time_p95_s"],
        "gpu_energy_j": energy,
        "gpu_energy_kwh": energy / 3.6e6 if energy is not None else None,
        "gpu_seconds": row["gpu_seconds"] if gpu_known else None,
        "gpu_power_mean_w": energy / duration if energy is not None and duration else None,
        "gpu_power_peak_w": row["gpu_power_peak_w"],
        "cpu_energy_j": row["cpu_energy_j"] if row["meta"].get("cpu_energy_source") else None,
        "cpu_energy_source": row["meta"].get("cpu_energy_source") or None,
        "gpu_source": row["gpu_source"],
        "energy_source": row["energy_source"],
        "simulated": bool(row["simulated"]),
        "devices": row["devices"],
        "clock": meta.get("clock"),
        "samples_source": meta.get("samples_source") or None,
        "memory_source": meta.get("memory_source") or None,
        "ranks": _ranks(meta),
        # money is null for runs never priced; CO2 null where no grid intensity was known
        "currency": currency,
        "cost": (row["cost_gpu_time"] + row["cost_energy"]) if priced else None,
        "cost_gpu_time": row["cost_gpu_time"] if priced else None,
        "cost_energy": row["cost_energy"] if currency else None,
        "co2_g": row["co2_g"] if cost_meta.get("co2_known") else None,
        "waste_cost": row["waste_cost"] if priced else None,
        "waste": cost_meta.get("waste", {}) if gpu_known else None,
        "waste_gpu_seconds": cost_meta.get("waste_gpu_seconds", {}) if gpu_known else None,
        "pricing_profiles": cost_meta.get("pricing_profiles", []),
        "last_loss": meta.get("last_loss"),
        # null when the hook never reported a loss (nothing counted NaN steps)
        "nonfinite_loss_steps": meta.get("nonfinite_loss_steps")
        or (None if meta.get("last_loss") is None else 0),
        "first_nonfinite_step": meta.get("first_nonfinite_step"),
        "cpu_seconds": meta.get("cpu_seconds"),
        # run metadata: Slurm job, Kubernetes pod, `profiler run --meta`
        "meta": meta.get("run_meta", {}),
    }


def _ranks(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Per rank: where it ran (local rank, world size, declared devices, pids), its steps and
    samples, and its peak framework memory (bytes)."""
    pids: dict[int, list[int]] = {}
    where: dict[int, tuple[int, int]] = {}
    devices: dict[int, set[str]] = {}
    for pid, (rank, local, world) in meta.get("ranks", {}).items():
        pids.setdefault(rank, []).append(int(pid))
        where[rank] = (local, world)
        devices.setdefault(rank, set()).update(meta.get("process_devices", {}).get(pid, []))
    peaks = meta.get("rank_memory_peak", {})
    samples_unknown = meta.get("samples_source") == "none"
    out = []
    for key, n in sorted(meta.get("rank_steps", {}).items(), key=lambda kv: int(kv[0])):
        peak = peaks.get(key)
        out.append({
            "rank": int(key),
            "local_rank": where.get(int(key), (None, None))[0],
            "world_size": where.get(int(key), (None, None))[1],
            "devices": sorted(devices.get(int(key), ())),
            "steps": n,
            # null when the run's samples are unknown (no batch size: not counted)
            "samples": None if samples_unknown else meta.get("rank_samples", {}).get(key, 0),
            "pids": sorted(pids.get(int(key), [])),
            "memory_peak_allocated_bytes": peak[0] if peak else None,
            "memory_peak_reserved_bytes": peak[1] if peak else None,
        })  # fmt: skip
    return out


def read_runs(config: Config, limit: int | None = None) -> list[dict[str, Any]]:
    if not config.ledger.exists():
        return []
    ledger = Ledger(config.ledger, readonly=True)
    try:
        return [run_record(r) for r in ledger.runs(limit=limit)]
    finally:
        ledger.close()


def cmd_runs(config: Config, args: argparse.Namespace) -> int:
    runs = read_runs(config, args.limit)
    if args.json:
        print(json.dumps(runs, indent=1))
        return 0
    if not runs:
        print(f"no runs recorded in {config.ledger}")
        return 0
    header = f"{'RUN':<36} {'NAME':<16} {'FRAMEWORK':<10} {'STATUS':<11} {'STEPS':>8} " \
             f"{'SAMPLES':>10} {'GPU kWh':>10} {'GPU-h':>8} {'COST':>12} {'CO2 g':>9}"  # fmt: skip
    print(header)
    for r in runs:
        kwh = "n/a" if r["gpu_energy_kwh"] is None else f"{r['gpu_energy_kwh']:.5f}"
        sim = "*" if r["simulated"] else ""
        cost = "-" if r["cost"] is None else f"{r['cost']:.4f} {r['currency']}"
        co2 = "-" if r["co2_g"] is None else f"{r['co2_g']:.1f}"
        print(
            f"{r['id'][:36]:<36} {r['name'][:16]:<16} {r['framework'][:10]:<10} "
            f"{r['status']:<11} {_count(r['steps']):>8} {_count(r['samples']):>10} "
            f"{kwh + sim:>10} "
            f"{_hours(r['gpu_seconds']):>8} {cost:>12} {co2:>9}"
        )
    if any(r["simulated"] for r in runs):
        print("* measured on the simulated GPU, not hardware")
    return 0


def _hours(seconds: float | None) -> str:
    """GPU-seconds as GPU-hours for the runs table: "-" when unknown (no GPU sensor)."""
    return "-" if seconds is None else f"{seconds / 3600:.4f}"


def _count(value: int | None) -> str:
    """A count for the runs table: "-" when unknown (null), never 0."""
    return "-" if value is None else str(value)


def cmd_report(config: Config, args: argparse.Namespace) -> int:
    from profiler.report.monthly import (
        ReportError,
        budgets_from_config,
        build_report,
        render,
        to_focus,
    )

    try:
        monthly, projects = budgets_from_config(config.budget, config.source)
    except ReportError as e:
        raise CliError(str(e)) from e
    budget = args.budget if args.budget is not None else monthly
    try:
        if args.prometheus:
            from profiler.report.fleet import build_fleet_report

            if args.format == "focus":
                raise ReportError("--format focus reads the ledger; leave out --prometheus")
            report = build_fleet_report(args.prometheus, args.month, args.group_by, budget)
            text = render(report, args.format)
        else:
            ledger = Ledger(config.ledger, readonly=True)
            try:
                if args.format == "focus":
                    text = to_focus(ledger, args.month)
                else:
                    report = build_report(ledger, args.month, args.group_by, budget,
                                          project_budgets=projects)  # fmt: skip
                    text = render(report, args.format)
            finally:
                ledger.close()
    except ReportError as e:
        raise CliError(str(e)) from e
    if args.out is None:
        print(text, end="")
        return 0
    try:
        args.out.write_text(text, encoding="utf-8", newline="")
    except OSError as e:
        raise CliError(f"--out {args.out}: cannot write ({e.strerror})") from e
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_dashboards(config: Config, args: argparse.Namespace) -> int:
    from profiler.grafana import GrafanaError, push_dashboards, token_from

    if not args.dir.is_dir():
        raise CliError(f"--dir {args.dir}: no such folder; pass the folder of the dashboard JSON")
    try:
        token = token_from(os.environ, args.token_file)
        uids = push_dashboards(args.grafana_url, token, args.dir, folder_title=args.folder)
    except GrafanaError as e:
        raise CliError(str(e)) from e
    print(f"pushed {len(uids)} dashboards to {args.grafana_url}: {', '.join(uids)}")
    return 0


def cmd_watch(config: Config, args: argparse.Namespace) -> int:
    from profiler.cli.watch import watch

    if not 0.1 <= args.interval <= 3600:
        raise CliError(f"--interval {args.interval:g}: seconds from 0.1 to 3600")
    return watch(config, interval=args.interval, once=args.once)


def cmd_compare(config: Config, args: argparse.Namespace) -> int:
    from profiler.report.compare import CompareError, compare, render

    try:
        print(render(compare(read_runs(config), args.runs), args.format))
    except CompareError as e:
        raise CliError(str(e)) from e
    return 0


def cmd_prices(config: Config, args: argparse.Namespace) -> int:
    from profiler.cli.prices import render_catalog, render_effective
    from profiler.cost.pricing import PricingError, load_catalog
    from profiler.daemon.core import DaemonError, effective_pricing

    try:
        if args.list:
            print(render_catalog(load_catalog(config.catalog, where=config.source)))
        else:
            pricing = effective_pricing(config)
            print(render_effective(pricing, datetime.date.today()))
            running = daemon_status(config)
            if running and running.get("pricing") not in (None, pricing.profile):
                pid, profile = running.get("pid"), running["pricing"]
                print(f"NOTE: the running daemon (pid {pid}) prices with {profile}; "
                      "`profiler stop` and start it again to apply the above.")  # fmt: skip
    except (DaemonError, PricingError) as e:
        raise CliError(str(e)) from e
    return 0


def cmd_demo(config: Config, args: argparse.Namespace) -> int:
    from profiler.cli.demo import run_demo

    return run_demo(config, seconds=args.seconds, gpu=args.gpu)


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from profiler.cli.run import run_command

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    hooks = args.hooks or config.run_hooks
    return run_command(
        config, command, name=args.name, project=args.project, run_id=args.run_id,
        meta=args.meta, hooks=hooks, quiet=args.quiet,
    )  # fmt: skip


def cmd_attach(config: Config, args: argparse.Namespace) -> int:
    from profiler.cli.run import attach

    run_id = attach(config, args.pid, name=args.name, project=args.project,
                    run_id=args.run_id, meta=args.meta, wait=not args.no_wait)  # fmt: skip
    print(run_id)
    print(
        f"recording pid {args.pid} and its descendants as run {run_id} from now; "
        f"`profiler detach {run_id}` (or the process's end) ends it",
        file=sys.stderr,
    )
    return 0


def cmd_detach(config: Config, args: argparse.Namespace) -> int:
    from profiler.cli.run import detach

    for run in detach(config, args.target, meta=args.meta):
        print(f"run {run['id']} ({run['name']}): {run['status']}")
    return 0


COMMANDS = {
    "daemon": cmd_daemon,
    "start": cmd_start,
    "stop": cmd_stop,
    "status": cmd_status,
    "runs": cmd_runs,
    "prices": cmd_prices,
    "compare": cmd_compare,
    "report": cmd_report,
    "watch": cmd_watch,
    "dashboards": cmd_dashboards,
    "demo": cmd_demo,
    "run": cmd_run,
    "attach": cmd_attach,
    "detach": cmd_detach,
}
