"""The monthly report from the ledger (:func:`build_report`) and the month as a FOCUS 1.2 CSV
(:func:`to_focus`).

Figures of a month come from the per-minute rollups whose minute starts in that month (UTC), so a
run spanning a month boundary is split where its work happened and never counted twice. Money is
summed in the report's currency (the currency most of the month's priced runs use); runs priced in
another currency are listed with their own figures but left out of the money totals, and the
report says how many. Energy is GPU plus CPU energy as measured (kWh, before PUE); CO2 is what the
cost engine recorded (kg CO2e, PUE included). The ledger's reads are
:mod:`profiler.ledger.queries`; the records and sums are :mod:`profiler.report.model`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections import Counter, defaultdict

from profiler.ledger import queries
from profiler.ledger.store import Ledger
from profiler.report.focus import FocusUsage, write_focus
from profiler.report.model import (
    GROUP_KEYS,
    UTC,
    MonthReport,
    ReportError,
    RunLine,
    Totals,
    attribution_figures,
    check_begun,
    check_budget,
    group_runs,
    mig_profiles,
    parse_month,
    sum_runs,
)
from profiler.units import JOULES_PER_KWH


def build_report(
    ledger: Ledger,
    month: str | None = None,
    group_by: list[str] | None = None,
    budget: float | None = None,
    now: float | None = None,
    project_budgets: dict[str, float] | None = None,
) -> MonthReport:
    """The month's report (see the module docstring for what is counted where)."""
    now = dt.datetime.now(UTC).timestamp() if now is None else now
    label, start, end = parse_month(month, dt.datetime.fromtimestamp(now, UTC).date())
    for key in group_by or ():
        if key not in GROUP_KEYS:
            raise ReportError(f"--group-by {key!r}: choose from {', '.join(GROUP_KEYS)}")
    check_budget(budget)
    check_begun(label, start, now)
    runs, daily_rows = _month_runs(ledger, start, end)
    priced = Counter(r.currency for r in runs if r.currency)
    currency = priced.most_common(1)[0][0] if priced else ""
    totals = sum_runs(runs, currency)
    prev_label, prev_start, _ = parse_month(None, dt.datetime.fromtimestamp(start, UTC).date())
    previous = sum_runs(_month_runs(ledger, prev_start, start)[0], currency)
    daily: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    meta = {r.id: r for r in runs}
    for run_id, minute, cost in daily_rows:
        run = meta[run_id]
        if run.currency == currency and run.totals.cost is not None:  # unknown: not 0
            day = dt.datetime.fromtimestamp(minute, UTC).strftime("%Y-%m-%d")
            daily[day][run.project or "(none)"] += cost
    forecast = None
    if start <= now < end:
        elapsed = (now - start) / (end - start)
        forecast = totals.cost / elapsed if elapsed > 0 and totals.cost is not None else None
    return MonthReport(
        month=label,
        currency=currency,
        totals=totals,
        previous=previous,
        groups={key: group_runs(runs, key, currency) for key in group_by or ()},
        runs=sorted(runs, key=lambda r: r.id),
        daily=sorted((day, dict(v)) for day, v in daily.items()),
        other_currency_runs=sum(1 for r in runs if r.currency and r.currency != currency),
        simulated_runs=sum(1 for r in runs if r.simulated),
        budget=budget,
        forecast=forecast,
        project_budgets=dict(project_budgets or {}),
    )


