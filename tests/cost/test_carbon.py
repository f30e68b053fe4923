"""profiler.cost.carbon reads codecarbon's figures from the profiler's packaged data file (made by
tools/update_carbon_data.py) without importing codecarbon; its figures must equal what codecarbon
itself computes (through its internal API)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from profiler.cost import carbon

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


def test_missing_data_file_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setattr(carbon, "_data_path", lambda: tmp_path / "absent.json")
    for fn, code in [
        (carbon.country_intensity, "USA"),
        (carbon.us_state_intensity, "NY"),
        (carbon.gcp_region_intensity, "us-central1"),
    ]:
        with pytest.raises(carbon.CarbonError) as e:
            fn(code)
        message = str(e.value)
        assert "\n" not in message
        assert "absent.json" in message and "carbon_g_per_kwh" in message


def test_co2_is_known_without_codecarbon_for_the_demo_pricing(tmp_path):
    # `python -S`: no site-packages at all, so codecarbon cannot be found or imported, as on a
    # fresh `make demo` venv. The demo prices its simulated A100 as aws:p4d.24xlarge (us-east-1,
    # the USA); the packaged figures still give the USA's intensity (codecarbon 3.3.2: 369.5).
    root = Path(__file__).resolve().parents[2]
    code = (
        "import importlib.util, json, sys\n"
        "from profiler.cost import carbon, pricing\n"
        "p = pricing.resolve_pricing({'pricing': 'aws:p4d.24xlarge'}, env={})\n"
        "print(json.dumps({'found': importlib.util.find_spec('codecarbon') is not None,\n"
        "    'g': p.carbon_g_per_kwh, 'source': p.sources['carbon_g_per_kwh'],\n"
        "    'state': carbon.us_state_intensity('NY'),\n"
        "    'gcp': carbon.gcp_region_intensity('gcp:us-central1')}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["found"] is False
    assert got["g"] == pytest.approx(369.5, abs=0.05)
    assert "codecarbon 3.3" in got["source"] and "USA" in got["source"]
    assert got["state"] > 0 and got["gcp"] == 430


def test_packaged_file_records_version_licence_and_origin_of_every_figure():
    data = json.loads(carbon.DATA_FILE.read_text(encoding="utf-8"))
    about = data["_about"]
    assert about["codecarbon_version"] == carbon.codecarbon_version()
    assert about["codecarbon_version"].startswith("3.3.")
    assert about["codecarbon_licence"].startswith("MIT License")
    assert "Code Carbon" in about["codecarbon_licence"]
    for section in ("countries", "us_states", "gcp_regions"):
        assert data[section], section
        for key, entry in data[section].items():
            assert entry["from"].startswith("data/"), (section, key)
    assert len(data["countries"]) > 200 and len(data["us_states"]) >= 50


@needs_codecarbon
def test_packaged_file_is_what_the_tool_makes_from_the_installed_codecarbon():
    if carbon.installed_codecarbon_version() != carbon.codecarbon_version():
        pytest.skip("the installed codecarbon is not the packaged data's version")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "tools" / "update_carbon_data.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_wheel_carries_the_data_file(tmp_path):
    # Built from a copy, so that setuptools' build/ folder is not left in the checkout.
    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    for name in ("profiler", "hooks"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel"), str(src)],
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {out.stderr.strip().splitlines()[-1:]}")
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert "profiler/cost/data/carbon_intensity.json" in z.namelist()


def test_import_loads_neither_pandas_nor_codecarbon():
    code = (
        "import sys, json, profiler.cost.carbon, profiler.cost.pricing, profiler.cli.prices; "
        "print(json.dumps([m for m in ('pandas', 'codecarbon') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@needs_codecarbon
def test_lookups_load_neither_pandas_nor_codecarbon():
    code = (
        "import sys, json; from profiler.cost import carbon; "
        "carbon.country_intensity('USA'); carbon.us_state_intensity('NY'); "
        "carbon.gcp_region_intensity('us-central1'); "
        "print(json.dumps([m for m in ('pandas', 'codecarbon') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
