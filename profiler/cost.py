"""Money, carbon and waste for runs, accumulated interval by interval at the prices in force.

The daemon calls :meth:`CostMeter.gpu_interval` for each share of a device's energy it gives a
run and :meth:`CostMeter.cpu_energy` for each share of host CPU energy. Each call prices what it
is given with the :class:`~profiler.pricing.Pricing` in force at that moment, so a price change
later (a new ``profiler.toml``, a restarted daemon) never rewrites what a run already cost.

Components (currency of the pricing):

- ``gpu_time``: GPU-seconds / 3600 x ``gpu_hour_price`` (cloud: the instance price per GPU;
  on-prem: amortised hardware and opex per GPU-hour; flat: as configured).
- ``energy``: kWh x PUE x ``energy_price_kwh`` over the run's GPU and CPU energy. Cloud pricing
  has ``energy_price_kwh = 0``: energy is inside the instance price; its kWh are still reported.
- ``co2_g``: kWh x PUE x grid intensity (gCO2e/kWh), when the intensity is known.

Waste, per run, in GPU-seconds, joules and currency:

- ``idle``: a device interval the run held while the device did no work: utilization at most
  :data:`IDLE_UTILIZATION` and no step of the run ended in or after the interval's start.
- ``nonfinite``: every interval after the end of the first step whose loss was NaN or infinite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from profiler.pricing import Pricing

IDLE_UTILIZATION = 0.05
JOULES_PER_KWH = 3.6e6


def no_pricing() -> Pricing:
    """No pricing configured: money is not computed (zero prices), carbon neither."""
    return Pricing(
        currency="USD", profile="none", kind="none", gpu_hour_price=0.0, energy_price_kwh=0.0,
        pue=1.0, carbon_g_per_kwh=None, carbon_source="", as_of="", sources={},
    )  # fmt: skip


@dataclass
class RunCost:
    """What one run cost so far (currency of the pricing in force, grams of CO2e)."""

    gpu_time: float = 0.0
    energy: float = 0.0
    co2_g: float = 0.0
    waste: dict[str, float] = field(default_factory=dict)  # reason -> currency
    waste_gpu_seconds: dict[str, float] = field(default_factory=dict)
    waste_energy_j: dict[str, float] = field(default_factory=dict)
    # Currency per hour over the latest interval of each held device (the live cost rate).
    rate_by_device: dict[str, float] = field(default_factory=dict)
    pricing_profiles: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.gpu_time + self.energy

    @property
    def waste_total(self) -> float:
        return sum(self.waste.values())

    @property
    def rate_per_hour(self) -> float:
        return sum(self.rate_by_device.values())

    def to_meta(self) -> dict[str, Any]:
        return {
            "gpu_time": self.gpu_time,
            "energy": self.energy,
            "co2_g": self.co2_g,
            "waste": self.waste,
            "waste_gpu_seconds": self.waste_gpu_seconds,
            "waste_energy_j": self.waste_energy_j,
            "pricing_profiles": self.pricing_profiles,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RunCost:
        cost = cls()
        for key in ("gpu_time", "energy", "co2_g"):
            setattr(cost, key, float(meta.get(key, 0.0)))
        for key in ("waste", "waste_gpu_seconds", "waste_energy_j"):
            setattr(cost, key, {k: float(v) for k, v in meta.get(key, {}).items()})
        cost.pricing_profiles = list(meta.get("pricing_profiles", []))
        return cost


@dataclass
class Priced:
    """The price of one piece of work, as added to a run and to its minute rollup."""

    gpu_time: float
    energy: float
    co2_g: float
    waste: float


class CostMeter:
    """Prices work with the pricing in force; :attr:`pricing` may be replaced at any time."""

    def __init__(self, pricing: Pricing) -> None:
        self.pricing = pricing

    @property
    def enabled(self) -> bool:
        return self.pricing.kind != "none"

    def _energy(self, joules: float) -> tuple[float, float]:
        """(currency, grams CO2e) for ``joules`` at the facility (x PUE)."""
        p = self.pricing
        kwh = joules / JOULES_PER_KWH * p.pue
        co2 = kwh * p.carbon_g_per_kwh if p.carbon_g_per_kwh is not None else 0.0
        return kwh * p.energy_price_kwh, co2

    def _note(self, cost: RunCost) -> None:
        profile = self.pricing.profile
        if not cost.pricing_profiles or cost.pricing_profiles[-1] != profile:
            cost.pricing_profiles.append(profile)

    def gpu_interval(
        self,
        cost: RunCost,
        device: str,
        seconds: float,
        joules: float,
        span_s: float,
        waste_reason: str | None = None,
    ) -> Priced:
        """Price a run's share of one device interval: ``seconds`` of GPU time and ``joules``
        over ``span_s`` seconds of wall time. ``waste_reason`` (``idle``, ``nonfinite``) counts
        the whole share as waste."""
        self._note(cost)
        gpu_time = seconds / 3600.0 * self.pricing.gpu_hour_price
        energy, co2 = self._energy(joules)
        cost.gpu_time += gpu_time
        cost.energy += energy
        cost.co2_g += co2
        if span_s > 0:
            cost.rate_by_device[device] = (gpu_time + energy) / span_s * 3600.0
        waste = 0.0
        if waste_reason is not None:
            waste = gpu_time + energy
            cost.waste[waste_reason] = cost.waste.get(waste_reason, 0.0) + waste
            cost.waste_gpu_seconds[waste_reason] = (
                cost.waste_gpu_seconds.get(waste_reason, 0.0) + seconds
            )
            cost.waste_energy_j[waste_reason] = cost.waste_energy_j.get(waste_reason, 0.0) + joules
        return Priced(gpu_time, energy, co2, waste)

    def cpu_energy(self, cost: RunCost, joules: float) -> Priced:
        """Price a run's share of host CPU energy (billed as energy only)."""
        self._note(cost)
        energy, co2 = self._energy(joules)
        cost.energy += energy
        cost.co2_g += co2
        return Priced(0.0, energy, co2, 0.0)


def projected(cost_so_far: float, steps: int, total_steps: int | None) -> float | None:
    """Linear projection of a run's total cost from its steps so far (None when unknown)."""
    if not total_steps or steps <= 0:
        return None
    return cost_so_far * max(total_steps, steps) / steps
