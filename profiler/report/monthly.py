"""Monthly cost report from the ledger: totals, groupings, top runs, waste, daily cost, budget.

Figures of a month come from the per-minute rollups whose minute starts in that month (UTC), so a
run spanning a month boundary is split where its work happened and never counted twice. Money is
summed in the report's currency (the currency most of the month's priced runs use); runs priced in
another currency are listed with their own figures but left out of the money totals, and the
report says how many. Energy is GPU plus CPU energy as measured (kWh, before PUE); CO2 is what the
cost engine recorded (kg CO2e, PUE included).
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import io
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from profiler.ledger.store import Ledger
from profiler.report.focus import spreadsheet_text

GROUP_KEYS = ("project", "user", "framework", "host", "gpu_model")
FORMATS = ("md", "html", "csv", "json")
TOP_RUNS = 10
UTC = dt.timezone.utc
# --month accepts these years: before 1970 no ledger holds data, and 9999 is the last year a
# date can have.
FIRST_YEAR, LAST_YEAR = 1970, 9999


class ReportError(ValueError):
    """A bad month, grouping or budget; the message is one line."""


# A figure that may be unknown for a run (None) -> the Totals field counting the runs for which
# it is: sums over runs add the known ones and say how many runs they leave out.
UNKNOWN_RUNS = {
    "steps": "steps_unknown_runs", "samples": "samples_unknown_runs",
    "co2_kg": "co2_unknown_runs", "gpu_hours": "gpu_hours_unknown_runs",
    # money priced from GPU time: unknown with no GPU sensor (null in `profiler runs --json`)
    "cost": "cost_unknown_runs", "cost_gpu_time": "cost_unknown_runs",
    "waste_cost": "cost_unknown_runs",
}  # fmt: skip


@dataclass
class Totals:
    """Sums over a set of run-minutes. Money in the report's currency; energy in kWh."""

    # Money (cost, its GPU-time part, waste) sums the runs whose cost is known; None when no
    # run's is. A priced run measured by no GPU sensor has unknown GPU time, so an unknown cost
    # (counted in ``cost_unknown_runs``); its energy cost (CPU energy) is known.
    cost: float | None = 0.0
    cost_gpu_time: float | None = 0.0
    cost_energy: float = 0.0
    waste_cost: float | None = 0.0
    # Measured energy: CPU energy, plus GPU energy where a GPU sensor measured it;
    # ``gpu_energy_unknown_runs`` counts the runs whose GPU energy is unknown (no GPU sensor),
    # so ``kwh`` holds only their CPU part.
    kwh: float = 0.0
    co2_kg: float | None = 0.0
    gpu_hours: float | None = 0.0
    runs: int = 0
    # Counts over the runs that know them; None when no run does. ``*_unknown_runs`` counts
    # the runs whose steps/samples are unknown (no hook timed steps; no batch size), never 0.
    steps: int | None = 0
    samples: int | None = 0
    steps_unknown_runs: int = 0
    samples_unknown_runs: int = 0
    # Likewise: ``co2_kg`` sums the runs whose grid carbon intensity was known (None when no
    # run's was), ``gpu_hours`` the runs a GPU sensor measured (None when no sensor measured
    # any: a daemon with ``PROFILER_GPU=none``); the counts say how many runs each leaves out.
    co2_unknown_runs: int = 0
    gpu_hours_unknown_runs: int = 0
    cost_unknown_runs: int = 0
    gpu_energy_unknown_runs: int = 0

    def add(self, other: Totals) -> None:
        for key in asdict(self):
            if key in UNKNOWN_RUNS:
                known = [v for v in (getattr(self, key), getattr(other, key)) if v is not None]
                setattr(self, key, sum(known) if known else None)
            else:
                setattr(self, key, getattr(self, key) + getattr(other, key))
        for key, unknown in UNKNOWN_RUNS.items():
            if self.runs and getattr(self, unknown) == self.runs:
                setattr(self, key, None)

    @property
    def cost_per_1k_samples(self) -> float | None:
        """Currency per 1,000 samples; None when samples or cost are unknown for any run (a
        ratio over part of the runs would be wrong) or samples are zero."""
        if not self.samples or self.samples_unknown_runs or self.cost_unknown_runs:
            return None
        if self.cost is None:
            return None
        return self.cost / self.samples * 1000

    @property
    def joules_per_sample(self) -> float | None:
        """Joules per sample; None when samples or GPU energy are unknown for any run, or
        samples are zero."""
        if not self.samples or self.samples_unknown_runs or self.gpu_energy_unknown_runs:
            return None
        return self.kwh * 3.6e6 / self.samples


