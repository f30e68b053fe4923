"""The budget decision (pure) and the ``[budget]`` settings."""

from __future__ import annotations

import pytest

from profiler.budget.decision import Budget, BudgetMark, decide
from profiler.budget.settings import BudgetSettingsError, budget_settings


def events(budget, spent, projected, mark):
    return [(e.event, e.reason) for e in decide(budget, spent, projected, mark)]


def test_warns_once_at_warn_at_then_stops_once_at_the_budget():
    b = Budget(100.0, "run", "track", on_exceed="stop", warn_at=0.8)
    mark = BudgetMark()
    assert events(b, 79.99, None, mark) == []
    assert events(b, 80.0, None, mark) == [("warn", "warn_at")]
    assert events(b, 99.0, None, mark) == []
    assert events(b, 100.0, None, mark) == [("stop", "budget")]
    assert events(b, 150.0, None, mark) == []


def test_a_projection_above_the_budget_warns_first():
    b = Budget(100.0, "run", "track", on_exceed="stop")
    mark = BudgetMark()
    assert events(b, 10.0, 100.0, mark) == []  # not above
    assert events(b, 10.0, 100.5, mark) == [("warn", "projected")]
    assert events(b, 85.0, 200.0, mark) == []  # warned already


def test_warn_never_stops_and_a_jump_past_the_budget_gives_both():
    assert events(Budget(1.0, "run", "x", "warn"), 5.0, None, BudgetMark()) == [("warn", "warn_at")]
    assert events(Budget(1.0, "run", "x", "stop"), 5.0, None, BudgetMark()) == [
        ("warn", "warn_at"), ("stop", "budget"),
    ]  # fmt: skip


def test_settings_defaults_and_values():
    s = budget_settings({})
    assert (s.per_run, s.on_exceed, s.warn_at, s.projects) == (None, "warn", 0.8, {})
    s = budget_settings({"monthly": 9, "per_run": 50, "on_exceed": "stop", "warn_at": 0.5,
                         "projects": {"vision": 8000}})  # fmt: skip
    assert (s.per_run, s.on_exceed, s.warn_at, s.projects) == (50.0, "stop", 0.5,
                                                               {"vision": 8000.0})  # fmt: skip


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"per_run": 0}, "p.toml [budget]: 'per_run' must be a positive amount, got 0"),
        ({"on_exceed": "kill"}, "p.toml [budget]: 'on_exceed' must be \"warn\" or \"stop\", "
                                "got 'kill'"),
        ({"warn_at": 1.5}, "p.toml [budget]: 'warn_at' must be a share of the budget in (0, 1], "
                           "got 1.5"),
        ({"per_rn": 5}, "p.toml [budget]: unknown key 'per_rn' (known: monthly, projects, "
                        "per_run, on_exceed, warn_at)"),
        ({"projects": {"v": -1}}, "p.toml [budget]: 'projects.v' must be a positive amount, "
                                  "got -1"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line(table, message):
    with pytest.raises(BudgetSettingsError) as e:
        budget_settings(table, "p.toml")
    assert str(e.value) == message
