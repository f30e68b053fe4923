"""How old the pricing's figures are: the ``as_of`` dates in a :class:`Pricing`'s sources, and a
warning line for each figure older than a limit (``profiler prices`` prints them)."""

from __future__ import annotations

import datetime
import re

from profiler.cost.pricing import Pricing

_AS_OF = re.compile(r"as_of (\d{4}-\d{2}-\d{2})")


def figure_dates(pricing: Pricing) -> dict[str, str]:
    """Figure name -> ISO as_of date, for the dated figures in ``pricing.sources``."""
    dates: dict[str, str] = {}
    for name, text in pricing.sources.items():
        match = _AS_OF.search(text)
        if match:
            dates[name] = match.group(1)
    if not dates and pricing.as_of:
        dates["as_of"] = pricing.as_of
    return dates


def stale_figures(pricing: Pricing, today: datetime.date, max_age_days: int = 180) -> list[str]:
    """One human line per figure whose as_of date is more than ``max_age_days`` before
    ``today`` (oldest first); empty when every dated figure is fresh or none is dated."""
    lines = []
    for name, as_of in sorted(figure_dates(pricing).items(), key=lambda kv: (kv[1], kv[0])):
        try:
            age = (today - datetime.date.fromisoformat(as_of)).days
        except ValueError:
            continue
        if age > max_age_days:
            lines.append(
                f"{name} is from {as_of}, {age} days old (more than {max_age_days}): check the "
                "current figure and override it in profiler.toml [catalog]"
            )
    return lines
