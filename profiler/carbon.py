"""Grid carbon intensity (gCO2e/kWh) from the data files bundled with codecarbon (MIT licence).

codecarbon has no public lookup function, and importing it costs ~0.15 s and pulls in pandas.
This module therefore never imports codecarbon: it locates the installed package with
:func:`importlib.util.find_spec` and reads three of its data files directly (standard library
only, parsed once and cached):

- ``data/private_infra/global_energy_mix.json``: per ISO-3 country, ``carbon_intensity``
  (gCO2e/kWh);
- ``data/private_infra/2023/usa_emissions.json``: per US state, EPA eGRID ``emissions`` in
  lbs/MWh (converted here: 1 lb/MWh = 0.45359237 g/kWh);
- ``data/cloud/impact.csv``: per GCP region, ``impact`` (gCO2e/kWh); the file starts with a BOM.

Every lookup returns gCO2e/kWh or raises :class:`CarbonError` with a one-line message (nearest
known codes suggested). Without codecarbon installed, every lookup raises a CarbonError saying
to install ``ml-energy-profiler[carbon]`` or to set ``carbon_g_per_kwh``.
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

LBS_PER_MWH_TO_G_PER_KWH = 0.45359237  # 1 lb = 453.59237 g, 1 MWh = 1000 kWh

GLOBAL_ENERGY_MIX = "data/private_infra/global_energy_mix.json"
USA_EMISSIONS = "data/private_infra/2023/usa_emissions.json"
CLOUD_IMPACT = "data/cloud/impact.csv"
INTENSITY_PER_SOURCE = "data/private_infra/carbon_intensity_per_source.json"

NOT_INSTALLED = (
    "codecarbon is not installed, so grid carbon intensity is unknown: "
    "install ml-energy-profiler[carbon] or set carbon_g_per_kwh"
)


class CarbonError(ValueError):
    """An unknown code or missing data; the message is one line."""


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec`` (a seam for tests); finding a spec imports nothing."""
    return importlib.util.find_spec(name)


def codecarbon_dir() -> Path:
    """The installed codecarbon package directory, without importing it.

    Raises :class:`CarbonError` when codecarbon is not installed.
    """
    spec = _find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise CarbonError(NOT_INSTALLED)
    return Path(next(iter(spec.submodule_search_locations)))


def codecarbon_version() -> str:
    """The installed codecarbon version ("" when unknown); reads metadata only."""
    try:
        return importlib.metadata.version("codecarbon")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _data_file(relative: str) -> Path:
    path = codecarbon_dir() / relative
    if not path.is_file():
        version = codecarbon_version() or "unknown version"
        raise CarbonError(f"codecarbon ({version}) has no {relative}: set carbon_g_per_kwh")
    return path


