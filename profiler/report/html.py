"""The monthly report as one self-contained HTML file: inline CSS and SVG charts, no scripts, no
network, laid out to print on A4. Every piece of user text goes through :func:`escape` (control
characters cleaned, then :func:`html.escape` with quotes)."""

from __future__ import annotations

import datetime as dt
import html

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
from profiler.report.model import MonthReport, Totals
from profiler.report.text import display_text

PALETTE = ("#1f4e79", "#2e86c1", "#48c9b0", "#f4d03f", "#e67e22", "#c0392b", "#7d3c98", "#95a5a6")
CSS = """
body { font: 13px/1.45 "Helvetica Neue", Arial, sans-serif; color: #1b1b1b; margin: 32px auto;
       max-width: 960px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px;
     border-bottom: 2px solid #1f4e79; padding-bottom: 3px; }
.sub { color: #555; margin-bottom: 16px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { border: 1px solid #d5dbe3; border-radius: 6px; padding: 10px 14px; min-width: 140px; }
.card b { display: block; font-size: 18px; } .card span { color: #555; font-size: 12px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e3e7ec; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f2f5f8; }
.warn { background: #fff4e5; border: 1px solid #f0b45b; padding: 8px 12px; border-radius: 6px; }
.legend span { display: inline-block; margin-right: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
footer { color: #777; font-size: 11px; margin-top: 28px; }
@media print { body { margin: 12mm; max-width: none; } h2 { break-after: avoid; }
               table, svg { break-inside: avoid; } }
"""


def to_html(report: MonthReport, generated: dt.datetime | None = None) -> str:
    """The report as a complete HTML document (user text through :func:`escape`)."""
    generated = generated or dt.datetime.now(dt.timezone.utc)
    cur = escape(report.currency or "unpriced")
    t, p = report.totals, report.previous
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>GPU cost report {escape(report.month)}</title><style>{CSS}</style></head><body>",
        f"<h1>GPU cost report, {escape(report.month)}</h1>",
        f"<div class='sub'>Machine-learning training on profiled machines. Money in {cur}; "
        "energy as measured (kWh); emissions in kg CO2e.</div>",
    ]
    if not report.runs:
        parts.append(f"<p class='warn'>{escape(no_work_notice(report))}</p>")
    if report.simulated_runs:
        parts.append(f"<p class='warn'><b>{report.simulated_runs} run(s) were measured on a "
                     "simulated GPU</b> (marked *): their energy comes from a power model, not "
                     "hardware.</p>")  # fmt: skip
    if report.other_currency_runs:
        parts.append(f"<p class='warn'>{report.other_currency_runs} run(s) priced in another "
                     f"currency are listed but not included in the {cur} totals.</p>")  # fmt: skip
    if t.cost_unknown_runs:
        parts.append(f"<p class='warn'>{escape(cost_unknown_note(t.cost_unknown_runs))}</p>")
    cards = [
        (
            f"{escape(amount_text(t.cost, ',.2f', t.cost_unknown_runs))} {cur}",
            "cost",
            _change(t.cost, p.cost),
        ),
        (
            amount_text(t.gpu_hours, ",.1f", t.gpu_hours_unknown_runs),
            "GPU-hours",
            _change(t.gpu_hours, p.gpu_hours),
        ),
        (escape(kwh_text(t.kwh, ",.1f", t.gpu_energy_unknown_runs)), "kWh", _change(t.kwh, p.kwh)),
        (amount_text(t.co2_kg, ",.1f", t.co2_unknown_runs), "kg CO2e", _change(t.co2_kg, p.co2_kg)),
        (
            f"{escape(amount_text(t.waste_cost, ',.2f', t.cost_unknown_runs))} {cur}",
            "waste (idle, NaN)",
            "",
        ),
        (f"{t.runs:,}", "runs", _change(t.runs, p.runs)),
    ]
    if report.budget:
        used = "unknown" if t.cost is None else f"{t.cost / report.budget:.0%}"
        cards.append((used, f"of {report.budget:,.0f} {cur} budget",
                      "" if report.forecast is None else
                      f"forecast {report.forecast:,.0f} {cur}"))  # fmt: skip
    parts.append("<div class='cards'>" + "".join(
        f"<div class='card'><b>{v}</b><span>{escape(label)}</span>"
        + (f"<br><span>{escape(note)}</span>" if note else "") + "</div>"
        for v, label, note in cards) + "</div>")  # fmt: skip
    parts += ["<h2>Totals against the previous month</h2>", _totals_table(t, p, cur)]
    waste = report.waste_by_reason()
    if waste:
        items = ", ".join(f"{escape(k)} {v:,.2f} {cur}" for k, v in sorted(waste.items()))
        parts.append(f"<p>Waste: {items} (idle: GPU held doing no work; nonfinite: after the "
                     "loss became NaN or infinite).</p>")  # fmt: skip
    for note in (split_note(report.gpu_hours_by_basis()), mig_note(report.mig_runs())):
        if note:
            parts.append(f"<p>{escape(note)}</p>")
    parts += ["<h2>Daily cost by project</h2>", _daily_chart(report)]
    if report.project_budgets:
        rows = "".join(
            f"<tr><td>{escape(p)}</td><td>{b:,.2f}</td><td>{cell_text(c, ',.2f')}</td>"
            f"<td>{'-' if c is None else format(c / b, '.0%')}</td>"
            f"<td>{cell_text(f, ',.2f')}</td></tr>"
            for p, b, c, f in report.project_budget_lines()
        )
        head = (
            f"<tr><th>project</th><th>budget ({cur})</th><th>cost</th><th>used</th>"
            "<th>forecast</th></tr>"
        )
        parts += ["<h2>Project budgets</h2>", f"<table>{head}{rows}</table>"]
    if report.budget_runs():
        stopped = report.budget_stopped()
        names = ": " + ", ".join(escape(r.id) for r in stopped) if stopped else ""
        rows = "".join(
            f"<tr><td>{escape(r.id)}</td><td>{escape(r.name)}</td>"
            f"<td>{cell_text(r.budget, ',.2f')}</td><td>{cell_text(r.totals.cost, ',.2f')}</td>"
            f"<td>{' '.join(r.budget_events) or '-'}</td></tr>"
            for r in report.budget_runs()
        )
        head = (f"<tr><th>run</th><th>name</th><th>budget ({cur})</th><th>cost</th>"
                "<th>events</th></tr>")  # fmt: skip
        parts += ["<h2>Budgets</h2>",
                  f"<p>{len(stopped)} run(s) stopped for their budget{names}.</p>",
                  f"<table>{head}{rows}</table>"]  # fmt: skip
    groups = [*report.groups.items(), ("framework", report.by("framework")),
              ("model (run name)", report.by("name"))]  # fmt: skip
    for key, rows in groups:
        parts += [f"<h2>By {escape(key)}</h2>", _group_table(key, rows, cur)]
    parts += ["<h2>Top runs by cost</h2>", _top_runs(report, cur)]
    parts.append(f"<footer>Generated {generated:%Y-%m-%d %H:%M} UTC by ml-energy-profiler "
                 "from its ledger. Costs are priced when the work happened.</footer>")  # fmt: skip
    parts.append("</body></html>")
    return "".join(parts)


