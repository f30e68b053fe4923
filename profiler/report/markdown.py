"""The monthly report as Markdown: every piece of user text through
:func:`profiler.report.text.md_cell`, so it reads exactly as written and makes no markup."""

from __future__ import annotations

from profiler.report.figures import (
    amount_text,
    cell_text,
    cost_unknown_note,
    count_text,
    kwh_text,
    mig_note,
    no_work_notice,
    share_text,
    split_note,
)
from profiler.report.model import MonthReport
from profiler.report.text import md_cell


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
    for note in (split_note(report.gpu_hours_by_basis()), mig_note(report.mig_runs(), md_cell)):
        if note:
            lines += [note, ""]
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
            lines.append(f"| {md_cell(project)} | {amount:,.2f} | {cell_text(cost, ',.2f')} | "
                         f"{used} | {cell_text(forecast, ',.2f')} |")  # fmt: skip
        lines.append("")
    if report.budget_runs():
        stopped = report.budget_stopped()
        lines += ["## Budgets", "", f"{len(stopped)} run(s) stopped for their budget"
                  + (": " + ", ".join(md_cell(r.id) for r in stopped) if stopped else "") + ".",
                  "", f"| run | name | budget ({cur}) | cost | events |",
                  "|---|---|---:|---:|---|"]  # fmt: skip
        for r in report.budget_runs():
            lines.append(f"| {md_cell(r.id)} | {md_cell(r.name)} | {cell_text(r.budget, ',.2f')} "
                         f"| {cell_text(r.totals.cost, ',.2f')} | "
                         f"{' '.join(r.budget_events) or '-'} |")  # fmt: skip
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
                         f"{cell_text(g.cost_per_1k_samples, '.5f')} | "
                         f"{cell_text(g.joules_per_sample, '.3f')} |")  # fmt: skip
        lines.append("")
    lines += ["## Top runs by cost", "", f"| run | name | project | cost ({cur}) | GPU-hours | "
              "waste | split | idle share |", "|---|---|---|---:|---:|---:|---|---:|"]  # fmt: skip
    for r in report.top_runs:
        star = "*" if r.simulated else ""
        lines.append(f"| {md_cell(r.id)}{star} | {md_cell(r.name)} | {md_cell(r.project)} | "
                     f"{amount_text(r.totals.cost, ',.2f')} | "
                     f"{amount_text(r.totals.gpu_hours, ',.2f')} | "
                     f"{amount_text(r.totals.waste_cost, ',.2f')} | "
                     f"{md_cell(r.attribution or '-')} | "
                     f"{share_text(r.gpu_idle_share)} |")  # fmt: skip
    if t.cost_unknown_runs:
        lines += ["", f"{cost_unknown_note(t.cost_unknown_runs)}"]
    lines += ["", "## Daily cost by project", "", "| day | " + f"cost ({cur}) | by project |",
              "|---|---:|---|"]  # fmt: skip
    for day, by_project in report.daily:
        parts = ", ".join(f"{md_cell(k)} {v:,.2f}" for k, v in sorted(by_project.items()))
        lines.append(f"| {day} | {sum(by_project.values()):,.2f} | {parts} |")
    return "\n".join(lines) + "\n"


def _row(label: str, now: float, before: float, unit: str = "") -> str:
    change = f"{(now - before) / before:+.1%}" if before else "-"
    fmt = ",d" if isinstance(now, int) else ",.2f" if unit else ",.3f"
    return f"| {label} | {unit}{now:{fmt}} | {unit}{before:{fmt}} | {change} |"


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


def _count_row(label: str, now: int | None, before: int | None, unknown_runs: int) -> str:
    change = f"{(now - before) / before:+.1%}" if now is not None and before else "-"
    before_text = "unknown" if before is None else f"{before:,}"
    return f"| {label} | {count_text(now, unknown_runs)} | {before_text} | {change} |"


# Characters a display format (Markdown, HTML, a terminal) must not pass on as they are: C0 and
# C1 controls, DEL, lone surrogates (unencodable as UTF-8) and the bidirectional overrides and
# isolates that reorder what is shown ("Trojan Source").
