"""Minute rollups as accounting fills them in: one run's totals for one minute
(:class:`MinuteTotals`, the ledger's rollup row), the key of a minute (:func:`minute`), the way
to ask for a run's minute (:data:`RollupFor`) and adding a priced share to it
(:func:`add_priced`). Plain data: no I/O (the daemon keeps the rollups and writes them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from profiler.cost.records import Priced


class MinuteTotals(Protocol):
    """One run's totals for one minute (the ledger's rollup row): steps, samples, joules,
    GPU-seconds, money in the pricing's currency and grams CO2e."""

    steps: int
    samples: int
    gpu_energy_j: float
    gpu_seconds: float
    cpu_energy_j: float
    cost_gpu_time: float
    cost_energy: float
    co2_g: float
    waste_cost: float


RollupFor = Callable[[str, float], MinuteTotals]
"""(run id, unix seconds) -> the totals of that run's minute, created when first asked."""


def minute(unix_s: float) -> int:
    """The start of the minute holding ``unix_s`` (unix seconds): the key of minute rollups."""
    return int(unix_s // 60) * 60


def add_priced(rollup: MinuteTotals, priced: Priced) -> None:
    """Add one priced share (currency, grams CO2e) to a minute's totals."""
    rollup.cost_gpu_time += priced.gpu_time_cost
    rollup.cost_energy += priced.energy_cost
    rollup.co2_g += priced.co2_g
    rollup.waste_cost += priced.waste_cost
