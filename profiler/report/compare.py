"""``profiler compare RUN RUN [RUN...]``: runs side by side, each figure with its ratio to the
first run's.

Runs are named by id, or by name (the newest run with that name). Figures come from the ledger
(the records of ``profiler runs --json``); the p50 step time comes from the run's stored sample
of step durations. Throughput is samples per second of the run's wall time (start to end).
A figure that was not measured is shown as "-" and has no ratio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from profiler.report.text import display_text, json_safe, md_cell

FORMATS = ("table", "md", "json")


class CompareError(ValueError):
    """A run that cannot be found, or nothing to compare; the message is one line."""


@dataclass(frozen=True)
class Figure:
    """One compared figure: its key, heading, unit and how to print it."""

    key: str
    heading: str
    fmt: str
    ratio: bool = True


FIGURES = (
    Figure("framework", "framework", "s", ratio=False),
    Figure("devices", "devices", "s", ratio=False),
    Figure("steps", "steps", ",d"),
    Figure("samples", "samples", ",d"),
    Figure("step_time_mean_ms", "step time mean (ms)", ".2f"),
    Figure("step_time_p50_ms", "step time p50 (ms)", ".2f"),
    Figure("step_time_p95_ms", "step time p95 (ms)", ".2f"),
    Figure("samples_per_s", "throughput (samples/s)", ",.1f"),
    Figure("gpu_energy_j", "GPU energy (J)", ",.1f"),
    Figure("joules_per_sample", "GPU energy per sample (J)", ".4f"),
    Figure("cost", "cost", ".4f"),
    Figure("cost_per_1k_samples", "cost per 1k samples", ".5f"),
    Figure("co2_g", "CO2 (g)", ",.2f"),
    Figure("waste_cost", "waste cost", ".4f"),
)


def find_run(runs: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    """The run with id ``ref``, else the newest run named ``ref`` (``runs`` newest first)."""
    for run in runs:
        if run["id"] == ref:
            return run
    named = [r for r in runs if r["name"] == ref]
    if named:
        return named[0]
    ids = ", ".join(display_text(r["id"]) for r in runs[:5]) or "none recorded"
    raise CompareError(f"no run with id or name {ref!r} in the ledger (newest: {ids})")


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """The compared figures of one run record (None where not measured)."""
    samples, steps = run["samples"], run["steps"]
    energy, cost = run["gpu_energy_j"], run["cost"]
    wall = run["duration_s"]
    models = sorted({d.get("model") or d["uuid"] for d in run.get("devices", [])})

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1e3

    return {
        "id": run["id"],
        "name": run["name"],
        "framework": f"{run['framework']} {run['framework_version']}".strip(),
        "devices": ", ".join(models) or "-",
        "simulated": bool(run["simulated"]),
        "currency": run["currency"],
        "steps": steps,
        "samples": samples,
        "step_time_mean_ms": ms(run["step_time_mean_s"]),
        "step_time_p50_ms": ms(run["step_time_p50_s"]),
        "step_time_p95_ms": ms(run["step_time_p95_s"]),
        "samples_per_s": samples / wall if samples and wall else None,
        "gpu_energy_j": energy,
        "joules_per_sample": energy / samples if energy is not None and samples else None,
        "cost": cost,
        "cost_per_1k_samples": cost / samples * 1000 if cost is not None and samples else None,
        "co2_g": run["co2_g"],
        "waste_cost": run["waste_cost"],
    }


def compare(runs: list[dict[str, Any]], refs: list[str]) -> list[dict[str, Any]]:
    """Figures of the named runs, each with ``ratios`` to the first run's figures."""
    if len(refs) < 2:
        raise CompareError("name at least two runs to compare (ids or names)")
    chosen = [figures(find_run(runs, ref)) for ref in refs]
    currencies = {c["currency"] for c in chosen if c["currency"]}
    if len(currencies) > 1:
        raise CompareError(f"the runs were priced in different currencies: {sorted(currencies)}")
    base = chosen[0]
    for row in chosen:
        row["ratios"] = {
            f.key: row[f.key] / base[f.key]
            for f in FIGURES
            if f.ratio and row[f.key] is not None and base[f.key]
        }
    return chosen


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """``table`` (aligned text for a terminal: control characters and bidirectional overrides in
    names cleaned), ``md`` (a Markdown table, user text inert:
    :func:`profiler.report.text.md_cell`) or ``json`` (strict JSON: text exact but for lone
    surrogates, unknown figures null)."""
    if fmt == "json":
        return json.dumps(json_safe(rows), indent=1, allow_nan=False)
    header = ["", *(f"{r['name']} ({r['id']})" for r in rows)]
    body = []
    for f in FIGURES:
        cells = [f.heading]
        for i, row in enumerate(rows):
            value = row[f.key]
            text = "-" if value is None else format(value, f.fmt)
            if i and f.key in row["ratios"]:
                text += f" (x{row['ratios'][f.key]:.2f})"
            cells.append(text)
        body.append(cells)
    notes = []
    currency = next((r["currency"] for r in rows if r["currency"]), None)
    if currency:
        notes.append(f"cost in {currency}; (xN) is the ratio to the first run")
    if any(r["simulated"] for r in rows):
        notes.append("measured on the simulated GPU, not hardware")
    if fmt == "md":
        lines = ["| " + " | ".join(md_cell(c) for c in header) + " |"]
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(md_cell(c) for c in cells) + " |" for cells in body]
        return "\n".join(lines + [""] + [f"_{n}_" for n in notes])
    header = [display_text(c) for c in header]
    body = [[display_text(c) for c in cells] for cells in body]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [_aligned(cells, widths) for cells in [header, *body]]
    return "\n".join(lines + notes)


def _aligned(cells: list[str], widths: list[int]) -> str:
    """The first cell left-aligned, the others right-aligned."""
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
