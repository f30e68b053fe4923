"""What work cost, as records with no I/O: a run's running totals (:class:`RunCost`) and the
price of one piece of work (:class:`Priced`). Accounting keeps them on runs and rollups;
:class:`profiler.cost.meter.CostMeter` fills them in at the prices in force.

Money in the pricing's currency, CO2e in grams, energy in joules, GPU time in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RATE_FRESH_S = 5.0


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
