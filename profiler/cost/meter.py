"""Money, carbon and waste for runs, accumulated interval by interval at the prices in force.

The daemon calls :meth:`CostMeter.gpu_interval` for each share of a device's energy it gives a
run and :meth:`CostMeter.cpu_energy` for each share of host CPU energy. Each call prices what it
is given with the :class:`~profiler.cost.pricing.Pricing` in force at that moment, so a price change
later (a new ``profiler.toml``, a restarted daemon) never rewrites what a run already cost.

Components (currency of the pricing):

- ``gpu_time_cost``: GPU-seconds / 3600 x ``gpu_hour_price`` (cloud: the instance price per
  GPU; on-prem: amortised hardware and opex per GPU-hour; flat: as configured).
- ``energy_cost``: kWh x PUE x ``energy_price_kwh`` over the run's GPU and CPU energy. Cloud
  pricing has ``energy_price_kwh = 0``: energy is inside the instance price; its kWh are still
  reported.
- ``co2_g``: kWh x PUE x grid intensity (gCO2e/kWh), when the intensity is known.

The names users see stay as they were, for compatibility: the ledger's columns
``cost_gpu_time`` and ``cost_energy``, the keys ``gpu_time``, ``energy`` and ``waste`` of the
run's ``meta["cost"]`` (:meth:`RunCost.to_meta`), and the ``component`` label of
``profiler_run_cost_total``.

Waste, per run, in GPU-seconds, joules and currency (``waste_cost``):

- ``idle``: a device interval the run held while the device did no work: utilization at most
  :data:`IDLE_UTILIZATION` and no step of the run ended in or after the interval's start.
- ``nonfinite``: every interval after the end of the first step whose loss was NaN or infinite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from profiler.cost.pricing import Pricing
from profiler.units import JOULES_PER_KWH

IDLE_UTILIZATION = 0.05
RATE_FRESH_S = 5.0


def no_pricing() -> Pricing:
    """No pricing configured: money is not computed (zero prices), carbon neither."""
    return Pricing(
        currency="USD", profile="none", kind="none", gpu_hour_price=0.0, energy_price_kwh=0.0,
        pue=1.0, carbon_g_per_kwh=None, carbon_source="", as_of="", sources={},
    )  # fmt: skip


@dataclass
class RunCost:
    """What one run cost so far, in ``currency`` (the currency of the first pricing that priced
    it; "" while unpriced), and its grams of CO2e (``co2_known``: some of its energy had a known
    grid intensity). Money fields end in ``_cost``; :meth:`to_meta` keeps the stored keys."""

    currency: str = ""
    co2_known: bool = False
    gpu_time_cost: float = 0.0  # currency, for GPU time
    energy_cost: float = 0.0  # currency, for energy (kWh x PUE x price)
    co2_g: float = 0.0
    waste_cost: dict[str, float] = field(default_factory=dict)  # reason -> currency
    waste_gpu_seconds: dict[str, float] = field(default_factory=dict)
    waste_energy_j: dict[str, float] = field(default_factory=dict)
    # Per held device: (currency per hour over its latest interval, that interval's end on
    # CLOCK_MONOTONIC seconds): the live cost rate.
    rate_by_device: dict[str, tuple[float, float]] = field(default_factory=dict)
    pricing_profiles: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """Currency: GPU time plus energy."""
        return self.gpu_time_cost + self.energy_cost

    @property
    def waste_total(self) -> float:
        """Currency wasted, all reasons."""
        return sum(self.waste_cost.values())

    def rate_per_hour(self, now_mono: float, fresh_s: float = RATE_FRESH_S) -> float:
        """Currency per hour now: the devices priced within the last ``fresh_s`` seconds."""
        return sum(r for r, t in self.rate_by_device.values() if now_mono - t <= fresh_s)

    def to_meta(self) -> dict[str, Any]:
        """The run's ``meta["cost"]`` as stored in the ledger (keys unchanged: ``gpu_time``,
        ``energy`` and ``waste`` hold currency)."""
        return {
            "currency": self.currency,
            "co2_known": self.co2_known,
            "gpu_time": self.gpu_time_cost,
            "energy": self.energy_cost,
            "co2_g": self.co2_g,
            "waste": self.waste_cost,
            "waste_gpu_seconds": self.waste_gpu_seconds,
            "waste_energy_j": self.waste_energy_j,
            "pricing_profiles": self.pricing_profiles,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RunCost:
        cost = cls()
        cost.gpu_time_cost = float(meta.get("gpu_time", 0.0))
        cost.energy_cost = float(meta.get("energy", 0.0))
        cost.co2_g = float(meta.get("co2_g", 0.0))
        for attr, key in (("waste_cost", "waste"), ("waste_gpu_seconds", "waste_gpu_seconds"),
                          ("waste_energy_j", "waste_energy_j")):  # fmt: skip
            setattr(cost, attr, {k: float(v) for k, v in meta.get(key, {}).items()})
        cost.pricing_profiles = list(meta.get("pricing_profiles", []))
        cost.currency = meta.get("currency", "")
        cost.co2_known = bool(meta.get("co2_known", False))
        return cost


@dataclass
class Priced:
    """The price of one piece of work, as added to a run and to its minute rollup (currency,
    except ``co2_g`` in grams CO2e)."""

    gpu_time_cost: float
    energy_cost: float
    co2_g: float
    waste_cost: float


class CostMeter:
    """Prices work with the pricing in force; :attr:`pricing` may be replaced at any time.

    Money is added only in the run's own currency: work priced in another currency (the pricing
    changed currency while the run went on) adds no money and is counted in
    :attr:`currency_mismatches`. Without pricing (kind ``none``) no money is added; carbon is
    added whenever the grid intensity is known."""

    def __init__(self, pricing: Pricing) -> None:
        self.pricing = pricing
        self.currency_mismatches = 0

    def _money(self, cost: RunCost) -> bool:
        """Whether this pricing may add money to ``cost`` (fixing the run's currency)."""
        p = self.pricing
        if p.kind == "none":
            return False
        if not cost.currency:
            cost.currency = p.currency
        if cost.currency != p.currency:
            self.currency_mismatches += 1
            return False
        profile = p.profile
        if not cost.pricing_profiles or cost.pricing_profiles[-1] != profile:
            cost.pricing_profiles.append(profile)
        return True

    def _energy_cost(self, cost: RunCost, joules: float, money: bool) -> tuple[float, float]:
        """(currency, grams CO2e) for ``joules`` at the facility (x PUE)."""
        p = self.pricing
        kwh = joules / JOULES_PER_KWH * p.pue
        co2 = 0.0
        if p.carbon_g_per_kwh is not None:
            co2 = kwh * p.carbon_g_per_kwh
            cost.co2_known = True
        return (kwh * p.energy_price_kwh if money else 0.0), co2

    def gpu_interval(
        self,
        cost: RunCost,
        device: str,
        seconds: float,
        joules: float,
        span_s: float,
        end_mono: float,
        waste_reason: str | None = None,
    ) -> Priced:
        """Price a run's share of one device interval: ``seconds`` of GPU time and ``joules``
        over ``span_s`` seconds of wall time ending at ``end_mono``. ``waste_reason`` (``idle``,
        ``nonfinite``) counts the whole share as waste."""
        money = self._money(cost)
        gpu_time_cost = seconds / 3600.0 * self.pricing.gpu_hour_price if money else 0.0
        energy_cost, co2 = self._energy_cost(cost, joules, money)
        cost.gpu_time_cost += gpu_time_cost
        cost.energy_cost += energy_cost
        cost.co2_g += co2
        if span_s > 0 and money:
            rate = (gpu_time_cost + energy_cost) / span_s * 3600.0
            cost.rate_by_device[device] = (rate, end_mono)
        waste = 0.0
        if waste_reason is not None:
            waste = gpu_time_cost + energy_cost
            cost.waste_cost[waste_reason] = cost.waste_cost.get(waste_reason, 0.0) + waste
            cost.waste_gpu_seconds[waste_reason] = (
                cost.waste_gpu_seconds.get(waste_reason, 0.0) + seconds
            )
            cost.waste_energy_j[waste_reason] = cost.waste_energy_j.get(waste_reason, 0.0) + joules
        return Priced(gpu_time_cost, energy_cost, co2, waste)

    def cpu_energy(self, cost: RunCost, joules: float) -> Priced:
        """Price a run's share of host CPU energy (billed as energy only)."""
        energy_cost, co2 = self._energy_cost(cost, joules, self._money(cost))
        cost.energy_cost += energy_cost
        cost.co2_g += co2
        return Priced(0.0, energy_cost, co2, 0.0)


def projected(cost_so_far: float, steps: int, total_steps: int | None) -> float | None:
    """Linear projection of a run's total cost from its steps so far (None when unknown)."""
    if not total_steps or steps <= 0:
        return None
    return cost_so_far * max(total_steps, steps) / steps