@dataclass
class RunLine:
    """One run's part of the month."""

    id: str
    name: str
    project: str
    user: str
    framework: str
    host: str
    gpu_model: str
    status: str
    simulated: bool
    currency: str
    totals: Totals
    waste_by_reason: dict[str, float] = field(default_factory=dict)  # whole run, currency


@dataclass
class MonthReport:
    month: str  # YYYY-MM
    currency: str
    totals: Totals
    previous: Totals
    groups: dict[str, list[tuple[str, Totals]]]
    runs: list[RunLine]
    daily: list[tuple[str, dict[str, float]]]  # (YYYY-MM-DD, project -> cost)
    other_currency_runs: int
    simulated_runs: int
    budget: float | None
    forecast: float | None  # the month's projected cost at its end (current month only)
    project_budgets: dict[str, float] = field(default_factory=dict)

    def project_budget_lines(self) -> list[tuple[str, float, float | None, float | None]]:
        """(project, budget, cost, forecast) for each project with a budget; cost None when
        every run of the project has an unknown cost."""
        costs = dict(_group(self.runs, "project", self.currency))
        scale = self.forecast / self.totals.cost if self.forecast and self.totals.cost else None
        out = []
        for project, amount in sorted(self.project_budgets.items()):
            cost = costs[project].cost if project in costs else 0.0
            forecast = cost * scale if scale is not None and cost is not None else None
            out.append((project, amount, cost, forecast))
        return out

    def waste_by_reason(self) -> dict[str, float]:
        """The month's waste cost by reason (``idle``, ``nonfinite``). Minute rollups hold waste
        cost as one figure; each run's month share is split by its whole-run reason shares."""
        out: dict[str, float] = {}
        for run in self.runs:
            whole = sum(run.waste_by_reason.values())
            if run.currency != self.currency or not whole or run.totals.waste_cost is None:
                continue
            for reason, cost in run.waste_by_reason.items():
                out[reason] = out.get(reason, 0.0) + run.totals.waste_cost * cost / whole
        return out

    @property
    def top_runs(self) -> list[RunLine]:
        priced = [r for r in self.runs if r.currency == self.currency]
        return sorted(priced, key=lambda r: -(r.totals.cost or 0.0))[:TOP_RUNS]

    def by(self, key: str) -> list[tuple[str, Totals]]:
        return self.groups.get(key) or _group(self.runs, key, self.currency)


def parse_month(text: str | None, today: dt.date | None = None) -> tuple[str, float, float]:
    """``YYYY-MM`` (default: the last complete month) -> (label, start, end) in unix seconds."""
    today = today or dt.datetime.now(UTC).date()
    if text is None:
        year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    else:
        try:
            year, month = (int(p) for p in text.split("-"))
            if not FIRST_YEAR <= year <= LAST_YEAR:
                raise ValueError(year)
            dt.date(year, month, 1)
        except ValueError as e:
            raise ReportError(
                f"--month {text!r}: expected YYYY-MM from {FIRST_YEAR}-01 to {LAST_YEAR}-12, "
                "e.g. 2026-11"
            ) from e
    start = dt.datetime(year, month, 1, tzinfo=UTC).timestamp()
    end = start + calendar.monthrange(year, month)[1] * 86400  # no datetime past year 9999
    return f"{year:04d}-{month:02d}", start, end


def check_begun(label: str, start: float, now: float) -> None:
    """Refuse a month that has not begun at ``now`` (unix seconds): it has no data yet, and an
    empty report would read as a month that cost nothing."""
    if start > now:
        today = dt.datetime.fromtimestamp(now, UTC).date().isoformat()
        raise ReportError(
            f"--month {label}: it has not begun (today is {today} UTC); choose the current "
            "month or an earlier one"
        )


def check_budget(budget: float | None) -> None:
    """A budget is a positive, finite amount (the report currency)."""
    if budget is not None and not 0 < budget < math.inf:
        raise ReportError(f"--budget {budget!r}: must be a positive, finite amount")


