"""The monthly report for a fleet, from the Prometheus that scrapes every node's daemon.

For each run series, the month's part of a counter is its largest value up to the month's end
minus its largest value up to the month's start (PromQL ``max_over_time(x[...] @ t)``; counters
only grow, and a finished run stays in ``/metrics`` for ``finished_run_ttl_s`` after it ends, so
its final value is scraped). Error: work done in the last scrape interval before a series
disappears without a final scrape (a node that dies) is missed; with a 5 s scrape interval that
is at most 5 s of each such run. Runs are keyed by ``(instance, run)`` and described by
``profiler_run_info``. The daily series is not built from Prometheus (the ledger has it).
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

from profiler.report.model import (
    UTC,
    MonthReport,
    ReportError,
    RunLine,
    Totals,
    check_begun,
    check_budget,
    group_runs,
    parse_month,
    sum_runs,
)
from profiler.units import JOULES_PER_KWH

# Totals field -> (PromQL series selector, scale)
SERIES = {
    "cost_gpu_time": ('profiler_run_cost_total{component="gpu_time"}', 1.0),
    "cost_energy": ('profiler_run_cost_total{component="energy"}', 1.0),
    "waste_cost": ("profiler_run_waste_cost_total", 1.0),
    "gpu_j": ("profiler_run_energy_joules_total", 1.0),
    "cpu_j": ("profiler_run_cpu_energy_joules_total", 1.0),
    "co2_kg": ("profiler_run_emissions_grams_total", 1e-3),
    "gpu_hours": ("profiler_run_gpu_seconds_total", 1 / 3600),
    "steps": ("profiler_run_steps_total", 1.0),
    "samples": ("profiler_run_samples_total", 1.0),
    "gpu_idle_j": ("profiler_run_gpu_idle_energy_joules_total", 1.0),
}


def query(base: str, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """An instant query; raises ReportError with Prometheus's own reason."""
    url = f"{base.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        reason = " ".join(e.read().decode(errors="replace").split())[:200]  # one line
        raise ReportError(f"Prometheus refused a query ({reason})") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ReportError(f"--prometheus {base}: cannot query it ({e})") from e
    if body.get("status") != "success":
        raise ReportError(f"Prometheus answered an error: {body.get('error')}")
    return body["data"]["result"]


