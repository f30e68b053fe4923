"""The price catalog: the packaged ``prices.toml`` merged with the user's ``[catalog]`` overrides,
every entry validated.

Tables (see ``prices.toml`` for their keys and units): ``instances`` (cloud instances, currency
per instance-hour per market), ``gpus`` (board power, W), ``electricity`` (currency per kWh per
tariff), ``pue`` (power usage effectiveness, >= 1). Every problem is a
:class:`~profiler.cost.settings.PricingError` with a one-line message naming the entry.
"""

from __future__ import annotations

import copy
import functools
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from profiler.cost.settings import (
    PricingError,
    as_currency,
    as_iso_date,
    as_number,
    as_positive,
    did_you_mean,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PACKAGED = "packaged prices.toml"
MARKETS = ("on_demand", "spot", "reserved_1y")
TARIFFS = ("non_household", "commercial", "industrial")

INSTANCE_KEYS = (
    "gpus", "gpu_model", *MARKETS, "region", "country", "currency", "source", "as_of",
    *(f"{m}_as_of" for m in MARKETS),
    *(f"{m}_source" for m in MARKETS),
)  # fmt: skip
GPU_KEYS = ("watts", "min_watts", "source", "as_of")
ELECTRICITY_KEYS = (*TARIFFS, "currency", "source", "as_of")
PUE_KEYS = ("value", "source", "as_of")
CATALOG_TABLES = ("instances", "gpus", "electricity", "pue")


def packaged_catalog_path() -> Path:
    """The ``prices.toml`` shipped inside the package."""
    return Path(__file__).with_name("prices.toml")


@functools.lru_cache(maxsize=8)
def _read_catalog_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise PricingError(f"{path}: not valid TOML ({e})") from e
    except OSError as e:
        raise PricingError(f"{path}: cannot read the price catalog ({e.strerror})") from e


def load_catalog(
    overrides: dict | None = None, path: Path | None = None, *, where: str = "profiler.toml"
) -> dict[str, Any]:
    """The packaged price catalog (or ``path``) merged with the user's ``[catalog]`` table.

    The result has the tables ``instances``, ``gpus``, ``electricity`` and ``pue``, each a dict
    of entries (see ``prices.toml`` for their keys and units). An override entry with an id that
    the catalog has replaces the keys it names; a new id adds an entry. Every entry gets two
    bookkeeping keys: ``_origin`` (figure -> where it came from, e.g. ``"packaged prices.toml"``
    or ``"profiler.toml [catalog]"``) and ``_as_of`` (figure -> ISO date or ""). A price the user
    overrides without a date of its own is undated. Raises :class:`PricingError` for any bad
    entry, packaged or overriding.
    """
    file = str(path) if path is not None else str(packaged_catalog_path())
    label = PACKAGED if path is None else file
    raw = copy.deepcopy(_read_catalog_file(file))
    merged: dict[str, Any] = {t: {} for t in CATALOG_TABLES}
    _merge_catalog(merged, raw, label, "")
    if overrides:
        if not isinstance(overrides, Mapping):
            raise PricingError(f"{where}: 'catalog' must be a table ([catalog])")
        _merge_catalog(merged, dict(overrides), f"{where} [catalog]", "catalog.")
    return merged


def _merge_catalog(merged: dict[str, Any], raw: dict[str, Any], label: str, prefix: str) -> None:
    for table, entries in raw.items():
        if table not in CATALOG_TABLES:
            raise PricingError(
                f"{label}: unknown table '{prefix}{table}' (known: {', '.join(CATALOG_TABLES)})"
            )
        if not isinstance(entries, Mapping):
            raise PricingError(f"{label}: '{prefix}{table}' must be a table")
        for name, entry in entries.items():
            here = f'{label}: [{prefix}{table}."{name}"]'
            if not isinstance(entry, Mapping):
                raise PricingError(f"{here} must be a table")
            old = merged[table].get(name)
            merged[table][name] = _merge_entry(table, str(name), dict(entry), old, here, label)


def _merge_entry(
    table: str, name: str, entry: dict[str, Any], old: dict[str, Any] | None, here: str, label: str
) -> dict[str, Any]:
    known = {
        "instances": INSTANCE_KEYS,
        "gpus": GPU_KEYS,
        "electricity": ELECTRICITY_KEYS,
        "pue": PUE_KEYS,
    }[table]
    for key in entry:
        if key not in known:
            raise PricingError(
                f"{here}: unknown key '{key}'{did_you_mean(key, known)} "
                f"(known keys: {', '.join(known)})"
            )
    for key in [k for k in entry if k == "as_of" or k.endswith("_as_of")]:
        entry[key] = as_iso_date(entry[key], key, here)
    for key in ("source", "gpu_model", "region", *(f"{m}_source" for m in MARKETS)):
        if key in entry and not isinstance(entry[key], str):
            raise PricingError(f"{here}: '{key}' must be a string, got {entry[key]!r}")
    if "currency" in entry:
        entry["currency"] = as_currency(entry["currency"], "currency", here)
    if "country" in entry:
        if not isinstance(entry["country"], str) or not re.fullmatch(
            r"[A-Za-z]{3}", entry["country"]
        ):
            raise PricingError(
                f"{here}: 'country' must be an ISO-3 country code such as 'USA', "
                f"got {entry['country']!r}"
            )
        entry["country"] = entry["country"].upper()

    figures: tuple[str, ...]
    if table == "instances":
        if ":" not in name or not name.split(":", 1)[0] or not name.split(":", 1)[1]:
            raise PricingError(f"{here}: instance ids are 'provider:name', e.g. 'aws:p4d.24xlarge'")
        if "gpus" in entry:
            g = entry["gpus"]
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise PricingError(f"{here}: 'gpus' must be a whole number >= 1, got {g!r}")
        figures = MARKETS
        for m in MARKETS:
            if m in entry:
                entry[m] = as_positive(entry[m], m, here, "currency per instance-hour")
    elif table == "gpus":
        figures = ("watts",)
        for key in ("watts", "min_watts"):
            if key in entry:
                entry[key] = as_positive(entry[key], key, here, "watts")
    elif table == "electricity":
        figures = TARIFFS
        for t in TARIFFS:
            if t in entry:
                entry[t] = as_positive(entry[t], t, here, "currency per kWh")
    else:
        figures = ("value",)
        if "value" in entry:
            entry["value"] = as_number(entry["value"], "value", here, "a PUE (>= 1)")
            if entry["value"] < 1:
                raise PricingError(
                    f"{here}: 'value' is a PUE and must be >= 1, got {entry['value']}"
                )

    result = copy.deepcopy(old) if old is not None else {"_origin": {}, "_as_of": {}}
    given_figures = [f for f in figures if f in entry]
    result.update(entry)
    for f in given_figures:
        source = entry.get(f"{f}_source") or entry.get("source")
        result["_origin"][f] = label + (f" (source: {source})" if source else "")
        result["_as_of"][f] = entry.get(f"{f}_as_of") or entry.get("as_of") or ""
        if old is not None and f"{f}_as_of" not in entry and "as_of" not in entry:
            result.pop(f"{f}_as_of", None)
    if label != PACKAGED and "source" not in entry and (old is None or given_figures):
        result["source"] = label
    if old is not None and given_figures and "as_of" not in entry:
        result.pop("as_of", None)
    # Dates given without the figure (e.g. only as_of) re-date the figures the entry has.
    for f in figures:
        if f in result and f not in given_figures:
            dated = entry.get(f"{f}_as_of") or entry.get("as_of")
            if dated:
                result["_as_of"][f] = dated

    if table == "instances":
        if "gpus" not in result:
            raise PricingError(f"{here}: 'gpus' is required (GPUs per instance)")
        if not any(m in result for m in MARKETS):
            raise PricingError(f"{here}: needs a price: one of {', '.join(MARKETS)}")
        result.setdefault("currency", "USD")
    elif table == "gpus" and "watts" not in result:
        raise PricingError(f"{here}: 'watts' is required (board power limit, W)")
    elif table == "electricity":
        if not any(t in result for t in TARIFFS):
            raise PricingError(f"{here}: needs a price per kWh: one of {', '.join(TARIFFS)}")
        if "currency" not in result:
            raise PricingError(f"{here}: 'currency' is required, e.g. 'USD' or 'EUR'")
    elif table == "pue" and "value" not in result:
        raise PricingError(f"{here}: 'value' is required (PUE >= 1)")
    return result
