"""How this machine is billed: the ``[cost]`` table of ``profiler.toml`` resolved against the
price catalog into one :class:`Pricing`.

Kinds of pricing (``[cost] pricing``):

- a catalog instance id such as ``"aws:p4d.24xlarge"`` (**cloud**): currency per GPU-hour is the
  instance price for the chosen ``market`` (``on_demand``, ``spot``, ``reserved_1y``) divided by
  its GPUs. Energy is inside the instance price: ``energy_price_kwh`` is 0 (kWh are still
  reported). PUE is the provider's figure from the catalog.
- ``"onprem"``: currency per GPU-hour is ``capex_per_gpu / (lifetime_years x 8760 x utilization)
  + opex_per_gpu_hour``; energy is billed at the ``[cost.onprem]`` electricity price per kWh
  (x PUE); PUE defaults to the catalog's industry figure.
- ``"flat"``: ``gpu_hour_price`` as given, optional ``energy_price_kwh``; industry PUE.
- absent: kind ``"none"``, costs are not computed.

Carbon intensity (gCO2e/kWh), first that applies: ``carbon_g_per_kwh`` (environment, then file);
``PROFILER_COUNTRY`` from the environment; ``region = "gcp:REGION"`` (codecarbon impact.csv);
``country`` (+ ``us_state`` for the USA); for a cloud instance with none of these, the instance's
region: a GCP region from impact.csv, otherwise the region's country (the entry's ``country``
key, else ``us-*`` and Azure ``*us*`` regions are the USA) from global_energy_mix.json. These are
codecarbon's figures, packaged with the profiler (:mod:`profiler.cost.carbon`); should that file be
missing, an explicit country/region is an error and the implicit cloud default leaves the
intensity unknown (``None``).

Environment variables win over the file: ``PROFILER_PRICING``, ``PROFILER_MARKET``,
``PROFILER_COUNTRY``, ``PROFILER_CARBON_G_PER_KWH``, ``PROFILER_GPU_HOUR_PRICE`` (the last
overrides the computed currency per GPU-hour for any kind of pricing).

Every problem is a :class:`PricingError` whose message is one line naming the key and where it
came from.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import functools
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.cost import carbon

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

HOURS_PER_YEAR = 8760
PACKAGED = "packaged prices.toml"
MARKETS = ("on_demand", "spot", "reserved_1y")
KINDS = ("cloud", "onprem", "flat", "none")
TARIFFS = ("non_household", "commercial", "industrial")

COST_KEYS = (
    "pricing", "market", "currency", "gpu_hour_price", "energy_price_kwh", "pue", "country",
    "us_state", "region", "carbon_g_per_kwh", "onprem",
)  # fmt: skip
ONPREM_KEYS = (
    "capex_per_gpu", "lifetime_years", "utilization", "opex_per_gpu_hour",
    "electricity_price_kwh", "electricity", "electricity_tariff", "pue",
)  # fmt: skip
ENV_VARS = {
    "pricing": "PROFILER_PRICING",
    "market": "PROFILER_MARKET",
    "country": "PROFILER_COUNTRY",
    "carbon_g_per_kwh": "PROFILER_CARBON_G_PER_KWH",
    "gpu_hour_price": "PROFILER_GPU_HOUR_PRICE",
}

INSTANCE_KEYS = (
    "gpus", "gpu_model", *MARKETS, "region", "country", "currency", "source", "as_of",
    *(f"{m}_as_of" for m in MARKETS),
    *(f"{m}_source" for m in MARKETS),
)  # fmt: skip
GPU_KEYS = ("watts", "min_watts", "source", "as_of")
ELECTRICITY_KEYS = (*TARIFFS, "currency", "source", "as_of")
PUE_KEYS = ("value", "source", "as_of")
CATALOG_TABLES = ("instances", "gpus", "electricity", "pue")

_AS_OF = re.compile(r"as_of (\d{4}-\d{2}-\d{2})")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class PricingError(ValueError):
    """A bad pricing setting; the message is one line naming the key and where it came from."""


@dataclass(frozen=True)
class Pricing:
    """The pricing in force for this machine.

    ``gpu_hour_price`` is in ``currency`` per GPU-hour; ``energy_price_kwh`` in ``currency`` per
    kWh drawn by the facility, so callers bill measured kWh x ``pue`` x ``energy_price_kwh``
    (0 for cloud pricing); ``carbon_g_per_kwh`` in gCO2e per kWh (None when unknown), applied
    to the same measured kWh x ``pue``. ``as_of`` is the oldest date
    among the dated figures used ("" when none); ``sources`` maps each figure's name to where it
    came from, with ``as_of YYYY-MM-DD`` where the figure is dated.
    """

    currency: str
    profile: str
    kind: str
    gpu_hour_price: float
    energy_price_kwh: float
    pue: float
    carbon_g_per_kwh: float | None
    carbon_source: str
    as_of: str
    sources: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Catalog
# ----------------------------------------------------------------------------------------------


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
                f"{here}: unknown key '{key}'{_did_you_mean(key, known)} "
                f"(known keys: {', '.join(known)})"
            )
    for key in [k for k in entry if k == "as_of" or k.endswith("_as_of")]:
        entry[key] = _iso_date(entry[key], key, here)
    for key in ("source", "gpu_model", "region", *(f"{m}_source" for m in MARKETS)):
        if key in entry and not isinstance(entry[key], str):
            raise PricingError(f"{here}: '{key}' must be a string, got {entry[key]!r}")
    if "currency" in entry:
        entry["currency"] = _currency(entry["currency"], "currency", here)
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
                entry[m] = _positive(entry[m], m, here, "currency per instance-hour")
    elif table == "gpus":
        figures = ("watts",)
        for key in ("watts", "min_watts"):
            if key in entry:
                entry[key] = _positive(entry[key], key, here, "watts")
    elif table == "electricity":
        figures = TARIFFS
        for t in TARIFFS:
            if t in entry:
                entry[t] = _positive(entry[t], t, here, "currency per kWh")
    else:
        figures = ("value",)
        if "value" in entry:
            entry["value"] = _number(entry["value"], "value", here, "a PUE (>= 1)")
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


# ----------------------------------------------------------------------------------------------
# Value checks
# ----------------------------------------------------------------------------------------------


def _did_you_mean(value: str, choices: Any, n: int = 1) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _number(value: Any, key: str, where: str, what: str) -> float:
    """A finite number; a string (from the environment) is parsed. The error shows ``value``
    exactly as given."""
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, float))
        or not math.isfinite(number)
    ):
        raise PricingError(f"{where}: '{key}' must be a number ({what}), got {value!r}")
    return float(number)


def _non_negative(value: Any, key: str, where: str, what: str) -> float:
    number = _number(value, key, where, what)
    if number < 0:
        raise PricingError(f"{where}: '{key}' must not be negative ({what}), got {number:g}")
    return number


def _positive(value: Any, key: str, where: str, what: str) -> float:
    number = _number(value, key, where, what)
    if number <= 0:
        raise PricingError(f"{where}: '{key}' must be positive ({what}), got {number:g}")
    return number


def _pue(value: Any, key: str, where: str) -> float:
    number = _number(value, key, where, "power usage effectiveness, >= 1")
    if number < 1:
        raise PricingError(f"{where}: '{key}' is a PUE and must be >= 1, got {number:g}")
    return number


def _iso_date(value: Any, key: str, where: str) -> str:
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    try:
        return datetime.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise PricingError(
            f"{where}: '{key}' must be an ISO date such as 2026-11-24, got {value!r}"
        ) from None


def _currency(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not _CURRENCY.match(value.strip().upper()):
        raise PricingError(f"{where}: '{key}' must be a currency code such as 'USD', got {value!r}")
    return value.strip().upper()


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PricingError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value.strip()


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------


@dataclass
class _Settings:
    """The [cost] values with where each came from (file table or environment variable)."""

    values: dict[str, Any]
    origin: dict[str, str]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def where(self, key: str) -> str:
        return self.origin[key]


@dataclass
class _Figures:
    sources: dict[str, str] = field(default_factory=dict)
    dates: list[str] = field(default_factory=list)

    def add(self, name: str, text: str, as_of: str = "") -> None:
        if as_of:
            text = f"{text}; as_of {as_of}"
            self.dates.append(as_of)
        self.sources[name] = text


def _settings(cost: Mapping[str, Any], where: str, env: Mapping[str, str]) -> _Settings:
    if not isinstance(cost, Mapping):
        raise PricingError(f"{where}: 'cost' must be a table ([cost])")
    table = f"{where} [cost]"
    for key in cost:
        if key not in COST_KEYS:
            raise PricingError(
                f"{table}: unknown key '{key}'{_did_you_mean(key, COST_KEYS)} "
                f"(known keys: {', '.join(COST_KEYS)})"
            )
    values = dict(cost)
    origin = {k: table for k in values}
    for key, var in ENV_VARS.items():
        raw = env.get(var)
        if raw is not None and raw.strip():
            values[key] = raw.strip()
            origin[key] = f"environment {var}"
    if "onprem" in values:
        if not isinstance(values["onprem"], Mapping):
            raise PricingError(f"{table}: 'onprem' must be a table ([cost.onprem])")
        sub = f"{where} [cost.onprem]"
        for key in values["onprem"]:
            if key not in ONPREM_KEYS:
                raise PricingError(
                    f"{sub}: unknown key '{key}'{_did_you_mean(key, ONPREM_KEYS)} "
                    f"(known keys: {', '.join(ONPREM_KEYS)})"
                )
    return _Settings(values, origin)


def resolve_pricing(
    cost: dict,
    catalog_overrides: dict | None = None,
    *,
    where: str = "profiler.toml",
    env: Mapping[str, str] | None = None,
) -> Pricing:
    """The :class:`Pricing` for this machine from the ``[cost]`` table (a plain dict, possibly
    empty), the user's ``[catalog]`` overrides, and ``PROFILER_*`` variables in ``env``
    (default ``os.environ``), which win over the file.

    ``where`` names the file in messages and ``sources``. Units: ``gpu_hour_price`` currency per
    GPU-hour, ``energy_price_kwh`` currency per kWh, ``carbon_g_per_kwh`` gCO2e/kWh. Raises
    :class:`PricingError` (one line) for any bad setting.
    """
    env = os.environ if env is None else env
    s = _settings(cost or {}, where, env)
    catalog = load_catalog(catalog_overrides, where=where)
    figures = _Figures()

    profile_id = s.get("pricing")
    if profile_id is not None:
        profile_id = _text(profile_id, "pricing", s.where("pricing"))
        if profile_id.lower() in ("onprem", "flat", "none"):
            profile_id = profile_id.lower()
        figures.add("pricing", s.where("pricing"))

    if profile_id is None or profile_id == "none":
        kind = "none"
    elif profile_id in ("onprem", "flat"):
        kind = profile_id
    else:
        kind = "cloud"

    _check_applicable(s, kind, profile_id)

    currency_given = None
    if "currency" in s:
        currency_given = _currency(s.get("currency"), "currency", s.where("currency"))

    instance: dict[str, Any] | None = None
    profile = kind
    if kind == "cloud":
        assert profile_id is not None
        instance, market, price, currency = _cloud(s, catalog, profile_id, currency_given)
        profile = f"{profile_id} ({market})"
        gpus = int(instance["gpus"])
        gpu_hour_price = price / gpus
        figures.add(
            "gpu_hour_price",
            f'catalog [instances."{profile_id}"] {market} = {price:.10g} {currency}/h / {gpus} '
            f"GPU{'s' if gpus != 1 else ''}, from {instance['_origin'][market]}",
            instance["_as_of"].get(market, ""),
        )
        energy_price = 0.0
        figures.add("energy_price_kwh", "not billed: energy is inside the cloud instance price")
        provider = profile_id.split(":", 1)[0]
        pue = _pue_for(s, catalog, provider, figures)
    elif kind == "onprem":
        currency, gpu_hour_price, energy_price, pue = _onprem(
            s, catalog, where, currency_given, figures
        )
    elif kind == "flat":
        currency = currency_given or "USD"
        if "gpu_hour_price" not in s:
            raise PricingError(
                f"{s.where('pricing')}: pricing = 'flat' needs 'gpu_hour_price' "
                "(currency per GPU-hour) in [cost]"
            )
        gpu_hour_price = _non_negative(
            s.get("gpu_hour_price"), "gpu_hour_price", s.where("gpu_hour_price"),
            "currency per GPU-hour",
        )  # fmt: skip
        figures.add("gpu_hour_price", s.where("gpu_hour_price"))
        energy_price = 0.0
        if "energy_price_kwh" in s:
            energy_price = _non_negative(
                s.get("energy_price_kwh"), "energy_price_kwh", s.where("energy_price_kwh"),
                "currency per kWh",
            )  # fmt: skip
            figures.add("energy_price_kwh", s.where("energy_price_kwh"))
        pue = _pue_for(s, catalog, "industry", figures)
    else:
        currency = currency_given or "USD"
        gpu_hour_price = energy_price = 0.0
        pue = 1.0
        if "pue" in s:
            pue = _pue(s.get("pue"), "pue", s.where("pue"))
            figures.add("pue", s.where("pue"))

    if "gpu_hour_price" in s and kind in ("cloud", "onprem"):
        # Only the environment gets here: _check_applicable rejects the file's key.
        gpu_hour_price = _non_negative(
            s.get("gpu_hour_price"), "gpu_hour_price", s.where("gpu_hour_price"),
            "currency per GPU-hour",
        )  # fmt: skip
        figures.add("gpu_hour_price", f"{s.where('gpu_hour_price')} (overrides {kind} pricing)")

    carbon_g, carbon_source = _carbon(s, instance, profile_id, figures)

    as_of = min(figures.dates) if figures.dates else ""
    return Pricing(
        currency=currency,
        profile=profile,
        kind=kind,
        gpu_hour_price=gpu_hour_price,
        energy_price_kwh=energy_price,
        pue=pue,
        carbon_g_per_kwh=carbon_g,
        carbon_source=carbon_source,
        as_of=as_of,
        sources=figures.sources,
    )


def _check_applicable(s: _Settings, kind: str, profile_id: str | None) -> None:
    """Reject keys that make no sense for this kind of pricing."""
    named = f"pricing = {profile_id!r}" if profile_id else "no pricing set"
    if "market" in s and kind != "cloud":
        raise PricingError(
            f"{s.where('market')}: 'market' applies to a cloud instance only ({named})"
        )
    if "onprem" in s and kind != "onprem":
        raise PricingError(
            f"{s.where('onprem')}: [cost.onprem] is set but {named}; set pricing = 'onprem' "
            "or remove the table"
        )
    if "gpu_hour_price" in s and kind != "flat":
        origin = s.where("gpu_hour_price")
        if kind == "none":
            raise PricingError(
                f"{origin}: 'gpu_hour_price' needs pricing = 'flat' (or PROFILER_PRICING=flat)"
            )
        if not origin.startswith("environment"):
            hint = (
                f'override [catalog.instances."{profile_id}"] instead'
                if kind == "cloud"
                else "set [cost.onprem] capex_per_gpu, lifetime_years and utilization instead"
            )
            raise PricingError(
                f"{origin}: 'gpu_hour_price' applies to pricing = 'flat' only ({named}); {hint}"
            )
    if "energy_price_kwh" in s and kind == "cloud":
        raise PricingError(
            f"{s.where('energy_price_kwh')}: 'energy_price_kwh' does not apply to a cloud "
            f"instance ({named}): energy is inside the instance price"
        )
    if "energy_price_kwh" in s and kind == "none":
        raise PricingError(
            f"{s.where('energy_price_kwh')}: 'energy_price_kwh' needs pricing = 'flat' or 'onprem'"
        )


def _cloud(
    s: _Settings, catalog: dict[str, Any], profile_id: str, currency_given: str | None
) -> tuple[dict[str, Any], str, float, str]:
    instances = catalog["instances"]
    origin = s.where("pricing")
    if profile_id not in instances:
        close = difflib.get_close_matches(profile_id, sorted(instances), n=3, cutoff=0.6)
        lowered = {k.lower(): k for k in instances}
        if profile_id.lower() in lowered:
            close = [lowered[profile_id.lower()]]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PricingError(
            f"{origin}: 'pricing' = {profile_id!r} is not a catalog instance, 'onprem' or "
            f"'flat'{hint} (see `profiler prices --list`)"
        )
    entry = instances[profile_id]
    market = s.get("market", "on_demand")
    if not isinstance(market, str) or market.strip() not in MARKETS:
        raise PricingError(
            f"{s.where('market')}: 'market' must be one of {', '.join(MARKETS)}, got {market!r}"
        )
    market = market.strip()
    if market not in entry:
        has = ", ".join(m for m in MARKETS if m in entry)
        where_market = s.where("market") if "market" in s else origin
        raise PricingError(
            f"{where_market}: 'market' = {market!r} but the catalog has no {market} price for "
            f'{profile_id} (it has: {has}); add one under [catalog.instances."{profile_id}"]'
        )
    currency = entry.get("currency", "USD")
    if currency_given is not None and currency_given != currency:
        raise PricingError(
            f"{s.where('currency')}: 'currency' = {currency_given!r} but {profile_id} is priced "
            f"in {currency} (no conversion is done)"
        )
    return entry, market, float(entry[market]), currency


def _pue_for(s: _Settings, catalog: dict[str, Any], provider: str, figures: _Figures) -> float:
    """The PUE: [cost] pue when set, else the catalog's figure for ``provider`` (or industry)."""
    if "pue" in s:
        value = _pue(s.get("pue"), "pue", s.where("pue"))
        figures.add("pue", s.where("pue"))
        return value
    table = catalog["pue"]
    name = provider if provider in table else "industry"
    if name not in table:
        raise PricingError(f"catalog: no [pue.{provider}] or [pue.industry] entry; set [cost] pue")
    entry = table[name]
    note = "" if name == provider else f" (no [pue.{provider}] entry)"
    figures.add(
        "pue",
        f"catalog [pue.{name}] = {entry['value']:g}{note}, from {entry['_origin'].get('value')}",
        entry["_as_of"].get("value", ""),
    )
    return float(entry["value"])


