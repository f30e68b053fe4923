"""profiler.cost.pricing and profiler.cli.prices: expectations computed by hand from the figures in
notes/prices-and-carbon.md, never copied from the code's own output."""

from __future__ import annotations

import datetime
import importlib.util
import json

import pytest

from profiler.cli.prices import render_catalog, render_effective
from profiler.cost import carbon
from profiler.cost.catalog import load_catalog
from profiler.cost.pricing import Pricing, resolve_pricing
from profiler.cost.settings import PricingError

needs_codecarbon = pytest.mark.skipif(
    importlib.util.find_spec("codecarbon") is None, reason="codecarbon is not installed"
)

WHERE = "/home/u/.profiler/profiler.toml"
TODAY = datetime.date(2026, 11, 24)  # the day the note's figures were gathered

P4D_PER_HOUR = 21.957642  # aws:p4d.24xlarge on demand, USD per hour (the note; test_catalog.py)

ONPREM = {
    "capex_per_gpu": 30000,
    "lifetime_years": 4,
    "utilization": 0.7,
    "electricity_price_kwh": 0.10,
    "pue": 1.5,
}


def resolve(cost: dict, catalog: dict | None = None, env: dict | None = None) -> Pricing:
    return resolve_pricing(cost, catalog, where=WHERE, env=env or {})


# --- cloud ---------------------------------------------------------------------------------------


def test_p4d_on_demand():
    p = resolve({"pricing": "aws:p4d.24xlarge", "carbon_g_per_kwh": 0})
    assert p.kind == "cloud"
    assert p.profile == "aws:p4d.24xlarge (on_demand)"
    assert p.currency == "USD"
    assert p.gpu_hour_price == pytest.approx(P4D_PER_HOUR / 8)
    assert p.energy_price_kwh == 0
    assert p.pue == 1.15  # AWS
    # An 8-GPU run for 2 hours: 16 GPU-hours at the instance price per GPU.
    assert 8 * 2 * p.gpu_hour_price == pytest.approx(8 * 2 * P4D_PER_HOUR / 8)
    assert "packaged prices.toml" in p.sources["gpu_hour_price"]
    assert p.as_of == "2026-11-09"


@pytest.mark.parametrize(
    ("instance", "market", "per_hour", "gpus"),
    [
        ("gcp:a2-highgpu-8g", "spot", 15.42, 8),
        ("gcp:a3-highgpu-8g", "spot", 50.61, 8),
        ("gcp:g2-standard-4", "spot", 0.397, 1),
        ("azure:ND96asr_v4", "spot", 2.99, 8),
        ("aws:p4d.24xlarge", "reserved_1y", 13.92, 8),
    ],
)
def test_dated_markets(instance, market, per_hour, gpus):
    p = resolve({"pricing": instance, "market": market, "carbon_g_per_kwh": 0})
    assert p.gpu_hour_price == pytest.approx(per_hour / gpus)
    assert p.profile == f"{instance} ({market})"


def test_gcp_spot_dated_july_2026():
    p = resolve({"pricing": "gcp:a2-highgpu-8g", "market": "spot", "carbon_g_per_kwh": 0})
    assert "as_of 2026-07-30" in p.sources["gpu_hour_price"]


def test_market_without_a_price_names_what_the_instance_has():
    with pytest.raises(PricingError) as e:
        resolve({"pricing": "aws:p4d.24xlarge", "market": "spot"})
    message = str(e.value)
    assert "\n" not in message
    assert "'market'" in message and "on_demand" in message and "reserved_1y" in message


def test_currency_matching_the_catalog_is_accepted():
    p = resolve({"pricing": "aws:g5.xlarge", "currency": "usd", "carbon_g_per_kwh": 0})
    assert p.currency == "USD"
    assert p.gpu_hour_price == pytest.approx(1.006)


# --- on-prem and flat ------------------------------------------------------------------------


