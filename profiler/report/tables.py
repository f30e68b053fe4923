"""The monthly report as data for other programs: JSON (everything in the report, strict JSON)
and CSV (one row per run, RFC 4180)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from typing import Any

from profiler.report.model import MonthReport, RunLine, Totals
from profiler.report.text import json_safe, spreadsheet_text


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
        # GPU-hours by how their energy was split on shared GPUs ("activity", "equal")
        "gpu_hours_by_basis": report.gpu_hours_by_basis(),
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
        # runs stopped for their budget (status budget_exceeded), by id
        "budget_stopped_runs": [r.id for r in report.budget_stopped()],
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
    "attribution", "gpu_idle_share", "mig_profiles", "budget", "budget_events",
)  # fmt: skip


def to_csv(report: MonthReport) -> str:
    """One row per run with every figure (its part of the month); rows end in CRLF (RFC 4180),
    so a field holding a newline or carriage return is quoted. Text is exact, except that a
    cell a spreadsheet would take as a formula gets a leading apostrophe
    (:func:`profiler.report.text.spreadsheet_text`) and lone surrogates become U+FFFD."""
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
    if isinstance(value, list):  # MIG profiles: space-separated
        return spreadsheet_text(" ".join(map(str, value)))
    return "" if value is None else value