def _onprem(
    s: _Settings,
    catalog: dict[str, Any],
    where: str,
    currency_given: str | None,
    figures: _Figures,
) -> tuple[str, float, float, float]:
    sub = f"{where} [cost.onprem]"
    if "onprem" not in s:
        raise PricingError(
            f"{s.where('pricing')}: pricing = 'onprem' needs a [cost.onprem] table with "
            "capex_per_gpu, lifetime_years, utilization and electricity_price_kwh"
        )
    o: Mapping[str, Any] = s.get("onprem")
    for key in ("capex_per_gpu", "lifetime_years", "utilization"):
        if key not in o:
            raise PricingError(f"{sub}: '{key}' is required with pricing = 'onprem'")
    capex = _non_negative(o["capex_per_gpu"], "capex_per_gpu", sub, "currency per GPU")
    years = _number(o["lifetime_years"], "lifetime_years", sub, "years")
    if years <= 0:
        raise PricingError(f"{sub}: 'lifetime_years' must be positive (years), got {years:g}")
    utilization = _number(o["utilization"], "utilization", sub, "fraction of hours in use")
    if not 0 < utilization <= 1:
        raise PricingError(
            f"{sub}: 'utilization' must be in (0, 1] (fraction of hours in use), "
            f"got {utilization:g}"
        )
    opex = _non_negative(o.get("opex_per_gpu_hour", 0.0), "opex_per_gpu_hour", sub,
                         "currency per GPU-hour")  # fmt: skip
    gpu_hour_price = capex / (years * HOURS_PER_YEAR * utilization) + opex
    figures.add(
        "gpu_hour_price",
        f"{sub}: capex_per_gpu {capex:g} / ({years:g} years x {HOURS_PER_YEAR} h x utilization "
        f"{utilization:g}) + opex_per_gpu_hour {opex:g}",
    )

    # Electricity: a price in [cost.onprem] or [cost], or a catalog entry.
    given = [(k, o[k], sub) for k in ("electricity_price_kwh",) if k in o] + [
        (k, s.get(k), s.where(k)) for k in ("energy_price_kwh",) if k in s
    ]
    currency = currency_given
    if "electricity" in o:
        if given:
            raise PricingError(
                f"{sub}: set either 'electricity' (a catalog entry) or a price per kWh, not both"
            )
        name = _text(o["electricity"], "electricity", sub)
        table = catalog["electricity"]
        if name not in table:
            raise PricingError(
                f"{sub}: 'electricity' = {name!r} is not in the catalog"
                f"{_did_you_mean(name, sorted(table), n=3)} (known: {', '.join(sorted(table))})"
            )
        entry = table[name]
        has = [t for t in TARIFFS if t in entry]
        tariff = o.get("electricity_tariff")
        if tariff is None:
            if len(has) > 1:
                raise PricingError(
                    f"{sub}: 'electricity_tariff' is required for {name!r} "
                    f"(one of {', '.join(has)})"
                )
            tariff = has[0]
        if tariff not in has:
            raise PricingError(
                f"{sub}: 'electricity_tariff' must be one of {', '.join(has)} for {name!r}, "
                f"got {tariff!r}"
            )
        energy_price = float(entry[tariff])
        if currency is not None and currency != entry["currency"]:
            raise PricingError(
                f"{s.where('currency')}: 'currency' = {currency!r} but electricity {name!r} is "
                f"priced in {entry['currency']} (no conversion is done)"
            )
        currency = entry["currency"]
        figures.add(
            "energy_price_kwh",
            f'catalog [electricity."{name}"] {tariff} = {energy_price:g} {currency}/kWh, from '
            f"{entry['_origin'].get(tariff)}",
            entry["_as_of"].get(tariff, ""),
        )
    elif "electricity_tariff" in o:
        raise PricingError(f"{sub}: 'electricity_tariff' needs 'electricity' (a catalog entry)")
    elif not given:
        raise PricingError(
            f"{sub}: 'electricity_price_kwh' is required with pricing = 'onprem' (currency per "
            "kWh; or electricity = 'US-NY' from the catalog)"
        )
    else:
        values = {(k, _non_negative(v, k, w, "currency per kWh"), w) for k, v, w in given}
        if len({v for _, v, _ in values}) > 1:
            raise PricingError(
                f"{sub}: 'electricity_price_kwh' and [cost] 'energy_price_kwh' disagree; set one"
            )
        key, energy_price, origin = sorted(values)[0]
        figures.add("energy_price_kwh", f"{origin} {key}")
    currency = currency or "USD"

    if "pue" in o:
        pue = _pue(o["pue"], "pue", sub)
        if "pue" in s and _pue(s.get("pue"), "pue", s.where("pue")) != pue:
            raise PricingError(f"{sub}: 'pue' disagrees with [cost] 'pue'; set one")
        figures.add("pue", sub)
    else:
        pue = _pue_for(s, catalog, "industry", figures)
    return currency, gpu_hour_price, energy_price, pue