def _change(now: float | None, before: float | None) -> str:
    """The change against the previous month; "" when either is unknown (None) or zero."""
    if now is None or not before:
        return ""
    return f"{(now - before) / before:+.0%} vs previous month"


def _totals_table(t: Totals, p: Totals, cur: str) -> str:
    body = ""
    for label, now, before, unknown in (
        ("cost", t.cost, p.cost, t.cost_unknown_runs),
        ("  GPU time", t.cost_gpu_time, p.cost_gpu_time, t.cost_unknown_runs),
        ("  energy", t.cost_energy, p.cost_energy, 0),
        ("waste", t.waste_cost, p.waste_cost, t.cost_unknown_runs),
    ):
        body += (
            f"<tr><td>{escape(label)}</td><td>{escape(amount_text(now, ',.2f', unknown))}</td>"
            f"<td>{escape(amount_text(before, ',.2f'))}</td>"
            f"<td>{_change(now, before).split(' ')[0] or '-'}</td></tr>"
        )
    body += (
        f"<tr><td>energy (kWh)</td><td>{escape(kwh_text(t.kwh, ',.2f', t.gpu_energy_unknown_runs))}"
        f"</td><td>{p.kwh:,.2f}</td><td>{_change(t.kwh, p.kwh).split(' ')[0] or '-'}</td></tr>"
        f"<tr><td>runs</td><td>{t.runs:,d}</td><td>{p.runs:,d}</td>"
        f"<td>{_change(t.runs, p.runs).split(' ')[0] or '-'}</td></tr>"
    )
    for label, now, before, unknown in (
        ("emissions (kg CO2e)", t.co2_kg, p.co2_kg, t.co2_unknown_runs),
        ("GPU-hours", t.gpu_hours, p.gpu_hours, t.gpu_hours_unknown_runs),
    ):
        body += (
            f"<tr><td>{label}</td><td>{escape(amount_text(now, ',.2f', unknown))}</td>"
            f"<td>{escape(amount_text(before, ',.2f'))}</td>"
            f"<td>{_change(now, before).split(' ')[0] or '-'}</td></tr>"
        )
    for label, now, before, unknown in (
        ("steps", t.steps, p.steps, t.steps_unknown_runs),
        ("samples", t.samples, p.samples, t.samples_unknown_runs),
    ):
        change = _change(now, before).split(" ")[0] if now is not None and before else ""
        body += (
            f"<tr><td>{label}</td><td>{escape(count_text(now, unknown))}</td>"
            f"<td>{escape(count_text(before))}</td><td>{change or '-'}</td></tr>"
        )
    return (f"<table><tr><th>figure ({cur} for money)</th><th>this month</th>"
            f"<th>previous month</th><th>change</th></tr>{body}</table>")  # fmt: skip


