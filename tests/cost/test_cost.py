"""Cost, carbon and waste in the daemon, against hand computation from the simulated GPU's exact
integral: an 8-GPU cloud run of 2 h (on-demand and spot), an on-prem run, a price change in the
middle of a run, idle and NaN waste."""

from __future__ import annotations

import os

import pytest
from conftest import sample_value
from inprocess import P4D_ON_DEMAND, hello, make_daemon, pricing

from profiler.accounting.attribution import IDLE_UTILIZATION
from profiler.cost.meter import projected
from profiler.cost.pricing import Pricing, resolve_pricing
from profiler.ingest.messages import Bye, StepBatch, StepExtras


def run_for(d, clock, seconds: float, step: float = 1.0, every=None) -> None:
    """Advance the fake clock, sampling every ``step`` seconds; ``every(now)`` after each."""
    end = clock.now + seconds
    while clock.now < end - 1e-9:
        clock.now += step
        d.sample()
        if every:
            every(clock.now)


@pytest.mark.parametrize("market, gph", [("on_demand", P4D_ON_DEMAND / 8), ("spot", 9.6 / 8)])
def test_eight_gpu_cloud_run_of_two_hours(tmp_path, market, gph):
    # priced through the catalog; p4d's spot price is a user override (the catalog has none)
    spot = {"instances": {"aws:p4d.24xlarge": {"spot": 9.6, "spot_as_of": "2026-11-20"}}}
    resolved = resolve_pricing({"pricing": "aws:p4d.24xlarge", "market": market}, spot, env={})
    assert resolved.gpu_hour_price == pytest.approx(gph, rel=1e-12)
    assert resolved.energy_price_kwh == 0.0 and resolved.pue == 1.15
    traces = [[(7300.0, 300.0 + 10 * i)] for i in range(8)]  # watts, steady
    d, sim, clock = make_daemon(tmp_path, traces, count=8)
    d.set_pricing(resolved)
    pid = os.getpid()
    t0 = clock.now
    d.sample()
    d.handle(hello("p4d", pid, t0, devices=tuple(str(i) for i in range(8))))
    run_for(d, clock, 7200.0, step=5.0)  # 5 s samples keep 2 h of 8 GPUs quick
    d.handle(Bye("p4d", pid, "finished", t0 + 7200.0))
    run_for(d, clock, 5.0)
    d.attribute_all()
    run = d.runs["p4d"]
    assert run.total_gpu_seconds == pytest.approx(8 * 7200.0, rel=1e-9)
    assert run.cost.gpu_time_cost == pytest.approx(8 * 2 * gph, rel=1e-9)
    assert run.cost.energy_cost == 0.0  # cloud: the instance price includes the energy
    kwh = sum(sim.exact_energy_j(i, t0, t0 + 7200.0) for i in range(8)) / 3.6e6
    assert kwh == pytest.approx(sum(300 + 10 * i for i in range(8)) * 2 / 1000, rel=1e-9)
    assert run.cost.co2_g == pytest.approx(kwh * 1.15 * resolved.carbon_g_per_kwh, rel=1e-6)
    assert run.cost.waste_total == 0.0
    d.flush()
    row = d.ledger.run("p4d")
    assert row["cost_gpu_time"] == pytest.approx(run.cost.gpu_time_cost)
    assert row["co2_g"] == pytest.approx(run.cost.co2_g) and row["currency"] == "USD"


