"""The budget decision, pure: from a budget, what was spent and the projected cost at the end,
which events are due. No I/O, no clock; amounts in the pricing's currency.

- ``warn``: once, when the spend reaches ``warn_at`` of the budget, or when the projected cost
  at the end first exceeds the budget (whichever comes first).
- ``stop``: once, when the spend reaches the budget and the budget says ``on_exceed = "stop"``
  (a warning is then due too, if none was given).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """A budget that applies to a run. ``scope``: ``run`` (the run's own) or ``project`` (its
    project's month on this node); ``source``: where it came from (``track``, ``profiler run``,
    ``per_run``, ``project <name>``); ``on_exceed``: ``warn`` or ``stop``; ``warn_at``: share."""

    amount: float
    scope: str
    source: str
    on_exceed: str = "warn"
    warn_at: float = 0.8


@dataclass
class BudgetMark:
    """What was already decided for one (run, budget): events are given once each."""

    warned: bool = False
    stopped: bool = False


@dataclass(frozen=True)
class BudgetEvent:
    """``event``: ``warn`` or ``stop``; ``reason``: ``warn_at``, ``projected`` or ``budget``;
    ``spent`` and ``projected`` (None: unknown) against ``budget.amount``."""

    event: str
    reason: str
    spent: float
    projected: float | None
    budget: Budget


def decide(
    budget: Budget, spent: float, projected: float | None, mark: BudgetMark
) -> list[BudgetEvent]:
    """The events due now for ``budget`` given ``spent`` (and ``projected``, None when
    unknown); updates ``mark`` so each event is given once."""
    events: list[BudgetEvent] = []
    if not mark.warned:
        reason = None
        if spent >= budget.warn_at * budget.amount:
            reason = "warn_at"
        elif projected is not None and projected > budget.amount:
            reason = "projected"
        if reason is not None:
            mark.warned = True
            events.append(BudgetEvent("warn", reason, spent, projected, budget))
    if not mark.stopped and budget.on_exceed == "stop" and spent >= budget.amount:
        mark.stopped = True
        events.append(BudgetEvent("stop", "budget", spent, projected, budget))
    return events