def test_onprem():
    p = resolve({"pricing": "onprem", "onprem": dict(ONPREM), "carbon_g_per_kwh": 0})
    assert p.kind == "onprem" and p.profile == "onprem"
    assert p.gpu_hour_price == pytest.approx(30000 / (4 * 8760 * 0.7))
    assert p.gpu_hour_price == pytest.approx(1.22, abs=0.005)  # the note's worked example
    assert p.energy_price_kwh == 0.10
    assert p.pue == 1.5
    assert p.currency == "USD"


def test_onprem_with_opex():
    p = resolve({"pricing": "onprem", "onprem": {**ONPREM, "opex_per_gpu_hour": 0.25}})
    assert p.gpu_hour_price == pytest.approx(30000 / (4 * 8760 * 0.7) + 0.25)


def test_onprem_default_pue_is_the_industry_figure():
    onprem = {k: v for k, v in ONPREM.items() if k != "pue"}
    p = resolve({"pricing": "onprem", "onprem": onprem})
    assert p.pue == 1.58
    assert "pue.industry" in p.sources["pue"]


def test_onprem_electricity_from_the_catalog():
    onprem = {k: v for k, v in ONPREM.items() if k != "electricity_price_kwh"}
    onprem.update(electricity="US-NY", electricity_tariff="industrial")
    p = resolve({"pricing": "onprem", "onprem": onprem})
    assert p.energy_price_kwh == pytest.approx(8.92 / 100)
    assert p.as_of == "2025-04-30"
    onprem.update(electricity="EU", electricity_tariff="non_household")
    p = resolve({"pricing": "onprem", "onprem": onprem})
    assert (p.currency, p.energy_price_kwh) == ("EUR", 0.1902)


def test_flat():
    p = resolve({"pricing": "flat", "gpu_hour_price": 2.5, "energy_price_kwh": 0.12})
    assert (p.kind, p.profile, p.currency) == ("flat", "flat", "USD")
    assert p.gpu_hour_price == 2.5
    assert p.energy_price_kwh == 0.12
    assert p.pue == 1.58
    assert p.sources["gpu_hour_price"] == f"{WHERE} [cost]"


def test_flat_pue_override_and_currency():
    p = resolve({"pricing": "flat", "gpu_hour_price": 1, "pue": 1.2, "currency": "EUR"})
    assert (p.pue, p.currency) == (1.2, "EUR")


def test_no_pricing():
    p = resolve({})
    assert (p.kind, p.profile, p.gpu_hour_price, p.energy_price_kwh) == ("none", "none", 0, 0)
    assert p.carbon_g_per_kwh is None and p.as_of == "" and p.sources == {}


# --- catalog overrides ---------------------------------------------------------------------------


def test_catalog_override_changes_the_price_and_sources_say_profiler_toml():
    catalog = {"instances": {"aws:p4d.24xlarge": {"on_demand": 20.0, "as_of": "2026-11-20"}}}
    p = resolve({"pricing": "aws:p4d.24xlarge", "carbon_g_per_kwh": 0}, catalog)
    assert p.gpu_hour_price == pytest.approx(20.0 / 8)
    assert "profiler.toml" in p.sources["gpu_hour_price"]
    assert "packaged" not in p.sources["gpu_hour_price"]
    assert p.as_of == "2026-11-20"
    # Figures not overridden keep their packaged provenance.
    p = resolve(
        {"pricing": "aws:p4d.24xlarge", "market": "reserved_1y", "carbon_g_per_kwh": 0}, catalog
    )
    assert p.gpu_hour_price == pytest.approx(13.92 / 8)
    assert "packaged prices.toml" in p.sources["gpu_hour_price"]


def test_added_instance():
    catalog = {
        "instances": {
            "lambda:gpu_8x_a100": {
                "gpus": 8,
                "gpu_model": "A100-SXM4-40GB",
                "on_demand": 14.32,
                "region": "us-west-1",
                "source": "my invoice",
                "as_of": datetime.date(2026, 11, 1),  # a TOML date, unquoted
            }
        }
    }
    p = resolve({"pricing": "lambda:gpu_8x_a100", "carbon_g_per_kwh": 0}, catalog)
    assert p.gpu_hour_price == pytest.approx(14.32 / 8)
    assert p.pue == 1.58  # no [pue.lambda]: industry
    assert p.as_of == "2026-11-01"
    assert "profiler.toml" in p.sources["gpu_hour_price"]
    assert "my invoice" in p.sources["gpu_hour_price"]
    assert "lambda:gpu_8x_a100" in load_catalog(catalog)["instances"]


