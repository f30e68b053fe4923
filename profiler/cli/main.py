"""The ``profiler`` command: a thin face over the daemon, the ledger and the demo.

Every user mistake ends with one line ``profiler: error: ...`` that says what to do next, and
exit status 2; "not running" answers exit 1. Output into a closed pipe (``| head -1``) ends
quietly with status 141, as ``ls`` does. This module holds the parser and the dispatch; each
command group's handlers live in their own module (:data:`COMMANDS`), imported only when that
command runs. The daemon's control client is :mod:`profiler.daemon.control`.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, NoReturn

from profiler import __version__
from profiler.cli.errors import CliError
from profiler.cli.paths import DASHBOARDS_DIR
from profiler.config import Config, ConfigError, load_config
from profiler.daemon.control import ControlError
from profiler.ledger.store import LedgerError

Handler = Callable[[Config, argparse.Namespace], int]

# command -> (module, handler): a command's module is imported only when it runs, so that
# `profiler --help` and `profiler status` never load rich, the report renderers or the daemon.
COMMANDS: dict[str, tuple[str, str]] = {
    "daemon": ("profiler.cli.daemon_cmds", "cmd_daemon"),
    "start": ("profiler.cli.daemon_cmds", "cmd_start"),
    "stop": ("profiler.cli.daemon_cmds", "cmd_stop"),
    "status": ("profiler.cli.daemon_cmds", "cmd_status"),
    "runs": ("profiler.cli.daemon_cmds", "cmd_runs"),
    "prices": ("profiler.cli.report_cmds", "cmd_prices"),
    "compare": ("profiler.cli.report_cmds", "cmd_compare"),
    "report": ("profiler.cli.report_cmds", "cmd_report"),
    "watch": ("profiler.cli.watch", "cmd_watch"),
    "dashboards": ("profiler.cli.report_cmds", "cmd_dashboards"),
    "demo": ("profiler.cli.demo", "cmd_demo"),
    "run": ("profiler.cli.run", "cmd_run"),
    "attach": ("profiler.cli.attach", "cmd_attach"),
    "detach": ("profiler.cli.attach", "cmd_detach"),
}


def handler_for(command: str) -> Handler:
    """The function that runs ``command`` (a key of :data:`COMMANDS`), its module imported."""
    module, name = COMMANDS[command]
    handler: Handler = getattr(importlib.import_module(module), name)
    return handler


def _signal(text: str) -> int:
    from profiler.cli.run_budget import signal_number

    try:
        return signal_number(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
                      help="the dashboard JSON files (default: the installed ones)")  # fmt: skip
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
    run.add_argument("--budget", type=_positive_float, metavar="AMOUNT",
                     help="the run's budget in the pricing's currency (else profiler.toml "
                          "[budget] per_run)")  # fmt: skip
    run.add_argument("--on-exceed", choices=("warn", "stop"),
                     help="at the budget: warn, or stop the command (default: profiler.toml "
                          "[budget] on_exceed, else warn)")  # fmt: skip
    run.add_argument("--budget-signal", type=_signal, default=signal.SIGINT, metavar="SIG",
                     help="what a budget stop sends the command first (default INT)")  # fmt: skip
    run.add_argument("--budget-grace", type=_positive_float, default=10.0, metavar="SECONDS",
                     help="then SIGTERM after this long if it still runs (default 10)")  # fmt: skip
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
        handler = handler_for(args.command)
        code = handler(config, args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except (CliError, ControlError, ConfigError, LedgerError) as e:
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
