"""``profiler report``, ``compare``, ``prices`` and ``dashboards``: what the ledger, the price
catalog and the packaged Grafana dashboards say. Each handler imports its library on use, so
``profiler --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from profiler.cli.errors import CliError
from profiler.cli.run_records import read_runs
from profiler.config import Config
from profiler.daemon.control import daemon_status
from profiler.ledger.store import Ledger


def cmd_report(config: Config, args: argparse.Namespace) -> int:
    """``profiler report``: a month's cost report from the ledger (or the fleet's from
    Prometheus), in ``--format``, to standard output or ``--out``."""
    from profiler.report.model import ReportError, budgets_from_config
    from profiler.report.monthly import build_report, to_focus
    from profiler.report.render import render

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
    """``profiler dashboards push``: create or update the dashboards of ``--dir`` in Grafana."""
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


def cmd_compare(config: Config, args: argparse.Namespace) -> int:
    """``profiler compare RUN ...``: the runs side by side, with ratios to the first."""
    from profiler.report.compare import CompareError, compare, render

    try:
        print(render(compare(read_runs(config), args.runs), args.format))
    except CompareError as e:
        raise CliError(str(e)) from e
    return 0


def cmd_prices(config: Config, args: argparse.Namespace) -> int:
    """``profiler prices [--list]``: the pricing in force and where each figure came from (a
    note when the running daemon prices otherwise), or the whole price catalog."""
    from profiler.cli.prices import render_catalog, render_effective
    from profiler.cost.catalog import load_catalog
    from profiler.cost.settings import PricingError
    from profiler.daemon.service import DaemonError, effective_pricing

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