def _group_table(key: str, rows: list[tuple[str, Totals]], cur: str) -> str:
    head = (f"<tr><th>{escape(key)}</th><th>cost ({cur})</th><th>GPU-hours</th><th>kWh</th>"
            "<th>kg CO2e</th><th>samples</th><th>cost per 1k samples</th>"
            "<th>J per sample</th></tr>")  # fmt: skip
    body = "".join(
        f"<tr><td>{escape(value)}</td>"
        f"<td>{escape(amount_text(g.cost, ',.2f', g.cost_unknown_runs))}</td>"
        f"<td>{escape(amount_text(g.gpu_hours, ',.2f', g.gpu_hours_unknown_runs))}</td>"
        f"<td>{escape(kwh_text(g.kwh, ',.2f', g.gpu_energy_unknown_runs))}</td>"
        f"<td>{escape(amount_text(g.co2_kg, ',.3f', g.co2_unknown_runs))}</td>"
        f"<td>{escape(count_text(g.samples, g.samples_unknown_runs))}</td>"
        f"<td>{cell_text(g.cost_per_1k_samples, '.5f')}</td>"
        f"<td>{cell_text(g.joules_per_sample, '.3f')}</td></tr>"
        for value, g in rows
    )
    return f"<table>{head}{body}</table>"


def _top_runs(report: MonthReport, cur: str) -> str:
    head = (f"<tr><th>run</th><th>name</th><th>project</th><th>user</th><th>cost ({cur})</th>"
            "<th>GPU-hours</th><th>waste</th><th>split</th><th>idle share</th></tr>")  # fmt: skip
    body = "".join(
        f"<tr><td>{escape(r.id)}{'*' if r.simulated else ''}</td><td>{escape(r.name)}</td>"
        f"<td>{escape(r.project)}</td><td>{escape(r.user)}</td>"
        f"<td>{cell_text(r.totals.cost, ',.2f')}</td>"
        f"<td>{amount_text(r.totals.gpu_hours, ',.2f')}</td>"
        f"<td>{cell_text(r.totals.waste_cost, ',.2f')}</td>"
        f"<td>{escape(r.attribution or '-')}</td><td>{share_text(r.gpu_idle_share)}</td>"
        "</tr>"
        for r in report.top_runs
    )
    return f"<table>{head}{body}</table>"


def _daily_chart(report: MonthReport, width: int = 900, height: int = 220) -> str:
    """Stacked bars of daily cost per project, as inline SVG."""
    if not report.daily:
        return "<p>No priced work this month.</p>"
    year, month = (int(x) for x in report.month.split("-"))
    first = dt.date(year, month, 1)
    days = ((first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - first).days
    by_day = dict(report.daily)
    totals: dict[str, float] = {}
    for costs in by_day.values():
        for project, cost in costs.items():
            totals[project] = totals.get(project, 0.0) + cost
    projects = sorted(totals, key=lambda k: -totals[k])
    shown = projects[: len(PALETTE) - 1]
    colour = {p: PALETTE[i] for i, p in enumerate(shown)}
    peak = max(sum(c.values()) for c in by_day.values()) or 1.0
    left, bottom, bar_w = 48, height - 22, (width - 56) / days
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' "
           "aria-label='daily cost by project'>"]  # fmt: skip
    for frac in (0, 0.5, 1):
        y = bottom - frac * (bottom - 10)
        svg.append(f"<line x1='{left}' x2='{width}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e3e7ec'/>"
                   f"<text x='{left - 4}' y='{y + 4:.1f}' font-size='10' text-anchor='end'>"
                   f"{peak * frac:,.0f}</text>")  # fmt: skip
    for d in range(days):
        day = (first + dt.timedelta(days=d)).isoformat()
        x, y = left + d * bar_w, bottom
        for project, cost in sorted(by_day.get(day, {}).items(), key=lambda kv: kv[0]):
            h = cost / peak * (bottom - 10)
            fill = colour.get(project, PALETTE[-1])
            svg.append(f"<rect x='{x + 1:.1f}' y='{y - h:.1f}' width='{bar_w - 2:.1f}' "
                       f"height='{h:.1f}' fill='{fill}'><title>{escape(day)} "
                       f"{escape(project)}: {cost:,.2f}</title></rect>")  # fmt: skip
            y -= h
        if d % 5 == 0:
            svg.append(f"<text x='{x + bar_w / 2:.1f}' y='{height - 6}' font-size='10' "
                       f"text-anchor='middle'>{d + 1}</text>")  # fmt: skip
    svg.append("</svg>")
    legend = "".join(f"<span><i style='background:{colour[p]}'></i>{escape(p)}</span>"
                     for p in shown)  # fmt: skip
    if len(projects) > len(shown):
        legend += f"<span><i style='background:{PALETTE[-1]}'></i>other projects</span>"
    return "".join(svg) + f"<div class='legend'>{legend}</div>"


def escape(text: str) -> str:
    """User text for HTML element content or a quoted attribute value: control characters, lone
    surrogates and bidirectional overrides cleaned (:func:`profiler.report.text.display_text`),
    then ``&<>"'`` escaped."""
    return html.escape(display_text(text), quote=True)