_US_AZURE = re.compile(r"^(east|west|central|northcentral|southcentral|westcentral)us\d*$")


def region_country(provider: str, region: str) -> str:
    """The ISO-3 country of a cloud region ("" when not known here).

    GCP regions come from codecarbon's impact.csv; AWS ``us-*`` and GCP ``us-*`` regions and the
    Azure US regions (``eastus``, ``westus2``, ``southcentralus``...) are the USA. Other regions
    need a ``country`` in the catalog entry or in ``[cost]``.
    """
    region = region.strip().lower()
    if provider == "gcp":
        try:
            found = carbon.gcp_region_country(region)
        except carbon.CarbonError:
            found = ""
        if found:
            return found
    if region.startswith("us-") or _US_AZURE.match(region):
        return "USA"
    return ""


def _carbon(
    s: _Settings, instance: dict[str, Any] | None, profile_id: str | None, figures: _Figures
) -> tuple[float | None, str]:
    """(gCO2e/kWh or None, short source) in the precedence the module docstring gives."""
    if "carbon_g_per_kwh" in s:
        origin = s.where("carbon_g_per_kwh")
        value = _non_negative(s.get("carbon_g_per_kwh"), "carbon_g_per_kwh", origin, "gCO2e/kWh")
        figures.add("carbon_g_per_kwh", origin)
        return value, f"{origin} carbon_g_per_kwh"
    if "us_state" in s and "country" in s:
        country = _text(s.get("country"), "country", s.where("country")).upper()
        if country != "USA":
            raise PricingError(
                f"{s.where('us_state')}: 'us_state' needs country = 'USA', got {country!r} "
                f"from {s.where('country')}"
            )
    from_env_country = "country" in s and s.where("country").startswith("environment")
    if "region" in s and ("country" in s or "us_state" in s) and not from_env_country:
        raise PricingError(
            f"{s.where('region')}: set either 'region' or 'country' (and 'us_state'), not both"
        )
    version = carbon.codecarbon_version()
    cc = f"codecarbon {version}".strip()
    if "region" in s and not from_env_country:
        origin = s.where("region")
        region = _text(s.get("region"), "region", origin)
        provider, _, bare = region.lower().partition(":")
        if provider != "gcp" or not bare:
            raise PricingError(
                f"{origin}: 'region' must be 'gcp:REGION' such as 'gcp:us-central1' (codecarbon "
                f"has region data for Google Cloud only; for others set 'country'), got {region!r}"
            )
        value = _lookup(carbon.gcp_region_intensity, bare, "region", origin)
        figures.add("carbon_g_per_kwh", f"{cc} data/cloud/impact.csv gcp:{bare}, from {origin}")
        return value, f"codecarbon impact.csv gcp:{bare}"
    if "country" in s or "us_state" in s:
        return _country_carbon(s, cc, figures)
    if instance is not None and profile_id is not None:
        return _instance_carbon(instance, profile_id, cc, figures)
    return None, ""