# --- environment -------------------------------------------------------------------------------


def test_environment_wins_over_the_file():
    cost = {"pricing": "aws:p4d.24xlarge", "carbon_g_per_kwh": 100}
    env = {"PROFILER_PRICING": "gcp:a2-highgpu-8g", "PROFILER_MARKET": "spot",
           "PROFILER_CARBON_G_PER_KWH": "250"}  # fmt: skip
    p = resolve(cost, env=env)
    assert p.profile == "gcp:a2-highgpu-8g (spot)"
    assert p.gpu_hour_price == pytest.approx(15.42 / 8)
    assert p.carbon_g_per_kwh == 250
    assert p.sources["pricing"] == "environment PROFILER_PRICING"
    assert p.sources["carbon_g_per_kwh"] == "environment PROFILER_CARBON_G_PER_KWH"
    assert p.carbon_source == "environment PROFILER_CARBON_G_PER_KWH carbon_g_per_kwh"


def test_environment_gpu_hour_price():
    p = resolve({}, env={"PROFILER_PRICING": "flat", "PROFILER_GPU_HOUR_PRICE": "3.5"})
    assert (p.kind, p.gpu_hour_price) == ("flat", 3.5)
    assert "environment PROFILER_GPU_HOUR_PRICE" in p.sources["gpu_hour_price"]
    # Over a cloud instance it replaces the catalog price per GPU-hour.
    p = resolve(
        {"pricing": "aws:p4d.24xlarge", "carbon_g_per_kwh": 0},
        env={"PROFILER_GPU_HOUR_PRICE": "2"},
    )
    assert p.gpu_hour_price == 2.0
    assert "environment PROFILER_GPU_HOUR_PRICE" in p.sources["gpu_hour_price"]


@needs_codecarbon
def test_environment_country_wins_over_the_file():
    p = resolve({"pricing": "flat", "gpu_hour_price": 1, "country": "USA"},
                env={"PROFILER_COUNTRY": "FRA"})  # fmt: skip
    assert p.carbon_g_per_kwh == pytest.approx(56.0, abs=0.05)  # the note: FRA 56.0
    assert "environment PROFILER_COUNTRY" in p.sources["carbon_g_per_kwh"]


# --- carbon ------------------------------------------------------------------------------------


@needs_codecarbon
def test_carbon_from_country_state_and_region():
    flat = {"pricing": "flat", "gpu_hour_price": 1}
    p = resolve({**flat, "country": "USA"})
    assert p.carbon_g_per_kwh == pytest.approx(369.5, abs=0.05)
    assert p.carbon_source == "codecarbon global_energy_mix USA"
    p = resolve({**flat, "region": "gcp:us-central1"})
    assert p.carbon_g_per_kwh == 430
    assert p.carbon_source == "codecarbon impact.csv gcp:us-central1"
    p = resolve({**flat, "country": "USA", "us_state": "NY"})
    path = carbon.codecarbon_dir() / "data/private_infra/2023/usa_emissions.json"
    lbs_per_mwh = json.loads(path.read_text())["new york"]["emissions"]
    assert p.carbon_g_per_kwh == pytest.approx(lbs_per_mwh * 0.45359237)
    p = resolve({**flat, "country": "USA", "carbon_g_per_kwh": 400})
    assert p.carbon_g_per_kwh == 400  # the fixed override wins
    assert p.carbon_source == f"{WHERE} [cost] carbon_g_per_kwh"


