"""Text for ``profiler prices`` (the pricing in force, and why) and ``profiler prices --list``
(the catalog). Pure functions: they format what they are given and read nothing else."""

from __future__ import annotations

import datetime
from typing import Any

from profiler.cost.catalog import MARKETS, TARIFFS
from profiler.cost.pricing import Pricing
from profiler.cost.staleness import stale_figures


def _num(value: float, digits: int = 6) -> str:
    """A price without float noise: up to ``digits`` decimals, trailing zeros dropped."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def render_effective(pricing: Pricing, today: datetime.date) -> str:
    """What ``profiler prices`` prints: the pricing in force for this machine, every number with
    where it came from, then one ``WARNING`` line per figure dated more than 180 days before
    ``today``. Units: currency per GPU-hour, currency per kWh, gCO2e/kWh."""
    src = pricing.sources
    cur = pricing.currency
    lines = [f"Pricing in force: {pricing.profile} (kind: {pricing.kind}, currency: {cur})"]
    if pricing.kind == "none":
        lines.append(
            "  No pricing configured: costs are not computed. Set [cost] pricing in profiler.toml "
            "to a catalog instance (see `profiler prices --list`), 'onprem' or 'flat'."
        )
    rows: list[tuple[str, str, str]] = []
    if "pricing" in src:
        rows.append(("pricing", pricing.profile, src["pricing"]))
    if pricing.kind != "none":
        gpu_hour = f"{_num(pricing.gpu_hour_price)} {cur}/GPU-h"
        rows.append(("GPU-hour price", gpu_hour, src.get("gpu_hour_price", "")))
        energy = f"{_num(pricing.energy_price_kwh)} {cur}/kWh"
        rows.append(("energy price", energy, src.get("energy_price_kwh", "")))
    if pricing.kind != "none" or "pue" in src:
        rows.append(("PUE", _num(pricing.pue, 3), src.get("pue", "")))
    if pricing.carbon_g_per_kwh is not None:
        carbon = f"{_num(pricing.carbon_g_per_kwh, 1)} gCO2e/kWh"
        rows.append(("grid carbon", carbon, src.get("carbon_g_per_kwh", pricing.carbon_source)))
    elif pricing.kind != "none" or "carbon_g_per_kwh" in src:
        reason = src.get("carbon_g_per_kwh", "no country or region: set [cost] country, region "
                         "or carbon_g_per_kwh")  # fmt: skip
        rows.append(("grid carbon", "unknown", reason))
    if pricing.as_of:
        rows.append(("oldest figure", pricing.as_of, "the oldest as_of among the figures above"))
    if rows:
        rows.insert(0, ("figure", "value", "where it came from"))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines += [f"  {n:<{w0}}  {v:<{w1}}  {where}".rstrip() for n, v, where in rows]
    if pricing.kind == "cloud":
        lines.append(
            "  Energy is inside the instance price: its kWh (and CO2) are reported, not billed."
        )
    for stale in stale_figures(pricing, today):
        lines.append(f"WARNING: {stale}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _overridden(entry: dict[str, Any]) -> str:
    origins = entry.get("_origin", {}).values()
    return " *" if any(not o.startswith("packaged") for o in origins) else ""


def render_catalog(catalog: dict) -> str:
    """What ``profiler prices --list`` prints: the catalog's instances (GPUs, price per hour,
    per GPU-hour, spot and 1-year reserved per hour, region, as_of, source), GPU power limits,
    electricity prices and PUE defaults. Entries changed or added by profiler.toml are marked
    ``*``."""
    out: list[str] = []
    instances = catalog.get("instances", {})
    rows = []
    for name in sorted(instances):
        e = instances[name]
        gpus = int(e["gpus"])
        on_demand = e.get("on_demand")
        cells = [
            name + _overridden(e),
            f"{gpus} x {e.get('gpu_model', '?')}",
            e.get("currency", "USD"),
            "-" if on_demand is None else _num(on_demand, 4),
            "-" if on_demand is None else _num(on_demand / gpus, 4),
        ]
        cells += ["-" if e.get(m) is None else _num(e[m], 4) for m in MARKETS[1:]]
        dates = sorted({d for d in e.get("_as_of", {}).values() if d})
        cells += [e.get("region", ""), " / ".join(dates) or "-", e.get("source", "")]
        rows.append(cells)
    out.append("Cloud GPU instances (Linux; price per instance-hour and per GPU-hour)")
    out += _table(
        ["instance", "GPUs", "cur", "/h", "/GPU-h", "spot/h", "1y-res/h", "region", "as_of",
         "source"],
        rows,
        right={3, 4, 5, 6},
    )  # fmt: skip

    gpus_table = catalog.get("gpus", {})
    if gpus_table:
        out += ["", "GPU board power limits (W; on real GPUs NVML's enforced limit wins)"]
        rows = [
            [
                name + _overridden(e),
                _num(e["watts"], 1),
                "-" if e.get("min_watts") is None else _num(e["min_watts"], 1),
                e.get("as_of", "-"),
                e.get("source", ""),
            ]
            for name, e in sorted(gpus_table.items())
        ]
        out += _table(["GPU", "watts", "min", "as_of", "source"], rows, right={1, 2})

    power = catalog.get("electricity", {})
    if power:
        out += ["", "Electricity (currency per kWh)"]
        rows = [
            [
                name + _overridden(e),
                e["currency"],
                *("-" if e.get(t) is None else _num(e[t], 4) for t in TARIFFS),
                e.get("as_of", "-"),
                e.get("source", ""),
            ]
            for name, e in sorted(power.items())
        ]
        out += _table(["region", "cur", *TARIFFS, "as_of", "source"], rows, right={2, 3, 4})

    pue = catalog.get("pue", {})
    if pue:
        out += ["", "PUE defaults (cloud: the provider's; on-prem and flat: industry)"]
        rows = [
            [name + _overridden(e), _num(e["value"], 3), e.get("as_of", "-"), e.get("source", "")]
            for name, e in sorted(pue.items())
        ]
        out += _table(["for", "PUE", "as_of", "source"], rows, right={1})
    if any(_overridden(e) for t in catalog.values() for e in t.values()):
        out += ["", "* changed or added by profiler.toml [catalog]"]
    return "\n".join(out)
