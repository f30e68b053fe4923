"""In-process hooks that stream training steps to the profiler daemon.

Importing this package imports no framework: ``hooks.pytorch`` imports torch, and the other
framework modules import theirs, only when you import them.
"""

from hooks.budget import BudgetExceeded

__all__ = ["BudgetExceeded", "wire"]