def test_on_prem_bills_amortised_gpu_time_and_facility_energy(tmp_path):
    # $30k per GPU over 4 years at 70 % use, opex 0.05/h; $0.10/kWh at PUE 1.5
    gph = 30000 / (4 * 8760 * 0.7) + 0.05
    d, sim, clock = make_daemon(tmp_path, [[(4000.0, 350.0)]])
    d.set_pricing(pricing(kind="onprem", gph=gph, kwh=0.10, pue=1.5, carbon=56.0))
    pid = os.getpid()
    t0 = clock.now
    d.sample()
    d.handle(hello("onprem", pid, t0))
    run_for(d, clock, 3600.0, every=lambda now: d.handle(StepBatch(
        "onprem", pid, ((int(now - t0), now - 1.0, now, 32, None),), 0)))  # fmt: skip
    d.handle(Bye("onprem", pid, "finished", t0 + 3600.0))
    run_for(d, clock, 2.0)
    d.attribute_all()
    run = d.runs["onprem"]
    kwh = sim.exact_energy_j(0, t0, t0 + 3600.0) / 3.6e6
    assert kwh == pytest.approx(0.35, rel=1e-9)
    assert run.cost.gpu_time_cost == pytest.approx(1 * gph, rel=1e-9)
    assert run.cost.energy_cost == pytest.approx(0.35 * 1.5 * 0.10, rel=1e-6)
    assert run.cost.co2_g == pytest.approx(0.35 * 1.5 * 56.0, rel=1e-6)
    assert run.cost.total == pytest.approx(gph + 0.0525, rel=1e-6)
    assert projected(run.cost.total, run.steps, 2 * run.steps) == pytest.approx(2 * run.cost.total)


def test_a_price_change_mid_run_does_not_rewrite_what_the_run_already_cost(tmp_path):
    d, sim, clock = make_daemon(tmp_path, [[(8000.0, 200.0)]])
    d.set_pricing(pricing(kind="flat", gph=2.0, kwh=0.0, carbon=400.0, profile="flat 2.00"))
    pid = os.getpid()
    t0 = clock.now
    d.sample()
    d.handle(hello("change", pid, t0))
    run_for(d, clock, 3600.0)
    d.attribute_all()
    d.set_pricing(pricing(kind="flat", gph=3.0, kwh=0.0, carbon=100.0, profile="flat 3.00"))
    run_for(d, clock, 3600.0)
    d.handle(Bye("change", pid, "finished", t0 + 7200.0))
    run_for(d, clock, 2.0)
    d.attribute_all()
    run = d.runs["change"]
    assert run.cost.gpu_time_cost == pytest.approx(2.0 + 3.0, rel=1e-6)
    assert run.cost.co2_g == pytest.approx(0.2 * 400.0 + 0.2 * 100.0, rel=1e-6)
    assert run.cost.pricing_profiles == ["flat 2.00", "flat 3.00"]
    d.flush()
    assert [p["profile"] for p in d.ledger.pricing_history()][-2:] == ["flat 2.00", "flat 3.00"]
    minutes = d.ledger.rollups("change")
    assert sum(m["cost_gpu_time"] for m in minutes) == pytest.approx(5.0, rel=1e-6)


def test_idle_gpu_time_and_steps_after_a_nan_loss_are_waste(tmp_path):
    # 0-100 s busy with steps; 100-200 s idle power and no steps; 200-300 s busy, steps, NaN
    # loss from 250 s on
    idle_w = 55.0
    trace = [(100.0, 300.0), (100.0, idle_w), (100.0, 300.0), (10.0, idle_w)]
    d, sim, clock = make_daemon(tmp_path, [trace])
    d.set_pricing(pricing(kind="flat", gph=3.6, kwh=0.0))  # 0.001 per GPU-second
    pid = os.getpid()
    t0 = clock.now
    d.sample()
    d.handle(hello("waste", pid, t0))

    def steps(now: float) -> None:
        t = now - t0
        if t <= 100.0 or 200.0 < t <= 300.0:
            extras = StepExtras(nonfinite=True) if t > 250.0 else None
            d.handle(StepBatch("waste", pid, ((int(t), now - 1.0, now, 8, extras),), 0))

    run_for(d, clock, 300.0, every=steps)
    d.handle(Bye("waste", pid, "finished", t0 + 300.0))
    run_for(d, clock, 2.0)
    d.attribute_all()
    run = d.runs["waste"]
    # idle: 100-200 s (no step ends there and the device sits at idle power, utilization 0);
    # nonfinite: from the end of the first NaN step (251 s) to the run's end (300 s). Sampled
    # once a second and attributed in intervals half a second off the sample times, each edge
    # is known to within about one sample.
    assert run.cost.waste_gpu_seconds["idle"] == pytest.approx(100.0, abs=1.5)
    assert run.cost.waste_gpu_seconds["nonfinite"] == pytest.approx(49.0, abs=1.0)
    idle_s = run.cost.waste_gpu_seconds["idle"]
    assert run.cost.waste_cost["idle"] == pytest.approx(idle_s * 0.001, rel=1e-9)
    assert run.cost.waste_energy_j["idle"] == pytest.approx(idle_w * idle_s, rel=0.02)
    assert run.cost.waste_total == pytest.approx(
        run.cost.waste_cost["idle"] + run.cost.waste_cost["nonfinite"]
    )
    assert IDLE_UTILIZATION < 0.1