@needs_codecarbon
def test_cloud_instance_carbon_defaults_to_its_region():
    p = resolve({"pricing": "gcp:a2-highgpu-8g"})
    assert p.carbon_g_per_kwh == 430  # gcp us-central1 in impact.csv
    p = resolve({"pricing": "aws:p4d.24xlarge"})
    assert p.carbon_g_per_kwh == pytest.approx(369.5, abs=0.05)  # us-east-1 -> USA
    p = resolve({"pricing": "azure:ND96isr_H100_v5"})
    assert p.carbon_g_per_kwh == pytest.approx(369.5, abs=0.05)  # eastus -> USA
    p = resolve({"pricing": "aws:p4d.24xlarge", "country": "FRA"})
    assert p.carbon_g_per_kwh == pytest.approx(56.0, abs=0.05)


def test_without_the_carbon_data_file(monkeypatch, tmp_path):
    # codecarbon's figures ship in profiler/cost/data (tests/cost/test_carbon.py checks them without
    # codecarbon); should that file be missing, carbon is unknown, never 0.
    monkeypatch.setattr(carbon, "_data_path", lambda: tmp_path / "absent.json")
    p = resolve({"pricing": "aws:p4d.24xlarge"})
    assert p.carbon_g_per_kwh is None
    assert "absent.json" in p.sources["carbon_g_per_kwh"]
    with pytest.raises(PricingError) as e:
        resolve({"pricing": "aws:p4d.24xlarge", "country": "USA"})
    assert "\n" not in str(e.value)
    assert "'country'" in str(e.value) and "carbon_g_per_kwh" in str(e.value)
    assert resolve({"pricing": "aws:p4d.24xlarge", "carbon_g_per_kwh": 12}).carbon_g_per_kwh == 12


# --- bad input: one line naming the key --------------------------------------------------------

P4D = {"pricing": "aws:p4d.24xlarge"}
ONPREM_COST = {"pricing": "onprem", "onprem": ONPREM}

