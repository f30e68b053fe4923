"""Run starts and ends as Grafana annotations: the text and tags of each
(:func:`announcement`), posted through an :class:`Announcer` (``profiler.grafana.Annotator``,
which queues them and never blocks the daemon's loop). Times are unix seconds.
"""

from __future__ import annotations

from typing import Protocol

from profiler.accounting.runs import Run


class Announcer(Protocol):
    """Where annotations go (:class:`profiler.grafana.Annotator`)."""

    def annotate(self, time_s: float, text: str, tags: list[str]) -> None: ...

    def close(self, timeout: float = 2.0) -> None: ...


def announcement(run: Run, event: str, now_wall: float) -> tuple[float, str, list[str]]:
    """(unix seconds, text, tags) of the annotation for ``run``'s ``event`` (``start`` or
    ``end``); ``now_wall`` stands for an end time not recorded yet. The end's text names the
    run's cost in its currency when it is priced."""
    what = f"{run.name} ({run.framework or 'unknown framework'})"
    if event == "start":
        text, when = f"{what} started", run.started_at
    else:
        cost = run.cost
        money = f", cost {cost.total:.2f} {cost.currency}" if cost.currency else ""
        text, when = f"{what} {run.status}{money}", run.ended_at or now_wall
    tags = ["ml-profiler", f"run:{run.id}", event] + ([run.status] if event == "end" else [])
    return when, text, tags