def _month_part(base: str, selector: str, start: float, end: float) -> dict[tuple[str, str], float]:
    """Per (instance, run): the counter's growth within [start, end)."""
    span = max(1, int(end - start))

    def at(t: float) -> dict[tuple[str, str], float]:
        expr = f"sum by (instance, run) (max_over_time({selector}[{span}s] @ {t:.3f}))"
        return {(r["metric"].get("instance", ""), r["metric"]["run"]): float(r["value"][1])
                for r in query(base, expr)}  # fmt: skip

    after, before = at(end), at(start)
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def fleet_runs(base: str, start: float, end: float) -> list[RunLine]:
    """Every run with work in ``[start, end)`` across the fleet, with its part of the month."""
    parts = {field: _month_part(base, sel, start, end) for field, (sel, _s) in SERIES.items()}
    span = max(1, int(end - start))
    info = {}
    for r in query(base, f"last_over_time(profiler_run_info[{span}s] @ {end:.3f})"):
        m = r["metric"]
        info[(m.get("instance", ""), m["run"])] = m
    basis = {  # how each run's GPU energy is split on shared GPUs, as last exported
        (r["metric"].get("instance", ""), r["metric"]["run"]): r["metric"].get("attribution")
        for r in query(base, f"last_over_time(profiler_run_attribution_info[{span}s] @ {end:.3f})")
    }
    lines = []
    for key in sorted(set().union(*parts.values())):
        v = {field: parts[field].get(key, 0.0) * SERIES[field][1] for field in SERIES}
        if not any(v.values()):
            continue
        m = info.get(key, {})
        # A priced run whose gpu_time cost series is absent (a daemon with no GPU sensor leaves
        # it out) has an unknown cost, counted as such, never 0; so is its waste cost.
        cost_unknown = bool(m.get("currency")) and key not in parts["cost_gpu_time"]
        gpu_unknown = key not in parts["gpu_hours"]  # no GPU sensor: GPU energy unknown too
        totals = Totals(
            cost=None if cost_unknown else v["cost_gpu_time"] + v["cost_energy"],
            cost_gpu_time=None if cost_unknown else v["cost_gpu_time"],
            cost_energy=v["cost_energy"], waste_cost=None if cost_unknown else v["waste_cost"],
            kwh=(v["gpu_j"] + v["cpu_j"]) / JOULES_PER_KWH, runs=1,
            cost_unknown_runs=int(cost_unknown), gpu_energy_unknown_runs=int(gpu_unknown),
            # likewise emissions (no known grid intensity) and GPU time (no GPU sensor)
            co2_kg=v["co2_kg"] if key in parts["co2_kg"] else None,
            gpu_hours=v["gpu_hours"] if key in parts["gpu_hours"] else None,
            co2_unknown_runs=int(key not in parts["co2_kg"]),
            gpu_hours_unknown_runs=int(key not in parts["gpu_hours"]),
            # a daemon leaves a run's steps/samples series out when they are unknown
            steps=round(v["steps"]) if key in parts["steps"] else None,
            samples=round(v["samples"]) if key in parts["samples"] else None,
            steps_unknown_runs=int(key not in parts["steps"]),
            samples_unknown_runs=int(key not in parts["samples"]),
        )  # fmt: skip
        lines.append(RunLine(
            id=key[1], name=m.get("name", key[1]), project=m.get("project", ""),
            user=m.get("user", ""), framework=m.get("framework", ""),
            host=m.get("hostname", key[0]), gpu_model="", status=m.get("status", ""),
            simulated=m.get("simulated") == "true", currency=m.get("currency", ""),
            totals=totals, attribution=basis.get(key),
            # the month's idle part over its GPU energy; unknown without the idle series
            gpu_idle_share=v["gpu_idle_j"] / v["gpu_j"]
            if key in parts["gpu_idle_j"] and v["gpu_j"] > 0 else None,
            # Prometheus has the basis, not the seconds on each: a "mixed" run's are its own
            gpu_hours_by_basis={basis[key]: totals.gpu_hours}
            if basis.get(key) and totals.gpu_hours else {},
        ))  # fmt: skip
    return lines


def build_fleet_report(
    base: str,
    month: str | None = None,
    group_by: list[str] | None = None,
    budget: float | None = None,
    now: float | None = None,
) -> MonthReport:
    """The month's report for every node Prometheus scrapes (see the module docstring)."""
    now = dt.datetime.now(UTC).timestamp() if now is None else now
    label, start, end = parse_month(month, dt.datetime.fromtimestamp(now, UTC).date())
    check_budget(budget)
    check_begun(label, start, now)
    runs = fleet_runs(base, start, min(end, now))
    _plabel, prev_start, _ = parse_month(None, dt.datetime.fromtimestamp(start, UTC).date())
    previous_runs = fleet_runs(base, prev_start, start)
    priced = Counter(r.currency for r in runs if r.currency)
    currency = priced.most_common(1)[0][0] if priced else ""
    totals = sum_runs(runs, currency)
    forecast = None
    if start < now < end and totals.cost is not None:
        forecast = totals.cost * (end - start) / (now - start)
    return MonthReport(
        month=label, currency=currency, totals=totals, previous=sum_runs(previous_runs, currency),
        groups={key: group_runs(runs, key, currency) for key in group_by or ()},
        runs=sorted(runs, key=lambda r: (r.host, r.id)), daily=[],
        other_currency_runs=sum(1 for r in runs if r.currency and r.currency != currency),
        simulated_runs=sum(1 for r in runs if r.simulated), budget=budget, forecast=forecast,
    )  # fmt: skip