def budgets_from_config(table: dict[str, Any], where: str) -> tuple[float | None, dict[str, float]]:
    """``[budget]`` from profiler.toml: ``monthly = amount`` and ``[budget.projects]`` with
    ``project = amount`` (the report currency). Raises ReportError naming a bad key."""

    def amount(key: str, value: Any) -> float:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 < value < math.inf):  # fmt: skip
            raise ReportError(f"{where} [budget]: '{key}' must be a positive amount, got {value!r}")
        return float(value)

    unknown = set(table) - {"monthly", "projects"}
    if unknown:
        raise ReportError(f"{where} [budget]: unknown key '{sorted(unknown)[0]}' "
                          "(known: monthly, projects)")  # fmt: skip
    monthly = amount("monthly", table["monthly"]) if "monthly" in table else None
    projects = table.get("projects", {})
    if not isinstance(projects, dict):
        raise ReportError(f"{where} [budget]: 'projects' must be a table ([budget.projects])")
    return monthly, {str(k): amount(f"projects.{k}", v) for k, v in projects.items()}


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
    totals = _total(runs, currency)
    prev_label, prev_start, _ = parse_month(None, dt.datetime.fromtimestamp(start, UTC).date())
    previous = _total(_month_runs(ledger, prev_start, start)[0], currency)
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
        groups={key: _group(runs, key, currency) for key in group_by or ()},
        runs=sorted(runs, key=lambda r: r.id),
        daily=sorted((day, dict(v)) for day, v in daily.items()),
        other_currency_runs=sum(1 for r in runs if r.currency and r.currency != currency),
        simulated_runs=sum(1 for r in runs if r.simulated),
        budget=budget,
        forecast=forecast,
        project_budgets=dict(project_budgets or {}),
    )


def _month_runs(ledger: Ledger, start: float, end: float) -> tuple[list[RunLine], list[Any]]:
    """Runs with work in ``[start, end)`` and their rollup sums there; also
    ``(run_id, day_start_unix, cost)`` rows for the daily series. Aggregation happens in SQLite:
    a month of a million minute rollups stays well under a second."""
    db = ledger.db
    span = (start, end)
    sums = db.execute(
        "SELECT run_id, sum(gpu_energy_j) AS gpu_j, sum(cpu_energy_j) AS cpu_j, "
        "sum(gpu_seconds) AS gpu_s, sum(steps) AS steps, sum(samples) AS samples, "
        "sum(cost_gpu_time) AS c_gpu, sum(cost_energy) AS c_energy, sum(co2_g) AS co2, "
        "sum(waste_cost) AS waste FROM rollups WHERE minute >= ? AND minute < ? GROUP BY run_id",
        span,
    ).fetchall()
    runs = {
        r["id"]: r
        for r in db.execute(
            "SELECT id, name, project, user, framework, host, status, simulated, currency, meta, "
            "steps IS NULL AS steps_unknown, samples IS NULL AS samples_unknown, "
            "gpu_source = 'none' AS gpu_unknown "
            "FROM runs WHERE id IN (SELECT DISTINCT run_id FROM rollups "
            "WHERE minute >= ? AND minute < ?)",
            span,
        )
    }
    # the model of the GPU that carried most of each run's energy (SQLite takes the bare column
    # from the row holding the max)
    models = {
        r[0]: r[1]
        for r in db.execute(
            "SELECT run_id, model, max(energy_j) FROM run_devices GROUP BY run_id"
        ).fetchall()
    }
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
            kwh=((0.0 if gpu_unknown else s["gpu_j"]) + s["cpu_j"]) / 3.6e6,
            co2_kg=None if co2_unknown else s["co2"] / 1000,
            gpu_hours=None if gpu_unknown else s["gpu_s"] / 3600, runs=1,
            steps=None if row["steps_unknown"] else s["steps"],
            samples=None if row["samples_unknown"] else s["samples"],
            steps_unknown_runs=int(bool(row["steps_unknown"])),
            samples_unknown_runs=int(bool(row["samples_unknown"])),
            co2_unknown_runs=int(co2_unknown), gpu_hours_unknown_runs=int(gpu_unknown),
            cost_unknown_runs=int(cost_unknown), gpu_energy_unknown_runs=int(gpu_unknown),
        )  # fmt: skip
        lines.append(RunLine(
            id=row["id"], name=row["name"], project=row["project"], user=row["user"],
            framework=row["framework"], host=row["host"], gpu_model=models.get(row["id"], ""),
            status=row["status"], simulated=bool(row["simulated"]),
            currency=row["currency"] or "", totals=totals,
            waste_by_reason=meta.get("cost", {}).get("waste", {}),
        ))  # fmt: skip
    daily = db.execute(
        "SELECT run_id, CAST(minute / 86400 AS INTEGER) * 86400 AS day, "
        "sum(cost_gpu_time + cost_energy) FROM rollups WHERE minute >= ? AND minute < ? "
        "GROUP BY run_id, day",
        span,
    ).fetchall()
    return lines, daily


