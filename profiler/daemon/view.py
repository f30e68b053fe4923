"""What ``/metrics`` reads of the daemon: a read-only view (:class:`MetricsView`), so that the
exporter depends on this small interface and not on :class:`profiler.daemon.core.Daemon`, which
implements it. Readers hold :attr:`MetricsView.lock` while they read, taking it through
:meth:`profiler.daemon.statelock.StateLock.reading` (first in line between the main loop's holds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

from profiler.accounting.devices import DeviceState
from profiler.accounting.runs import Run
from profiler.budget.enforcer import BudgetEnforcer
from profiler.config import Config
from profiler.cost.meter import CostMeter
from profiler.daemon.statelock import StateLock


class MetricsView(Protocol):
    """The daemon's state as the exporter renders it. ``clock`` gives monotonic seconds,
    ``wall`` unix seconds; ``started_at`` is unix seconds; ``sample_seconds_last`` is the last
    sensor pass's duration in seconds; ``cpu_energy_j`` maps a CPU zone to its cumulative
    joules and their source."""

    lock: StateLock
    config: Config
    hostname: str
    gpu_source: str
    started_at: float
    sample_seconds_last: float
    clock: Callable[[], float]
    wall: Callable[[], float]
    cost_meter: CostMeter
    runs: dict[str, Run]
    devices: dict[str, DeviceState]
    health: Counter[str]
    message_counts: Counter[str]
    budgets: BudgetEnforcer

    @property
    def cpu_energy_j(self) -> dict[str, tuple[float, str]]: ...