BAD = [
    # (cost, catalog overrides, env, the key the message must name)
    ({"pricng": "flat"}, None, {}, "pricng"),
    ({"pricing": "aws:nope.large"}, None, {}, "pricing"),
    ({**P4D, "market": "cheap"}, None, {}, "market"),
    ({"pricing": "flat"}, None, {}, "gpu_hour_price"),
    ({"pricing": "flat", "gpu_hour_price": -1}, None, {}, "gpu_hour_price"),
    ({"pricing": "flat", "gpu_hour_price": "two"}, None, {}, "gpu_hour_price"),
    ({"pricing": "flat", "gpu_hour_price": True}, None, {}, "gpu_hour_price"),
    ({"pricing": "flat", "gpu_hour_price": 1, "energy_price_kwh": -0.1}, None, {},
     "energy_price_kwh"),
    ({"pricing": "flat", "gpu_hour_price": 1, "pue": 0.9}, None, {}, "pue"),
    ({**P4D, "pue": 0.5}, None, {}, "pue"),
    ({**P4D, "currency": "EUR"}, None, {}, "currency"),
    ({**P4D, "currency": "dollars"}, None, {}, "currency"),
    ({**P4D, "gpu_hour_price": 2}, None, {}, "gpu_hour_price"),
    ({**P4D, "energy_price_kwh": 0.1}, None, {}, "energy_price_kwh"),
    ({"pricing": "flat", "gpu_hour_price": 1, "market": "spot"}, None, {}, "market"),
    ({"pricing": "onprem"}, None, {}, "cost.onprem"),
    ({"pricing": "onprem", "onprem": {**ONPREM, "utilization": 0}}, None, {}, "utilization"),
    ({"pricing": "onprem", "onprem": {**ONPREM, "utilization": 1.2}}, None, {}, "utilization"),
    ({"pricing": "onprem", "onprem": {**ONPREM, "lifetime_years": 0}}, None, {}, "lifetime_years"),
    ({"pricing": "onprem", "onprem": {**ONPREM, "lifetime_years": -4}}, None, {},
     "lifetime_years"),
    ({"pricing": "onprem", "onprem": {**ONPREM, "capex_per_gpu": -1}}, None, {}, "capex_per_gpu"),
    ({"pricing": "onprem", "onprem": {**ONPREM, "pue": 0.99}}, None, {}, "pue"),
    ({"pricing": "onprem", "onprem": {**ONPREM, "electricity_price_kwh": -0.1}}, None, {},
     "electricity_price_kwh"),
    ({"pricing": "onprem", "onprem": {**ONPREM, "capex": 1}}, None, {}, "capex"),
    ({"pricing": "onprem", "onprem": {k: v for k, v in ONPREM.items() if k != "utilization"}},
     None, {}, "utilization"),
    ({"pricing": "onprem",
      "onprem": {**{k: v for k, v in ONPREM.items() if k != "electricity_price_kwh"},
                 "electricity": "US-NY"}}, None, {}, "electricity_tariff"),
    ({"pricing": "onprem", "currency": "USD",
      "onprem": {**{k: v for k, v in ONPREM.items() if k != "electricity_price_kwh"},
                 "electricity": "EU"}}, None, {}, "currency"),
    ({"pricing": "flat", "onprem": ONPREM, "gpu_hour_price": 1}, None, {}, "onprem"),
    ({"pricing": "flat", "gpu_hour_price": 1, "carbon_g_per_kwh": -5}, None, {},
     "carbon_g_per_kwh"),
    ({"pricing": "flat", "gpu_hour_price": 1, "region": "us-central1"}, None, {}, "region"),
    ({"pricing": "flat", "gpu_hour_price": 1, "region": "aws:us-east-1"}, None, {}, "region"),
    ({"pricing": "flat", "gpu_hour_price": 1, "region": "gcp:us-central1", "country": "USA"},
     None, {}, "region"),
    ({"pricing": "flat", "gpu_hour_price": 1, "country": "FRA", "us_state": "NY"}, None, {},
     "us_state"),
    ({"pricing": "flat", "gpu_hour_price": 1, "region": "gcp:us-east1", "us_state": "TX"}, None,
     {}, "region"),
    # environment
    ({}, None, {"PROFILER_GPU_HOUR_PRICE": "2"}, "PROFILER_GPU_HOUR_PRICE"),
    ({}, None, {"PROFILER_PRICING": "flat", "PROFILER_GPU_HOUR_PRICE": "abc"},
     "PROFILER_GPU_HOUR_PRICE"),
    ({}, None, {"PROFILER_PRICING": "flat", "PROFILER_GPU_HOUR_PRICE": "nan"},
     "PROFILER_GPU_HOUR_PRICE"),
    (P4D, None, {"PROFILER_MARKET": "spot"}, "PROFILER_MARKET"),
    ({"pricing": "flat", "gpu_hour_price": 1}, None, {"PROFILER_CARBON_G_PER_KWH": "lots"},
     "PROFILER_CARBON_G_PER_KWH"),
    # [catalog] overrides
    (P4D, {"instances": {"aws:new.box": {"on_demand": 3.0}}}, {}, "gpus"),
    (P4D, {"instances": {"aws:new.box": {"gpus": 0, "on_demand": 3.0}}}, {}, "gpus"),
    (P4D, {"instances": {"aws:new.box": {"gpus": 1}}}, {}, "on_demand"),
    (P4D, {"instances": {"aws:p4d.24xlarge": {"on_demand": 0}}}, {}, "on_demand"),
    (P4D, {"instances": {"aws:p4d.24xlarge": {"on_demand": -20}}}, {}, "on_demand"),
    (P4D, {"instances": {"aws:p4d.24xlarge": {"spot": "cheap"}}}, {}, "spot"),
    (P4D, {"instances": {"aws:p4d.24xlarge": {"as_of": "last week"}}}, {}, "as_of"),
    (P4D, {"instances": {"aws:p4d.24xlarge": {"spot": 9, "spot_as_of": "2026-13-01"}}}, {},
     "spot_as_of"),
    (P4D, {"instances": {"aws:p4d.24xlarge": {"price": 9}}}, {}, "price"),
    (P4D, {"instances": {"nocolon": {"gpus": 1, "on_demand": 1}}}, {}, "nocolon"),
    (P4D, {"instance": {}}, {}, "instance"),
    (P4D, {"pue": {"aws": {"value": 0.8}}}, {}, "value"),
    (P4D, {"electricity": {"US-TX": {"commercial": 0.1}}}, {}, "currency"),
    (P4D, {"gpus": {"B200": {"source": "x"}}}, {}, "watts"),
]  # fmt: skip


