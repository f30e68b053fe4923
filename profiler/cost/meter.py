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

The records it fills in (:class:`~profiler.cost.records.RunCost` per run,
:class:`~profiler.cost.records.Priced` per piece of work) are in :mod:`profiler.cost.records`.
The names users see stay as they were, for compatibility: the ledger's columns
``cost_gpu_time`` and ``cost_energy``, the keys ``gpu_time``, ``energy`` and ``waste`` of the
run's ``meta["cost"]`` (``RunCost.to_meta``), and the ``component`` label of
``profiler_run_cost_total``.

Waste, per run, in GPU-seconds, joules and currency (``waste_cost``):

- ``idle``: a device interval the run held while the device did no work: utilization at most
  :data:`~profiler.accounting.attribution.IDLE_UTILIZATION` and no step of the run ended in or
  after the interval's start (the rule is attribution's; the meter prices the share as waste).
- ``nonfinite``: every interval after the end of the first step whose loss was NaN or infinite.
"""

from __future__ import annotations

from profiler.cost.pricing import Pricing
from profiler.cost.records import Priced, RunCost
from profiler.units import JOULES_PER_KWH


def no_pricing() -> Pricing:
    """No pricing configured: money is not computed (zero prices), carbon neither."""
    return Pricing(
        currency="USD", profile="none", kind="none", gpu_hour_price=0.0, energy_price_kwh=0.0,
        pue=1.0, carbon_g_per_kwh=None, carbon_source="", as_of="", sources={},
    )  # fmt: skip


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
