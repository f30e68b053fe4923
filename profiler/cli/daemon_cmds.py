"""``profiler daemon``, ``start``, ``stop``, ``status`` and ``runs``: the daemon's life and the
runs it recorded. The control itself (which process is the daemon, starting and stopping it) is
:mod:`profiler.daemon.control`; these handlers print what it found.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from profiler.cli.errors import CliError
from profiler.cli.run_records import read_runs
from profiler.config import Config
from profiler.daemon.control import daemon_status, start_background, stop_daemon


def cmd_daemon(config: Config, args: argparse.Namespace) -> int:
    """``profiler daemon``: run the daemon in the foreground, logging to stderr, until stopped."""
    from profiler.daemon.service import DaemonError, run_foreground

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run_foreground(config)
    except DaemonError as e:
        raise CliError(str(e)) from e
    return 0


def cmd_start(config: Config, args: argparse.Namespace) -> int:
    """``profiler start``: start a background daemon unless one runs; either way say where its
    metrics are. Exit 0."""
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
    """``profiler status [--json]``: the running daemon's pid, version, metrics URL, socket and
    settings. Exit 1 when none runs."""
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


def cmd_runs(config: Config, args: argparse.Namespace) -> int:
    """``profiler runs [--json] [--limit N]``: the ledger's runs, newest first, as a table (GPU
    kWh, GPU-hours, cost in its currency, CO2 in grams) or as JSON run objects."""
    runs = read_runs(config, args.limit)
    if args.json:
        print(json.dumps(runs, indent=1))
        return 0
    if not runs:
        print(f"no runs recorded in {config.ledger}")
        return 0
    # SPLIT: how the run's GPU energy was split on shared GPUs (activity, equal, slices, mixed;
    # "-" no GPU time)
    # BUDGET: spent/budget (the run's own, else its project's month), "-" none; "!" warned
    header = f"{'RUN':<36} {'NAME':<16} {'FRAMEWORK':<10} {'SPLIT':<8} {'STATUS':<15} " \
             f"{'STEPS':>8} {'SAMPLES':>10} {'GPU kWh':>10} {'GPU-h':>8} {'COST':>12} " \
             f"{'CO2 g':>9} {'BUDGET':>15}"  # fmt: skip
    print(header)
    for r in runs:
        kwh = "n/a" if r["gpu_energy_kwh"] is None else f"{r['gpu_energy_kwh']:.5f}"
        sim = "*" if r["simulated"] else ""
        cost = "-" if r["cost"] is None else f"{r['cost']:.4f} {r['currency']}"
        co2 = "-" if r["co2_g"] is None else f"{r['co2_g']:.1f}"
        print(
            f"{r['id'][:36]:<36} {r['name'][:16]:<16} {r['framework'][:10]:<10} "
            f"{r['attribution'] or '-':<8} {r['status']:<15} {_count(r['steps']):>8} "
            f"{_count(r['samples']):>10} "
            f"{kwh + sim:>10} "
            f"{_hours(r['gpu_seconds']):>8} {cost:>12} {co2:>9} {budget_cell(r):>15}"
        )
    if any(r["simulated"] for r in runs):
        print("* measured on the simulated GPU, not hardware")
    if any(r["attribution"] in ("equal", "slices", "mixed") for r in runs):
        print("SPLIT equal: the GPU gave no per-process activity, so its energy was split "
              "equally among the runs holding it (slices: by MIG instance size; mixed: in "
              "part)")  # fmt: skip
    return 0


def budget_cell(r: dict[str, Any]) -> str:
    """A run object's budget as "spent/budget" (money in its currency; "?" spent unknown),
    "!" after it when the run was warned and not stopped; "-" without a budget."""
    b = r.get("budget")
    if b is None:
        return "-"
    spent = "?" if r.get("budget_spent") is None else f"{r['budget_spent']:.2f}"
    events = {e["event"] for e in r.get("budget_events", [])}
    mark = "!" if "warn" in events and "stop" not in events else ""
    return f"{spent}/{b['amount']:.2f}{mark}"


def _hours(seconds: float | None) -> str:
    """GPU-seconds as GPU-hours for the runs table: "-" when unknown (no GPU sensor)."""
    return "-" if seconds is None else f"{seconds / 3600:.4f}"


def _count(value: int | None) -> str:
    """A count for the runs table: "-" when unknown (null), never 0."""
    return "-" if value is None else str(value)