def _total(runs: list[RunLine], currency: str) -> Totals:
    """Sums; money only over runs in ``currency``."""
    out = Totals()
    for run in runs:
        t = run.totals
        if run.currency != currency:
            t = Totals(**{**asdict(t), "cost": 0.0, "cost_gpu_time": 0.0, "cost_energy": 0.0,
                          "waste_cost": 0.0, "cost_unknown_runs": 0})  # fmt: skip
        out.add(t)
    return out


def _group(runs: list[RunLine], key: str, currency: str) -> list[tuple[str, Totals]]:
    """Totals per value of ``key``, the costliest first."""
    members: dict[str, list[RunLine]] = defaultdict(list)
    for run in runs:
        members[getattr(run, key) or "(none)"].append(run)
    rows = [(value, _total(group, currency)) for value, group in members.items()]
    return sorted(rows, key=lambda kv: (-(kv[1].cost or 0.0), kv[0]))


def to_focus(ledger: Ledger, month: str | None = None, now: float | None = None) -> str:
    """The month as a FOCUS 1.2 cost-and-usage CSV (:mod:`profiler.report.focus`): one row per
    priced
    run per UTC day, from the minute rollups. Runs never priced have no currency and no row."""
    from profiler.report.focus import FocusUsage, write_focus

    now = dt.datetime.now(UTC).timestamp() if now is None else now
    label, start, end = parse_month(month, dt.datetime.fromtimestamp(now, UTC).date())
    check_begun(label, start, now)
    runs, _daily = _month_runs(ledger, start, end)
    meta = {r.id: r for r in runs if r.currency}
    extra = {
        r["id"]: json.loads(r["meta"] or "{}").get("cost", {})
        for r in ledger.db.execute("SELECT id, meta FROM runs")
        if r["id"] in meta
    }
    usages = []
    for row in ledger.db.execute(
        "SELECT run_id, CAST(minute / 86400 AS INTEGER) * 86400 AS day, sum(cost_gpu_time), "
        "sum(cost_energy), sum(gpu_seconds), sum(gpu_energy_j + cpu_energy_j), sum(co2_g) "
        "FROM rollups WHERE minute >= ? AND minute < ? GROUP BY run_id, day ORDER BY day, run_id",
        (start, end),
    ):
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
            kwh=row[5] / 3.6e6, co2_kg=row[6] / 1000 if cost.get("co2_known") else None,
            pricing_profile=(cost.get("pricing_profiles") or [""])[-1],
            simulated=run.simulated,
        ))  # fmt: skip
    out = io.StringIO(newline="")
    write_focus(usages, dt.datetime.fromtimestamp(start, UTC).date(), out)
    return out.getvalue()


# ---- rendering ----------------------------------------------------------------------------------


def to_json(report: MonthReport) -> str:
    """Everything in the report, as JSON."""
    body = {
        "month": report.month,
        "currency": report.currency or None,
        "totals": _totals_dict(report.totals),
        "previous_month": _totals_dict(report.previous),
        "groups": {
            k: [{"value": v, **_totals_dict(t)} for v, t in rows]
            for k, rows in report.groups.items()
        },  # fmt: skip
        "by_framework": [{"framework": v, **_totals_dict(t)} for v, t in report.by("framework")],
        "by_model": [{"model": v, **_totals_dict(t)} for v, t in report.by("name")],
        "top_runs": [_run_dict(r) for r in report.top_runs],
        "runs": [_run_dict(r) for r in report.runs],
        "daily": [{"day": d, "cost_by_project": c} for d, c in report.daily],
        "waste_by_reason": report.waste_by_reason(),
        "budget": report.budget,
        "budget_used": report.totals.cost / report.budget
        if report.budget and report.totals.cost is not None
        else None,
        "forecast": report.forecast,
        "project_budgets": [
            {
                "project": p,
                "budget": b,
                "cost": c,
                "used": None if c is None else c / b,
                "forecast": f,
            }
            for p, b, c, f in report.project_budget_lines()
        ],
        "simulated_runs": report.simulated_runs,
        "other_currency_runs": report.other_currency_runs,
    }
    return json.dumps(json_safe(body), indent=1, allow_nan=False)