def test_metrics_show_live_cost_rate_and_projection(tmp_path):

    from profiler.daemon.exporter import render_metrics

    d, sim, clock = make_daemon(tmp_path, [[(4000.0, 250.0)]])
    d.set_pricing(pricing(kind="flat", gph=3.6, kwh=0.2, pue=1.5, carbon=300.0))
    pid = os.getpid()
    t0 = clock.now
    d.sample()
    d.handle(hello("live", pid, t0))
    d.runs["live"].total_steps = 400
    run_for(d, clock, 100.0, every=lambda now: d.handle(StepBatch(
        "live", pid, ((int(now - t0), now - 1.0, now, 8, None),), 0)))  # fmt: skip
    text = render_metrics(d).decode()
    run = d.runs["live"]
    # one GPU at 250 W: 3.6/h for the GPU plus 0.25 kW x 1.5 x 0.2/kWh = 0.075/h
    assert sample_value(text, "profiler_run_cost_rate_per_hour", run="live") == pytest.approx(
        3.675, rel=1e-6
    )
    assert sample_value(text, "profiler_run_projected_cost", run="live") == pytest.approx(
        run.cost.total * 400 / run.steps, rel=1e-9
    )
    end = sample_value(text, "profiler_run_projected_end_time_seconds", run="live")
    assert end == pytest.approx(d.wall() + (400 - run.steps) * 1.0, rel=1e-9)
    assert sample_value(text, "profiler_pricing_info", kind="flat", pue="1.5") == 1
    cost = sample_value(text, "profiler_run_cost_total", run="live", component="gpu_time")
    assert cost == pytest.approx(run.cost.gpu_time_cost, rel=1e-9)


def test_unpriced_runs_record_no_money_and_a_currency_change_never_mixes_sums(tmp_path):
    d, sim, clock = make_daemon(tmp_path, [[(1000.0, 200.0)]])
    pid = os.getpid()
    t0 = clock.now
    d.sample()
    d.handle(hello("cur", pid, t0))
    d.set_pricing(pricing(kind="none", gph=0.0, carbon=None, profile="none"))
    run_for(d, clock, 10.0)
    run = d.runs["cur"]
    assert run.cost.currency == "" and not run.cost.co2_known and run.cost.total == 0
    d.set_pricing(pricing(kind="flat", gph=3.6, profile="flat USD"))
    run_for(d, clock, 10.0)
    assert run.cost.currency == "USD" and run.cost.total > 0
    before = run.cost.total
    eur = Pricing(**{**pricing(kind="flat", gph=1.0).__dict__, "currency": "EUR"})
    d.set_pricing(eur)
    run_for(d, clock, 10.0)
    assert run.cost.total == before and run.cost.currency == "USD"
    assert d.cost_meter.currency_mismatches > 0
    d.flush()
    assert d.ledger.run("cur")["currency"] == "USD"