@functools.cache
def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def _read_impact(path: str) -> dict[str, dict[str, str]]:
    """impact.csv rows keyed ``provider:region`` (lower case)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return {
            f"{row['provider'].strip().lower()}:{row['region'].strip().lower()}": row
            for row in csv.DictReader(f)
        }


def clear_cache() -> None:
    """Forget the parsed files (after codecarbon was installed, upgraded or removed)."""
    _read_json.cache_clear()
    _read_impact.cache_clear()


def _suggest(value: str, choices: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(value, choices, n=n, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def country_intensity(iso3: str) -> float:
    """Average grid intensity of a country, gCO2e/kWh, from codecarbon's global_energy_mix.json.

    ``iso3`` is an ISO 3166-1 alpha-3 code (``"USA"``, ``"FRA"``), case-insensitive. Where the
    file has no ``carbon_intensity`` for a country, it is computed from the country's energy mix
    with codecarbon's per-source intensities, as codecarbon does.
    """
    mix = _read_json(str(_data_file(GLOBAL_ENERGY_MIX)))
    code = str(iso3).strip().upper()
    entry = mix.get(code)
    if entry is None:
        by_name = {str(v.get("country_name", "")).lower(): k for k, v in mix.items()}
        names = [code.lower()] if code.lower() in by_name else []
        names = names or difflib.get_close_matches(code.lower(), sorted(by_name), n=3, cutoff=0.6)
        codes = difflib.get_close_matches(code, sorted(mix), n=3, cutoff=0.5)
        close = [f"{by_name[n]} ({mix[by_name[n]]['country_name']})" for n in names] or codes
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CarbonError(
            f"unknown country code {iso3!r}: codecarbon's global_energy_mix.json uses ISO-3 "
            f"codes such as 'USA', 'FRA'{hint}"
        )
    value = entry.get("carbon_intensity")
    if value is not None:
        return float(value)
    return _intensity_from_mix(code, entry)


def _intensity_from_mix(code: str, entry: dict[str, Any]) -> float:
    per_source = _read_json(str(_data_file(INTENSITY_PER_SOURCE)))
    total = entry.get("total_TWh") or 0.0
    weighted = covered = 0.0
    for key, twh in entry.items():
        if key.endswith("_TWh") and key != "total_TWh":
            factor = per_source.get(key[: -len("_TWh")])
            if isinstance(factor, (int, float)):
                weighted += twh * factor
                covered += twh
    if total <= 0 or abs(covered - total) > 1e-6 * max(1.0, total):
        raise CarbonError(f"codecarbon has no carbon intensity for country {code!r}")
    return weighted / total


def _usa_states() -> dict[str, dict[str, Any]]:
    data = _read_json(str(_data_file(USA_EMISSIONS)))
    return {
        k: v
        for k, v in data.items()
        if not k.startswith("_") and isinstance(v, dict) and k != "usa"
    }


def us_state_intensity(state: str) -> float:
    """Grid intensity of a US state, gCO2e/kWh, from codecarbon's EPA eGRID usa_emissions.json.

    ``state`` is a two-letter code (``"NY"``) or a name (``"new york"``), case-insensitive.
    The file gives lbs/MWh; the result is that x 0.45359237.
    """
    states = _usa_states()
    key = " ".join(str(state).replace("_", " ").split()).lower()
    entry = states.get(key)
    if entry is None:
        codes = {str(v.get("regionCode", "")).upper(): v for v in states.values()}
        entry = codes.get(key.upper())
        if entry is None:
            hint = _suggest(key.upper(), sorted(c for c in codes if c)) or _suggest(
                key, sorted(states)
            )
            raise CarbonError(
                f"unknown US state {state!r}: use a two-letter code such as 'NY' or a name "
                f"such as 'new york'{hint}"
            )
    return float(entry["emissions"]) * LBS_PER_MWH_TO_G_PER_KWH


def gcp_regions() -> list[str]:
    """The GCP regions in codecarbon's impact.csv, e.g. ``"us-central1"``."""
    rows = _read_impact(str(_data_file(CLOUD_IMPACT)))
    return sorted(k.split(":", 1)[1] for k in rows if k.startswith("gcp:"))


def gcp_region_intensity(region: str) -> float:
    """Grid intensity of a Google Cloud region, gCO2e/kWh, from codecarbon's impact.csv.

    ``region`` is ``"us-central1"`` or ``"gcp:us-central1"``, case-insensitive. Only GCP
    regions are in the file (AWS and Azure were removed upstream).
    """
    rows = _read_impact(str(_data_file(CLOUD_IMPACT)))
    name = str(region).strip().lower()
    provider, _, bare = name.rpartition(":")
    if provider and provider != "gcp":
        raise CarbonError(
            f"no region data for {region!r}: codecarbon's impact.csv has GCP regions only; "
            "set a country instead"
        )
    row = rows.get(f"gcp:{bare}")
    if row is None:
        raise CarbonError(
            f"unknown GCP region {region!r} in codecarbon's impact.csv"
            f"{_suggest(bare, gcp_regions())}"
        )
    try:
        return float(row["impact"])
    except (TypeError, ValueError) as e:
        raise CarbonError(f"codecarbon's impact.csv has no impact for GCP region {bare!r}") from e


def gcp_region_country(region: str) -> str:
    """The ISO-3 country of a GCP region in impact.csv ("" when the file does not say)."""
    rows = _read_impact(str(_data_file(CLOUD_IMPACT)))
    row = rows.get(f"gcp:{str(region).strip().lower().rpartition(':')[2]}")
    return "" if row is None else (row.get("countryIsoCode") or "").strip().upper()
