"""profiler.carbon reads codecarbon's bundled data without importing codecarbon; its figures must
equal what codecarbon itself computes (through its internal API)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from profiler import carbon

needs_codecarbon = pytest.mark.skipif(
    importlib.util.find_spec("codecarbon") is None, reason="codecarbon is not installed"
)


def codecarbon_private_g_per_kwh(iso3: str, region: str | None = None) -> float:
    """gCO2e for 1 kWh as codecarbon computes it (internal API, may change upstream)."""
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    geo = GeoMetadata(country_iso_code=iso3, region=region)
    return Emissions(DataSource()).get_private_infra_emissions(Energy(kWh=1.0), geo) * 1000


def codecarbon_cloud_g_per_kwh(provider: str, region: str) -> float:
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import CloudMetadata
    from codecarbon.input import DataSource

    cloud = CloudMetadata(provider=provider, region=region)
    return Emissions(DataSource()).get_cloud_emissions(Energy(kWh=1.0), cloud) * 1000


@needs_codecarbon
@pytest.mark.parametrize("iso3", ["USA", "FRA", "DEU", "IND"])
def test_country_intensity_equals_codecarbon(iso3):
    assert carbon.country_intensity(iso3) == pytest.approx(codecarbon_private_g_per_kwh(iso3))


@needs_codecarbon
def test_country_figures_match_the_note():
    # notes/prices-and-carbon.md: USA 369.5, FRA 56.0, DEU 380.9, IND 713.4 (rounded).
    assert carbon.country_intensity("USA") == pytest.approx(369.5, abs=0.05)
    assert carbon.country_intensity("fra") == pytest.approx(56.0, abs=0.05)
    assert carbon.country_intensity("DEU") == pytest.approx(380.9, abs=0.1)
    assert carbon.country_intensity("IND") == pytest.approx(713.4, abs=0.05)


@needs_codecarbon
def test_gcp_region_intensity_equals_codecarbon():
    expected = codecarbon_cloud_g_per_kwh("gcp", "us-central1")
    assert carbon.gcp_region_intensity("us-central1") == pytest.approx(expected)
    assert carbon.gcp_region_intensity("gcp:us-central1") == pytest.approx(expected)
    assert expected == pytest.approx(430.0)  # the note's figure


@needs_codecarbon
def test_us_state_intensity_equals_codecarbon_and_converts_lbs_per_mwh():
    expected = codecarbon_private_g_per_kwh("USA", region="new york")
    assert carbon.us_state_intensity("NY") == pytest.approx(expected)
    assert carbon.us_state_intensity("New York") == pytest.approx(expected)
    path = carbon.codecarbon_dir() / "data/private_infra/2023/usa_emissions.json"
    lbs_per_mwh = json.loads(path.read_text())["new york"]["emissions"]
    # 1 lb/MWh = 453.59237 g / 1000 kWh
    assert carbon.us_state_intensity("ny") == pytest.approx(lbs_per_mwh * 453.59237 / 1000)


@needs_codecarbon
@pytest.mark.parametrize(
    ("fn", "code", "suggestion"),
    [
        (carbon.country_intensity, "USX", "USA"),
        (carbon.country_intensity, "France", "FRA"),
        (carbon.us_state_intensity, "new yrok", "new york"),
        (carbon.gcp_region_intensity, "us-centrl1", "us-central1"),
    ],
)
def test_unknown_codes_give_one_line_with_suggestions(fn, code, suggestion):
    with pytest.raises(carbon.CarbonError) as e:
        fn(code)
    message = str(e.value)
    assert "\n" not in message
    assert repr(code) in message
    assert suggestion in message


@needs_codecarbon
def test_aws_region_is_refused_with_a_hint():
    with pytest.raises(carbon.CarbonError, match="GCP regions only") as e:
        carbon.gcp_region_intensity("aws:us-east-1")
    assert "\n" not in str(e.value)


def test_missing_codecarbon_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(carbon, "_find_spec", lambda name: None)
    for fn, code in [
        (carbon.country_intensity, "USA"),
        (carbon.us_state_intensity, "NY"),
        (carbon.gcp_region_intensity, "us-central1"),
    ]:
        with pytest.raises(carbon.CarbonError) as e:
            fn(code)
        message = str(e.value)
        assert "\n" not in message
        assert "install ml-energy-profiler[carbon]" in message
        assert "carbon_g_per_kwh" in message


def test_import_loads_neither_pandas_nor_codecarbon():
    code = (
        "import sys, json, profiler.carbon, profiler.pricing, profiler.prices_cli; "
        "print(json.dumps([m for m in ('pandas', 'codecarbon') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@needs_codecarbon
def test_lookups_load_neither_pandas_nor_codecarbon():
    code = (
        "import sys, json; from profiler import carbon; "
        "carbon.country_intensity('USA'); carbon.us_state_intensity('NY'); "
        "carbon.gcp_region_intensity('us-central1'); "
        "print(json.dumps([m for m in ('pandas', 'codecarbon') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