def _country_carbon(s: _Settings, cc: str, figures: _Figures) -> tuple[float, str]:
    if "us_state" in s:
        origin = s.where("us_state")
        state = _text(s.get("us_state"), "us_state", origin)
        value = _lookup(carbon.us_state_intensity, state, "us_state", origin)
        figures.add(
            "carbon_g_per_kwh",
            f"{cc} data/private_infra/2023/usa_emissions.json {state} (lbs/MWh x 0.45359237), "
            f"from {origin}",
        )
        return value, f"codecarbon usa_emissions.json {state}"
    origin = s.where("country")
    country = _text(s.get("country"), "country", origin).upper()
    value = _lookup(carbon.country_intensity, country, "country", origin)
    figures.add(
        "carbon_g_per_kwh",
        f"{cc} data/private_infra/global_energy_mix.json {country}, from {origin}",
    )
    return value, f"codecarbon global_energy_mix {country}"


def _instance_carbon(
    instance: dict[str, Any], profile_id: str, cc: str, figures: _Figures
) -> tuple[float | None, str]:
    """The implicit default for a cloud instance: its region's intensity, or None if unknown."""
    provider = profile_id.split(":", 1)[0].lower()
    region = str(instance.get("region", "")).strip().lower()
    about = f'region of catalog [instances."{profile_id}"]'
    try:
        if provider == "gcp" and region and region in carbon.gcp_regions():
            value = carbon.gcp_region_intensity(region)
            figures.add("carbon_g_per_kwh", f"{cc} data/cloud/impact.csv gcp:{region} ({about})")
            return value, f"codecarbon impact.csv gcp:{region}"
        country = instance.get("country") or (region_country(provider, region) if region else "")
        if not country:
            figures.add(
                "carbon_g_per_kwh",
                f"unknown: no country for region {region!r} of {profile_id}; set [cost] country",
            )
            return None, ""
        value = carbon.country_intensity(country)
    except carbon.CarbonError as e:
        figures.add("carbon_g_per_kwh", f"unknown: {e}")
        return None, ""
    figures.add(
        "carbon_g_per_kwh",
        f"{cc} data/private_infra/global_energy_mix.json {country} (country of {about}: "
        f"{region or '?'})",
    )
    return value, f"codecarbon global_energy_mix {country}"