def _totals_dict(t: Totals) -> dict[str, Any]:
    return {**asdict(t), "cost_per_1k_samples": t.cost_per_1k_samples,
            "joules_per_sample": t.joules_per_sample}  # fmt: skip


def _run_dict(r: RunLine) -> dict[str, Any]:
    out = {k: v for k, v in asdict(r).items() if k != "totals"}
    return {**out, **_totals_dict(r.totals)}


CSV_COLUMNS = (
    "month", "id", "name", "project", "user", "framework", "host", "gpu_model", "status",
    "simulated", "currency", "cost", "cost_gpu_time", "cost_energy", "waste_cost", "kwh",
    "co2_kg", "gpu_hours", "steps", "samples", "cost_per_1k_samples", "joules_per_sample",
)  # fmt: skip


def to_csv(report: MonthReport) -> str:
    """One row per run with every figure (its part of the month); rows end in CRLF (RFC 4180),
    so a field holding a newline or carriage return is quoted. Text is exact, except that a
    cell a spreadsheet would take as a formula gets a leading apostrophe
    (:func:`profiler.report.focus.spreadsheet_text`) and lone surrogates become U+FFFD."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for run in report.runs:
        row = {"month": report.month, **_run_dict(run)}
        writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.10g}" if math.isfinite(value) else ""
    if isinstance(value, str):
        return spreadsheet_text(value)
    return "" if value is None else value


def to_markdown(report: MonthReport) -> str:
    """A readable Markdown report."""
    cur = report.currency or "(unpriced)"
    t, p = report.totals, report.previous
    lines = [f"# GPU cost report, {report.month}", ""]
    if not report.runs:
        lines += [no_work_notice(report), ""]
    if report.simulated_runs:
        lines += [f"**{report.simulated_runs} run(s) were measured on a SIMULATED GPU** "
                  "(marked *); their energy is a model, not hardware.", ""]  # fmt: skip
    if report.other_currency_runs:
        lines += [f"{report.other_currency_runs} run(s) priced in another currency are listed "
                  f"but not in the {cur} totals.", ""]  # fmt: skip
    lines += [
        "## Totals", "",
        "| figure | this month | previous month | change |", "|---|---:|---:|---:|",
        _money_row("cost", t.cost, p.cost, cur, t.cost_unknown_runs),
        _money_row("  GPU time", t.cost_gpu_time, p.cost_gpu_time, cur, t.cost_unknown_runs),
        _row("  energy", t.cost_energy, p.cost_energy, f"{cur} "),
        _money_row("waste", t.waste_cost, p.waste_cost, cur, t.cost_unknown_runs),
        _kwh_row(t.kwh, p.kwh, t.gpu_energy_unknown_runs),
        _amount_row("emissions (kg CO2e)", t.co2_kg, p.co2_kg, t.co2_unknown_runs),
        _amount_row("GPU-hours", t.gpu_hours, p.gpu_hours, t.gpu_hours_unknown_runs),
        _row("runs", t.runs, p.runs),
        _count_row("steps", t.steps, p.steps, t.steps_unknown_runs),
        _count_row("samples", t.samples, p.samples, t.samples_unknown_runs),
        "",
    ]  # fmt: skip
    waste = report.waste_by_reason()
    if waste:
        parts = ", ".join(f"{md_cell(reason)} {cost:,.2f} {cur}"
                          for reason, cost in sorted(waste.items()))  # fmt: skip
        lines += [f"Waste: {parts} (idle: GPU held doing no work; nonfinite: after the loss "
                  "became NaN or infinite).", ""]  # fmt: skip
    if report.budget:
        used = "unknown" if t.cost is None else f"{t.cost / report.budget:.1%}"
        lines += [f"Budget {report.budget:,.2f} {cur}: {used} used."]
        if t.cost_unknown_runs:
            lines[-1] += f" {cost_unknown_note(t.cost_unknown_runs)}"
        if report.forecast is not None:
            lines[-1] += f" Forecast for the month's end: {report.forecast:,.2f} {cur} " \
                         f"({report.forecast / report.budget:.0%} of budget)."  # fmt: skip
        lines.append("")
    if report.project_budgets:
        lines += ["## Project budgets", "", f"| project | budget ({cur}) | cost | used | "
                  "forecast |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for project, amount, cost, forecast in report.project_budget_lines():
            used = "-" if cost is None else f"{cost / amount:.1%}"
            lines.append(f"| {md_cell(project)} | {amount:,.2f} | {_f(cost, ',.2f')} | "
                         f"{used} | {_f(forecast, ',.2f')} |")  # fmt: skip
        lines.append("")
    for key, rows in [*report.groups.items(), ("framework", report.by("framework")),
                      ("name", report.by("name"))]:  # fmt: skip
        title = {"name": "model (run name)"}.get(key, key)
        lines += [f"## By {title}", "",
                  f"| {md_cell(title)} | cost ({cur}) | GPU-hours | kWh | kg CO2e | samples | "
                  f"cost per 1k samples | J per sample |", "|---|" + "---:|" * 7]  # fmt: skip
        for value, g in rows:
            lines.append(f"| {md_cell(value)} | "
                         f"{amount_text(g.cost, ',.2f', g.cost_unknown_runs)} | "
                         f"{amount_text(g.gpu_hours, ',.2f', g.gpu_hours_unknown_runs)} | "
                         f"{kwh_text(g.kwh, ',.3f', g.gpu_energy_unknown_runs)} | "
                         f"{amount_text(g.co2_kg, ',.3f', g.co2_unknown_runs)} | "
                         f"{count_text(g.samples, g.samples_unknown_runs)} | "
                         f"{_f(g.cost_per_1k_samples, '.5f')} | "
                         f"{_f(g.joules_per_sample, '.3f')} |")  # fmt: skip
        lines.append("")
    lines += ["## Top runs by cost", "", f"| run | name | project | cost ({cur}) | GPU-hours | "
              "waste |", "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for r in report.top_runs:
        star = "*" if r.simulated else ""
        lines.append(f"| {md_cell(r.id)}{star} | {md_cell(r.name)} | {md_cell(r.project)} | "
                     f"{amount_text(r.totals.cost, ',.2f')} | "
                     f"{amount_text(r.totals.gpu_hours, ',.2f')} | "
                     f"{amount_text(r.totals.waste_cost, ',.2f')} |")  # fmt: skip
    if t.cost_unknown_runs:
        lines += ["", f"{cost_unknown_note(t.cost_unknown_runs)}"]
    lines += ["", "## Daily cost by project", "", "| day | " + f"cost ({cur}) | by project |",
              "|---|---:|---|"]  # fmt: skip
    for day, by_project in report.daily:
        parts = ", ".join(f"{md_cell(k)} {v:,.2f}" for k, v in sorted(by_project.items()))
        lines.append(f"| {day} | {sum(by_project.values()):,.2f} | {parts} |")
    return "\n".join(lines) + "\n"


def no_work_notice(report: MonthReport) -> str:
    """The line an empty month's report opens with, so that zeros are not mistaken for data."""
    return f"No work was recorded in {report.month}: every figure below is zero."


