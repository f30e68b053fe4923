"""The ``[cost]`` settings of ``profiler.toml`` with the environment's ``PROFILER_*`` variables
laid over them, where each value came from, and the checks every price, PUE, date and code passes.

Every problem is a :class:`PricingError` whose message is one line naming the key and where it
came from (``<file> [cost]``, ``<file> [cost.onprem]``, ``environment PROFILER_...``). This
module is the bottom of :mod:`profiler.cost`: the catalog, the carbon choice and the pricing
resolution build on it; it imports the standard library only.
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class PricingError(ValueError):
    """A bad pricing setting; the message is one line naming the key and where it came from."""


# ----------------------------------------------------------------------------------------------
# Value checks: each returns the value in its unit or raises PricingError
# ----------------------------------------------------------------------------------------------


def did_you_mean(value: str, choices: Any, n: int = 1) -> str:
    """`` (did you mean 'x'?)`` naming up to ``n`` of ``choices`` close to ``value``, else ""."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def as_number(value: Any, key: str, where: str, what: str) -> float:
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


def as_non_negative(value: Any, key: str, where: str, what: str) -> float:
    """A finite number >= 0, in the unit ``what`` names (e.g. currency per kWh)."""
    number = as_number(value, key, where, what)
    if number < 0:
        raise PricingError(f"{where}: '{key}' must not be negative ({what}), got {number:g}")
    return number


def as_positive(value: Any, key: str, where: str, what: str) -> float:
    """A finite number > 0, in the unit ``what`` names (e.g. years)."""
    number = as_number(value, key, where, what)
    if number <= 0:
        raise PricingError(f"{where}: '{key}' must be positive ({what}), got {number:g}")
    return number


def as_pue(value: Any, key: str, where: str) -> float:
    """A power usage effectiveness: facility energy / IT energy, a ratio >= 1."""
    number = as_number(value, key, where, "power usage effectiveness, >= 1")
    if number < 1:
        raise PricingError(f"{where}: '{key}' is a PUE and must be >= 1, got {number:g}")
    return number


def as_iso_date(value: Any, key: str, where: str) -> str:
    """``YYYY-MM-DD`` from a TOML date or datetime, or a string in ISO form."""
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


def as_currency(value: Any, key: str, where: str) -> str:
    """A three-letter currency code, upper-cased (``usd`` -> ``USD``); blanks around it ignored."""
    if not isinstance(value, str) or not _CURRENCY.match(value.strip().upper()):
        raise PricingError(f"{where}: '{key}' must be a currency code such as 'USD', got {value!r}")
    return value.strip().upper()


def as_text(value: Any, key: str, where: str) -> str:
    """A non-empty string, blanks around it removed."""
    if not isinstance(value, str) or not value.strip():
        raise PricingError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value.strip()


# ----------------------------------------------------------------------------------------------
# The [cost] table and where each value came from
# ----------------------------------------------------------------------------------------------


@dataclass
class CostSettings:
    """The [cost] values with where each came from (file table or environment variable)."""

    values: dict[str, Any]
    origin: dict[str, str]

    def get(self, key: str, default: Any = None) -> Any:
        """``key``'s value as given (an environment value is a string), else ``default``."""
        return self.values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def where(self, key: str) -> str:
        """Where ``key``'s value came from: ``<file> [cost]`` or ``environment PROFILER_...``."""
        return self.origin[key]


@dataclass
class FigureSources:
    """Where each figure of a pricing came from (``sources``: figure name -> one line) and the
    as-of dates (ISO ``YYYY-MM-DD``) of the dated ones (``dates``), filled while it is resolved."""

    sources: dict[str, str] = field(default_factory=dict)
    dates: list[str] = field(default_factory=list)

    def add(self, name: str, text: str, as_of: str = "") -> None:
        """Record ``text`` as the source of figure ``name`` (replacing an earlier one), with
        ``; as_of DATE`` appended and the date kept when ``as_of`` (an ISO date) is given."""
        if as_of:
            text = f"{text}; as_of {as_of}"
            self.dates.append(as_of)
        self.sources[name] = text


def read_settings(cost: Mapping[str, Any], where: str, env: Mapping[str, str]) -> CostSettings:
    """The ``[cost]`` table of the file ``where`` with the ``PROFILER_*`` variables of ``env``
    laid over it; PricingError for an unknown key in ``[cost]`` or ``[cost.onprem]``."""
    if not isinstance(cost, Mapping):
        raise PricingError(f"{where}: 'cost' must be a table ([cost])")
    table = f"{where} [cost]"
    for key in cost:
        if key not in COST_KEYS:
            raise PricingError(
                f"{table}: unknown key '{key}'{did_you_mean(key, COST_KEYS)} "
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
                    f"{sub}: unknown key '{key}'{did_you_mean(key, ONPREM_KEYS)} "
                    f"(known keys: {', '.join(ONPREM_KEYS)})"
                )
    return CostSettings(values, origin)
