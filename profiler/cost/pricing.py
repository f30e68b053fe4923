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
codecarbon's figures, packaged with the profiler in ``profiler/cost/data/carbon_intensity.json``
(:mod:`profiler.cost.carbon` reads them and makes this choice); should that file be missing, an
explicit country/region is an error and the implicit cloud default leaves the intensity unknown
(``None``).

Environment variables win over the file: ``PROFILER_PRICING``, ``PROFILER_MARKET``,
``PROFILER_COUNTRY``, ``PROFILER_CARBON_G_PER_KWH``, ``PROFILER_GPU_HOUR_PRICE`` (the last
overrides the computed currency per GPU-hour for any kind of pricing).

Every problem is a :class:`~profiler.cost.settings.PricingError` whose message is one line naming
the key and where it came from.

The parts: :mod:`profiler.cost.settings` (the ``[cost]`` keys, the environment, value checks),
:mod:`profiler.cost.catalog` (``prices.toml`` and overrides), :mod:`profiler.cost.carbon` (grid
intensity), :mod:`profiler.cost.staleness` (how old the figures are); this module resolves them
into one :class:`Pricing`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from profiler.cost import carbon
from profiler.cost.catalog import MARKETS, TARIFFS, load_catalog
from profiler.cost.settings import (
    CostSettings,
    FigureSources,
    PricingError,
    as_currency,
    as_non_negative,
    as_number,
    as_pue,
    as_text,
    did_you_mean,
    read_settings,
)

HOURS_PER_YEAR = 8760


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
    s = read_settings(cost or {}, where, env)
    catalog = load_catalog(catalog_overrides, where=where)
    figures = FigureSources()

    profile_id = s.get("pricing")
    if profile_id is not None:
        profile_id = as_text(profile_id, "pricing", s.where("pricing"))
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
        currency_given = as_currency(s.get("currency"), "currency", s.where("currency"))

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
        gpu_hour_price = as_non_negative(
            s.get("gpu_hour_price"), "gpu_hour_price", s.where("gpu_hour_price"),
            "currency per GPU-hour",
        )  # fmt: skip
        figures.add("gpu_hour_price", s.where("gpu_hour_price"))
        energy_price = 0.0
        if "energy_price_kwh" in s:
            energy_price = as_non_negative(
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
            pue = as_pue(s.get("pue"), "pue", s.where("pue"))
            figures.add("pue", s.where("pue"))

    if "gpu_hour_price" in s and kind in ("cloud", "onprem"):
        # Only the environment gets here: _check_applicable rejects the file's key.
        gpu_hour_price = as_non_negative(
            s.get("gpu_hour_price"), "gpu_hour_price", s.where("gpu_hour_price"),
            "currency per GPU-hour",
        )  # fmt: skip
        figures.add("gpu_hour_price", f"{s.where('gpu_hour_price')} (overrides {kind} pricing)")

    carbon_g, carbon_source = carbon.choose_intensity(s, instance, profile_id, figures)

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


def _check_applicable(s: CostSettings, kind: str, profile_id: str | None) -> None:
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
    s: CostSettings, catalog: dict[str, Any], profile_id: str, currency_given: str | None
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


def _pue_for(
    s: CostSettings, catalog: dict[str, Any], provider: str, figures: FigureSources
) -> float:
    """The PUE: [cost] pue when set, else the catalog's figure for ``provider`` (or industry)."""
    if "pue" in s:
        value = as_pue(s.get("pue"), "pue", s.where("pue"))
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
    s: CostSettings,
    catalog: dict[str, Any],
    where: str,
    currency_given: str | None,
    figures: FigureSources,
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
    capex = as_non_negative(o["capex_per_gpu"], "capex_per_gpu", sub, "currency per GPU")
    years = as_number(o["lifetime_years"], "lifetime_years", sub, "years")
    if years <= 0:
        raise PricingError(f"{sub}: 'lifetime_years' must be positive (years), got {years:g}")
    utilization = as_number(o["utilization"], "utilization", sub, "fraction of hours in use")
    if not 0 < utilization <= 1:
        raise PricingError(
            f"{sub}: 'utilization' must be in (0, 1] (fraction of hours in use), "
            f"got {utilization:g}"
        )
    opex = as_non_negative(o.get("opex_per_gpu_hour", 0.0), "opex_per_gpu_hour", sub,
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
        name = as_text(o["electricity"], "electricity", sub)
        table = catalog["electricity"]
        if name not in table:
            raise PricingError(
                f"{sub}: 'electricity' = {name!r} is not in the catalog"
                f"{did_you_mean(name, sorted(table), n=3)} (known: {', '.join(sorted(table))})"
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
        values = {(k, as_non_negative(v, k, w, "currency per kWh"), w) for k, v, w in given}
        if len({v for _, v, _ in values}) > 1:
            raise PricingError(
                f"{sub}: 'electricity_price_kwh' and [cost] 'energy_price_kwh' disagree; set one"
            )
        key, energy_price, origin = sorted(values)[0]
        figures.add("energy_price_kwh", f"{origin} {key}")
    currency = currency or "USD"

    if "pue" in o:
        pue = as_pue(o["pue"], "pue", sub)
        if "pue" in s and as_pue(s.get("pue"), "pue", s.where("pue")) != pue:
            raise PricingError(f"{sub}: 'pue' disagrees with [cost] 'pue'; set one")
        figures.add("pue", sub)
    else:
        pue = _pue_for(s, catalog, "industry", figures)
    return currency, gpu_hour_price, energy_price, pue