def _month_runs(
    ledger: Ledger, start: float, end: float
) -> tuple[list[RunLine], list[queries.Row]]:
    """Runs with work in ``[start, end)`` and their rollup sums there; also
    ``(run_id, day_start_unix, cost)`` rows for the daily series
    (:func:`profiler.ledger.queries.daily_run_costs`)."""
    sums = queries.month_rollup_sums(ledger, start, end)
    runs = queries.month_run_rows(ledger, start, end)
    # the model of the GPU that carried most of each run's energy
    models = queries.run_gpu_models(ledger)
    events = queries.budget_events_of(ledger, list(runs))
    lines = []
    for s in sums:
        row = runs.get(s["run_id"])
        if row is None:
            continue
        meta = json.loads(row["meta"] or "{}")
        # unknown, never 0: CO2 with no known grid intensity, GPU-hours with no GPU sensor
        co2_unknown = not meta.get("cost", {}).get("co2_known")
        gpu_unknown = bool(row["gpu_unknown"])
        # and, for a priced run, the money priced from GPU time (as `profiler runs --json`)
        cost_unknown = gpu_unknown and bool(row["currency"])
        totals = Totals(
            cost=None if cost_unknown else s["c_gpu"] + s["c_energy"],
            cost_gpu_time=None if cost_unknown else s["c_gpu"], cost_energy=s["c_energy"],
            waste_cost=None if cost_unknown else s["waste"],
            kwh=((0.0 if gpu_unknown else s["gpu_j"]) + s["cpu_j"]) / JOULES_PER_KWH,
            co2_kg=None if co2_unknown else s["co2"] / 1000,
            gpu_hours=None if gpu_unknown else s["gpu_s"] / 3600, runs=1,
            steps=None if row["steps_unknown"] else s["steps"],
            samples=None if row["samples_unknown"] else s["samples"],
            steps_unknown_runs=int(bool(row["steps_unknown"])),
            samples_unknown_runs=int(bool(row["samples_unknown"])),
            co2_unknown_runs=int(co2_unknown), gpu_hours_unknown_runs=int(gpu_unknown),
            cost_unknown_runs=int(cost_unknown), gpu_energy_unknown_runs=int(gpu_unknown),
        )  # fmt: skip
        basis, idle_share, by_basis = attribution_figures(
            meta.get("attribution_s") or {}, meta.get("gpu_idle_energy_j"),
            None if gpu_unknown else row["gpu_energy_j"], totals.gpu_hours,
        )  # fmt: skip
        lines.append(RunLine(
            id=row["id"], name=row["name"], project=row["project"], user=row["user"],
            framework=row["framework"], host=row["host"], gpu_model=models.get(row["id"], ""),
            status=row["status"], simulated=bool(row["simulated"]),
            currency=row["currency"] or "", totals=totals,
            waste_by_reason=meta.get("cost", {}).get("waste", {}),
            attribution=basis, gpu_idle_share=idle_share, gpu_hours_by_basis=by_basis,
            mig_profiles=mig_profiles(meta.get("mig_instances")),
            budget=next((b.get("amount") for b in meta.get("budgets", [])
                         if b.get("scope") == "run"), None),
            budget_events=events.get(row["id"], []),
        ))  # fmt: skip
    return lines, queries.daily_run_costs(ledger, start, end)


def to_focus(ledger: Ledger, month: str | None = None, now: float | None = None) -> str:
    """The month as a FOCUS 1.2 cost-and-usage CSV (:mod:`profiler.report.focus`): one row per
    priced run per UTC day, from the minute rollups. Runs never priced have no currency and no
    row."""
    now = dt.datetime.now(UTC).timestamp() if now is None else now
    label, start, end = parse_month(month, dt.datetime.fromtimestamp(now, UTC).date())
    check_begun(label, start, now)
    runs, _daily = _month_runs(ledger, start, end)
    meta = {r.id: r for r in runs if r.currency}
    extra = {
        run_id: json.loads(text or "{}").get("cost", {})
        for run_id, text in queries.month_run_metas(ledger, start, end).items()
        if run_id in meta
    }
    usages = []
    for row in queries.daily_run_usage(ledger, start, end):
        run = meta.get(row[0])
        if run is None:
            continue
        cost = extra.get(run.id, {})
        usages.append(FocusUsage(
            run_id=run.id, run_name=run.name, project=run.project, user=run.user,
            framework=run.framework, host=run.host, gpu_model=run.gpu_model,
            day=dt.datetime.fromtimestamp(row[1], UTC).date(), currency=run.currency,
            cost_gpu_time=row[2], cost_energy=row[3],
            gpu_hours=None if run.totals.gpu_hours_unknown_runs else row[4] / 3600,
            kwh=row[5] / JOULES_PER_KWH, co2_kg=row[6] / 1000 if cost.get("co2_known") else None,
            pricing_profile=(cost.get("pricing_profiles") or [""])[-1],
            simulated=run.simulated, attribution=run.attribution or "",
            mig_profiles=",".join(run.mig_profiles),
        ))  # fmt: skip
    out = io.StringIO(newline="")
    write_focus(usages, dt.datetime.fromtimestamp(start, UTC).date(), out)
    return out.getvalue()
