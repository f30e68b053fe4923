"""Regenerate ``profiler/cost/data/carbon_intensity.json`` from an installed codecarbon.

The profiler ships the grid carbon intensities it needs (per country, per US state, per GCP
region) as one small packaged file, so that CO2 is known out of the box without codecarbon and
pandas. The figures are codecarbon's (MIT licence, attributed in the file), copied from three of
its data files with nothing changed but the layout; the file records codecarbon's version and,
for every figure, the codecarbon file and field it came from.

Usage (after ``pip install 'codecarbon==X.Y.Z'`` in the venv)::

    python tools/update_carbon_data.py            # rewrite the packaged file
    python tools/update_carbon_data.py --check    # exit 1 if the packaged file differs

This script imports neither codecarbon nor the profiler: it reads codecarbon's files where
``importlib`` finds the package. Units: countries and GCP regions in gCO2e/kWh as codecarbon gives
them; US states in lbs/MWh as EPA eGRID (and codecarbon) give them, converted by the profiler
(1 lb/MWh = 0.45359237 g/kWh).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

OUT = (
    Path(__file__).resolve().parent.parent / "profiler" / "cost" / "data" / "carbon_intensity.json"
)

GLOBAL_ENERGY_MIX = "data/private_infra/global_energy_mix.json"
INTENSITY_PER_SOURCE = "data/private_infra/carbon_intensity_per_source.json"
USA_EMISSIONS = "data/private_infra/2023/usa_emissions.json"
CLOUD_IMPACT = "data/cloud/impact.csv"


class GenerateError(RuntimeError):
    """codecarbon is missing or its files are not as expected (one line)."""


def codecarbon_dir() -> Path:
    """The installed codecarbon package directory (found, not imported)."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise GenerateError("codecarbon is not installed: pip install 'codecarbon>=3.3' first")
    return Path(next(iter(spec.submodule_search_locations)))


def _licence() -> str:
    dist = importlib.metadata.distribution("codecarbon")
    for f in dist.files or []:
        name = f.name.upper()
        if name.startswith(("LICENSE", "LICENCE")):
            text = Path(str(dist.locate_file(f))).read_text(encoding="utf-8")
            return text.strip()
    raise GenerateError("codecarbon's licence file was not found in its distribution")


def _intensity_from_mix(entry: dict[str, Any], per_source: dict[str, Any]) -> float | None:
    """gCO2e/kWh from a country's mix (TWh per source x codecarbon's per-source factors)."""
    total = entry.get("total_TWh") or 0.0
    weighted = covered = 0.0
    for key, twh in entry.items():
        if key.endswith("_TWh") and key != "total_TWh":
            factor = per_source.get(key[: -len("_TWh")])
            if isinstance(factor, (int, float)):
                weighted += twh * factor
                covered += twh
    if total <= 0 or abs(covered - total) > 1e-6 * max(1.0, total):
        return None
    return weighted / total


def generate(root: Path, version: str, licence: str) -> dict[str, Any]:
    """The packaged file's content from codecarbon's files under ``root``."""
    mix = json.loads((root / GLOBAL_ENERGY_MIX).read_text(encoding="utf-8"))
    per_source = json.loads((root / INTENSITY_PER_SOURCE).read_text(encoding="utf-8"))
    countries: dict[str, Any] = {}
    for code, entry in sorted(mix.items()):
        value = entry.get("carbon_intensity")
        source = f"{GLOBAL_ENERGY_MIX} carbon_intensity"
        if value is None:
            value = _intensity_from_mix(entry, per_source)
            source = f"{GLOBAL_ENERGY_MIX} *_TWh x {INTENSITY_PER_SOURCE}"
        if value is None:
            continue
        countries[code.upper()] = {
            "name": entry.get("country_name", ""),
            "g_per_kwh": float(value),
            "year": entry.get("year"),
            "from": source,
        }
    usa = json.loads((root / USA_EMISSIONS).read_text(encoding="utf-8"))
    states = {
        name: {
            "code": str(v.get("regionCode", "")).upper(),
            "lbs_per_mwh": float(v["emissions"]),
            "from": f"{USA_EMISSIONS} emissions",
        }
        for name, v in sorted(usa.items())
        if not name.startswith("_") and isinstance(v, dict) and name != "usa"
    }
    regions: dict[str, Any] = {}
    with open(root / CLOUD_IMPACT, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            if row["provider"].strip().lower() != "gcp":
                continue
            try:
                impact = float(row["impact"])
            except (TypeError, ValueError):
                continue
            regions[row["region"].strip().lower()] = {
                "g_per_kwh": impact,
                "country": (row.get("countryIsoCode") or "").strip().upper(),
                "from": f"{CLOUD_IMPACT} impact ({(row.get('source') or '').strip()})",
            }
    return {
        "_about": {
            "what": "grid carbon intensity used by profiler.cost.carbon; regenerate with "
            "tools/update_carbon_data.py",
            "codecarbon_version": version,
            "codecarbon_url": "https://github.com/mlco2/codecarbon",
            "codecarbon_licence": licence,
            "units": {
                "countries": "gCO2e/kWh",
                "us_states": "lbs/MWh (EPA eGRID); x 0.45359237 = gCO2e/kWh",
                "gcp_regions": "gCO2e/kWh",
            },
            "us_states_source": usa.get("_source", {}),
        },
        "countries": countries,
        "us_states": states,
        "gcp_regions": dict(sorted(regions.items())),
    }


def render(data: dict[str, Any]) -> str:
    """The file's exact text (stable, so ``--check`` compares text)."""
    return json.dumps(data, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) the packaged file; exit status 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--out", type=Path, default=OUT, help="the file to write or check")
    args = parser.parse_args(argv)
    try:
        root = codecarbon_dir()
        version = importlib.metadata.version("codecarbon")
        text = render(generate(root, version, _licence()))
    except (GenerateError, OSError, KeyError, ValueError) as e:
        print(f"update_carbon_data: {e}", file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(
                f"update_carbon_data: {args.out} differs from codecarbon {version}'s data: "
                "run python tools/update_carbon_data.py",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out} matches codecarbon {version}")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} from codecarbon {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
