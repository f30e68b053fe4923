"""The monthly report in the format asked for: ``md`` (:mod:`profiler.report.markdown`),
``html`` (:mod:`profiler.report.html`), ``csv`` and ``json`` (:mod:`profiler.report.tables`)."""

from __future__ import annotations

from profiler.report.html import to_html
from profiler.report.markdown import to_markdown
from profiler.report.model import MonthReport
from profiler.report.tables import to_csv, to_json

FORMATS = ("md", "html", "csv", "json")


def render(report: MonthReport, fmt: str) -> str:
    """The report in one of :data:`FORMATS`."""
    if fmt == "html":
        return to_html(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    return to_markdown(report)