@pytest.mark.parametrize(("cost", "catalog", "env", "key"), BAD)
def test_bad_input_is_one_line_naming_the_key(cost, catalog, env, key):
    with pytest.raises(PricingError) as e:
        resolve(cost, catalog, env)
    message = str(e.value)
    assert "\n" not in message
    assert key in message
    where = [WHERE, "environment"]
    assert any(w in message for w in where), message


@needs_codecarbon
@pytest.mark.parametrize(
    ("cost", "key", "suggestion"),
    [
        ({"country": "USX"}, "country", "USA"),
        ({"country": "France"}, "country", "FRA"),
        ({"region": "gcp:us-centrl1"}, "region", "us-central1"),
        ({"us_state": "new yrok"}, "us_state", "new york"),
    ],
)
def test_unknown_carbon_codes_suggest_the_nearest(cost, key, suggestion):
    with pytest.raises(PricingError) as e:
        resolve({"pricing": "flat", "gpu_hour_price": 1, **cost})
    message = str(e.value)
    assert "\n" not in message
    assert f"'{key}'" in message and suggestion in message and WHERE in message


def test_misspelt_instance_suggests_the_nearest():
    with pytest.raises(PricingError) as e:
        resolve({"pricing": "aws:p4d.24xlarg"})
    message = str(e.value)
    assert "\n" not in message
    assert "'aws:p4d.24xlarge'" in message
    assert "pricing" in message


def test_unknown_cost_key_lists_the_known_keys():
    with pytest.raises(PricingError) as e:
        resolve({"pricing": "flat", "gpu_hour_price": 1, "countr": "USA"})
    message = str(e.value)
    assert "'countr'" in message and "'country'" in message and "known keys" in message
    assert "carbon_g_per_kwh" in message


# --- what `profiler prices` prints ---------------------------------------------------------------


def test_render_effective_names_every_number_and_warns_on_stale():
    p = resolve({"pricing": "aws:g5.12xlarge", "carbon_g_per_kwh": 123})
    text = render_effective(p, TODAY)
    assert "aws:g5.12xlarge (on_demand)" in text
    assert "1.418 USD/GPU-h" in text  # 5.672 / 4
    assert "packaged prices.toml" in text and "tsaol/aws-gpu" in text
    assert "1.15" in text and "pue.aws" in text
    assert "123 gCO2e/kWh" in text and f"{WHERE} [cost]" in text
    warnings = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "2026-01-21" in warnings[0]
    fresh = render_effective(resolve({"pricing": "aws:p5.48xlarge", "carbon_g_per_kwh": 1}), TODAY)
    assert "WARNING" not in fresh
    assert "6.88 USD/GPU-h" in fresh  # 55.04 / 8


def test_render_effective_without_pricing():
    text = render_effective(resolve({}), TODAY)
    assert "No pricing configured" in text and "WARNING" not in text


def test_render_catalog():
    catalog = load_catalog({"instances": {"aws:p5.48xlarge": {"on_demand": 50.0}}})
    text = render_catalog(catalog)
    lines = text.splitlines()
    p4d = next(line for line in lines if line.startswith("aws:p4d.24xlarge"))
    assert "21.9576" in p4d and f"{P4D_PER_HOUR / 8:.4f}" in p4d and "13.92" in p4d
    assert "2026-11-09" in p4d
    a2 = next(line for line in lines if line.startswith("gcp:a2-highgpu-8g"))
    assert "15.42" in a2
    p5 = next(line for line in lines if line.startswith("aws:p5.48xlarge"))
    assert "*" in p5 and "6.25" in p5  # 50 / 8, overridden
    assert any(line.startswith("A100-SXM4-40GB") and "400" in line for line in lines)
    assert any(line.startswith("EU") and "0.1902" in line and "EUR" in line for line in lines)
    assert any(line.startswith("industry") and "1.58" in line for line in lines)
