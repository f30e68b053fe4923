"""The CLI's one error: a line for the user, printed as ``profiler: error: ...`` (exit 2)."""

from __future__ import annotations


class CliError(Exception):
    """A one-line error for the user."""