def _row(label: str, now: float, before: float, unit: str = "") -> str:
    change = f"{(now - before) / before:+.1%}" if before else "-"
    fmt = ",d" if isinstance(now, int) else ",.2f" if unit else ",.3f"
    return f"| {label} | {unit}{now:{fmt}} | {unit}{before:{fmt}} | {change} |"


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def count_text(value: int | None, unknown_runs: int = 0) -> str:
    """A count over runs: "unknown" when no run knows it, else the sum of the runs that do,
    saying how many runs it leaves out ("1,000 (2 runs unknown)")."""
    if value is None:
        return "unknown"
    if unknown_runs:
        return f"{value:,} ({unknown_runs} run{'s' if unknown_runs > 1 else ''} unknown)"
    return f"{value:,}"


def amount_text(value: float | None, fmt: str, unknown_runs: int = 0) -> str:
    """A figure summed over runs, formatted with ``fmt``: "unknown" when no run knows it, else
    the sum of the runs that do, saying how many runs it leaves out ("1.25 (2 runs unknown)")."""
    if value is None:
        return "unknown"
    if unknown_runs:
        return f"{value:{fmt}} ({unknown_runs} run{'s' if unknown_runs > 1 else ''} unknown)"
    return f"{value:{fmt}}"


def _amount_row(label: str, now: float | None, before: float | None, unknown_runs: int) -> str:
    change = f"{(now - before) / before:+.1%}" if now is not None and before else "-"
    return (f"| {label} | {amount_text(now, ',.3f', unknown_runs)} | "
            f"{amount_text(before, ',.3f')} | {change} |")  # fmt: skip


