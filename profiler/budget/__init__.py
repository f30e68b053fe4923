"""Budgets that act: the pure decision (:mod:`profiler.budget.decision`), the settings
(:mod:`profiler.budget.settings`) and the daemon's side (:mod:`profiler.budget.enforcer`)."""
