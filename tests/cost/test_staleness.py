"""How old the pricing's figures are (profiler.cost.staleness): only figures dated more than 180
days (or the limit given) before today are flagged, and an undated override is never stale."""

from __future__ import annotations

import datetime

from profiler.cost.pricing import Pricing, resolve_pricing
from profiler.cost.staleness import stale_figures

WHERE = "/home/u/.profiler/profiler.toml"
TODAY = datetime.date(2026, 11, 24)  # the day the note's figures were gathered


def resolve(cost: dict, catalog: dict | None = None, env: dict | None = None) -> Pricing:
    return resolve_pricing(cost, catalog, where=WHERE, env=env or {})


def test_undated_override_is_not_stale_and_not_dated_by_the_packaged_entry():
    catalog = {"instances": {"aws:g5.xlarge": {"on_demand": 1.2}}}  # packaged: 2026-01-21
    p = resolve({"pricing": "aws:g5.xlarge", "carbon_g_per_kwh": 0}, catalog)
    assert p.gpu_hour_price == 1.2
    assert "2026-01-21" not in p.sources["gpu_hour_price"]
    assert [line for line in stale_figures(p, TODAY) if "gpu_hour_price" in line] == []


def test_stale_figures_flags_only_old_figures():
    fresh = resolve({"pricing": "aws:p4d.24xlarge", "carbon_g_per_kwh": 0})  # 2026-11-09
    assert stale_figures(fresh, TODAY) == []
    old = resolve({"pricing": "aws:g5.xlarge", "carbon_g_per_kwh": 0})  # 2026-01-21
    lines = stale_figures(old, TODAY)
    assert len(lines) == 1
    assert "gpu_hour_price" in lines[0] and "2026-01-21" in lines[0]
    assert str((TODAY - datetime.date(2026, 1, 21)).days) in lines[0]


def test_stale_boundary_is_180_days():
    as_of = datetime.date(2026, 1, 1)
    catalog = {"instances": {"x:box": {"gpus": 1, "on_demand": 1.0, "as_of": as_of.isoformat()}}}
    p = resolve({"pricing": "x:box", "pue": 1.0, "carbon_g_per_kwh": 0}, catalog)
    assert stale_figures(p, as_of + datetime.timedelta(days=180)) == []
    assert len(stale_figures(p, as_of + datetime.timedelta(days=181))) == 1
    assert len(stale_figures(p, as_of + datetime.timedelta(days=31), max_age_days=30)) == 1