def _money_row(label: str, now: float | None, before: float | None, cur: str,
               unknown_runs: int) -> str:  # fmt: skip
    change = f"{(now - before) / before:+.1%}" if now is not None and before else "-"
    now_text = "unknown" if now is None else f"{cur} {amount_text(now, ',.2f', unknown_runs)}"
    before_text = "unknown" if before is None else f"{cur} {before:,.2f}"
    return f"| {label} | {now_text} | {before_text} | {change} |"


def _kwh_row(now: float, before: float, gpu_unknown_runs: int) -> str:
    change = f"{(now - before) / before:+.1%}" if before else "-"
    return (f"| energy (kWh) | {kwh_text(now, ',.3f', gpu_unknown_runs)} | {before:,.3f} | "
            f"{change} |")  # fmt: skip


def kwh_text(value: float, fmt: str, gpu_unknown_runs: int = 0) -> str:
    """Measured energy in kWh, saying for how many runs the GPU part is unknown (no GPU sensor:
    only their CPU energy is in it), e.g. "1.250 (GPU energy unknown for 2 runs)"."""
    if gpu_unknown_runs:
        runs = f"{gpu_unknown_runs} run{'s' if gpu_unknown_runs > 1 else ''}"
        return f"{value:{fmt}} (GPU energy unknown for {runs})"
    return f"{value:{fmt}}"


def cost_unknown_note(unknown_runs: int) -> str:
    """The sentence saying how many runs' cost is unknown and left out of the money figures."""
    runs = f"{unknown_runs} run{'s' if unknown_runs > 1 else ''}"
    return (
        f"The cost of {runs} is unknown (no GPU sensor measured the GPU time it is priced "
        "from): left out of the money figures, not counted as 0."
    )


def _count_row(label: str, now: int | None, before: int | None, unknown_runs: int) -> str:
    change = f"{(now - before) / before:+.1%}" if now is not None and before else "-"
    before_text = "unknown" if before is None else f"{before:,}"
    return f"| {label} | {count_text(now, unknown_runs)} | {before_text} | {change} |"


# Characters a display format (Markdown, HTML, a terminal) must not pass on as they are: C0 and
# C1 controls, DEL, lone surrogates (unencodable as UTF-8) and the bidirectional overrides and
# isolates that reorder what is shown ("Trojan Source").
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def display_text(text: str) -> str:
    """User text for a display format: tab, newline and carriage return become a space; other
    control characters, lone surrogates and bidirectional overrides become U+FFFD; everything
    else is kept."""
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\t\n\r":
            out.append(" ")
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or ch in _BIDI:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def utf8_text(text: str) -> str:
    """``text`` with lone surrogates (which no UTF-8 file or strict JSON parser takes) replaced
    by U+FFFD; everything else exact."""
    return _SURROGATE.sub("\ufffd", text)


_SURROGATE = re.compile("[\ud800-\udfff]")
_MD_ESCAPED = frozenset("\\`*_{}[]()#+-.!|~:\"'$%,/;=?@^")
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md_cell(text: str) -> str:
    """User text as inert Markdown (CommonMark and GitHub's tables, strikethrough and autolinks):
    ``&``, ``<`` and ``>`` become entities, every other ASCII punctuation character that can start
    or end markup (emphasis, code, links, images, headings, lists, tables, ``://`` and ``www.``
    autolinks) gets a backslash, and newlines and control characters are cleaned as in
    :func:`display_text`, so the text reads exactly as written and makes no markup."""
    out = []
    for ch in display_text(text):
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_ESCAPED:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def json_safe(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, strings, numbers) ready for strict JSON: strings (keys
    too) through :func:`utf8_text`, non-finite floats as ``None`` (unknown, not a number JSON
    has). :func:`json.dumps` escapes control characters itself."""
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def render(report: MonthReport, fmt: str) -> str:
    """The report in one of :data:`FORMATS`."""
    if fmt == "html":
        from profiler.report.html import to_html

        return to_html(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    return to_markdown(report)
