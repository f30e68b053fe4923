"""``profiler.toml [budget]``: what the daemon enforces (``per_run``, ``on_exceed``,
``warn_at``, ``[budget.projects]``) besides ``monthly`` (reports and alerts only). Amounts are
in the pricing's currency."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

KNOWN_KEYS = ("monthly", "projects", "per_run", "on_exceed", "warn_at")
ON_EXCEED = ("warn", "stop")


class BudgetSettingsError(ValueError):
    """A bad ``[budget]`` entry; the message is one line naming it."""


@dataclass(frozen=True)
class BudgetSettings:
    """``per_run``: every run's budget (None: none unless the run gives one); ``on_exceed``:
    ``warn`` (default) or ``stop``; ``warn_at``: share of a budget at which to warn (0.8);
    ``projects``: project -> monthly budget across the project's runs on this node."""

    per_run: float | None = None
    on_exceed: str = "warn"
    warn_at: float = 0.8
    projects: dict[str, float] = field(default_factory=dict)


def _amount(key: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise BudgetSettingsError(
            f"{where} [budget]: '{key}' must be a positive amount, got {value!r}"
        )
    return float(value)


def budget_settings(table: dict[str, Any], where: str = "profiler.toml") -> BudgetSettings:
    """The enforced part of ``[budget]`` (raises BudgetSettingsError with one line)."""
    unknown = set(table) - set(KNOWN_KEYS)
    if unknown:
        raise BudgetSettingsError(
            f"{where} [budget]: unknown key '{sorted(unknown)[0]}' (known: {', '.join(KNOWN_KEYS)})"
        )
    per_run = _amount("per_run", table["per_run"], where) if "per_run" in table else None
    on_exceed = table.get("on_exceed", "warn")
    if on_exceed not in ON_EXCEED:
        raise BudgetSettingsError(
            f'{where} [budget]: \'on_exceed\' must be "warn" or "stop", got {on_exceed!r}'
        )
    warn_at = table.get("warn_at", 0.8)
    if isinstance(warn_at, bool) or not isinstance(warn_at, (int, float)) or not 0 < warn_at <= 1:
        raise BudgetSettingsError(
            f"{where} [budget]: 'warn_at' must be a share of the budget in (0, 1], got {warn_at!r}"
        )
    projects = table.get("projects", {})
    if not isinstance(projects, dict):
        raise BudgetSettingsError(f"{where} [budget]: 'projects' must be a table")
    return BudgetSettings(
        per_run=per_run,
        on_exceed=on_exceed,
        warn_at=float(warn_at),
        projects={str(k): _amount(f"projects.{k}", v, where) for k, v in projects.items()},
    )