def _lookup(fn: Any, value: str, key: str, origin: str) -> float:
    try:
        return float(fn(value))
    except carbon.CarbonError as e:
        raise PricingError(f"{origin}: '{key}' = {value!r}: {e}") from e


# ----------------------------------------------------------------------------------------------
# Staleness
# ----------------------------------------------------------------------------------------------


def figure_dates(pricing: Pricing) -> dict[str, str]:
    """Figure name -> ISO as_of date, for the dated figures in ``pricing.sources``."""
    dates: dict[str, str] = {}
    for name, text in pricing.sources.items():
        match = _AS_OF.search(text)
        if match:
            dates[name] = match.group(1)
    if not dates and pricing.as_of:
        dates["as_of"] = pricing.as_of
    return dates


def stale_figures(pricing: Pricing, today: datetime.date, max_age_days: int = 180) -> list[str]:
    """One human line per figure whose as_of date is more than ``max_age_days`` before
    ``today`` (oldest first); empty when every dated figure is fresh or none is dated."""
    lines = []
    for name, as_of in sorted(figure_dates(pricing).items(), key=lambda kv: (kv[1], kv[0])):
        try:
            age = (today - datetime.date.fromisoformat(as_of)).days
        except ValueError:
            continue
        if age > max_age_days:
            lines.append(
                f"{name} is from {as_of}, {age} days old (more than {max_age_days}): check the "
                "current figure and override it in profiler.toml [catalog]"
            )
    return lines
