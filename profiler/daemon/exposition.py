"""The Prometheus text format (0.0.4) as ``/metrics`` writes it: label values, sample values,
metric families, and a page joined once from all of them.

Written for speed (a page of 200 live runs on 8 GPUs holds about 13,000 series): the common
finite float takes one ``repr``, a family keeps its lines in a list and the page is joined once.
What it spells is exactly what ``repr(float(value))`` spells, ``+Inf``, ``-Inf`` and ``NaN``
aside; ``promtool check metrics`` checks the pages in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

INT_EXACT = 10**15
"""Integers below this (in magnitude) are spelt ``<int>.0``, as ``repr(float(n))`` spells them
(repr switches to an exponent from 1e16; every integer below 2**53 is a float exactly)."""


def label_value(text: str) -> str:
    """A label value escaped for the text format (backslash, double quote). Characters that are
    not printable (control characters such as ESC and newline, lone surrogates) are dropped
    first, as the daemon does with the text hooks send, so what any source supplied (a run, the
    configured hostname, a GPU's model name) reaches no terminal or dashboard raw."""
    if not text.isprintable():
        text = "".join(ch for ch in text if ch.isprintable())
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


def labels(names: Sequence[str], values: Sequence[str]) -> str:
    """``name="value",...`` for the names and (unescaped) values given."""
    return ",".join(f'{n}="{label_value(str(v))}"' for n, v in zip(names, values, strict=True))


def number(value: float) -> str:
    """A sample value as the text format spells it: ``repr(float(value))`` for finite values,
    ``+Inf``, ``-Inf``, ``NaN`` otherwise."""
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan): the common case
            return repr(value)
    elif kind is int and -INT_EXACT < value < INT_EXACT:
        return f"{value}.0"
    else:  # bool, a large int, a numpy scalar: as float() makes it
        value = float(value)
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


class Family:
    """One metric family's text: its HELP and TYPE lines and its samples, in order added. A
    counter's samples are named ``<name>_total``. ``lines`` holds text ending in a newline,
    one sample per item or (a histogram's, see :func:`histogram_text`) several."""

    __slots__ = ("name", "kind", "help", "lines")

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = f"{name}_total" if kind == "counter" else name
        self.kind, self.help = kind, help
        self.lines: list[str] = []

    def add(self, label_text: str, value: float) -> None:
        """One sample; ``label_text`` is already rendered (see :func:`labels`), may be empty."""
        if label_text:
            self.lines.append(f"{self.name}{{{label_text}}} {number(value)}\n")
        else:
            self.lines.append(f"{self.name} {number(value)}\n")

    def add_histogram(
        self, label_text: str, buckets: list[tuple[str, int]], sum_value: float
    ) -> None:
        """A histogram's ``_bucket`` (``le`` from ``buckets``, cumulative, ending ``+Inf``),
        ``_count`` and ``_sum`` samples."""
        name, lines = self.name, self.lines
        for le, count in buckets:
            lines.append(f'{name}_bucket{{{label_text},le="{le}"}} {number(count)}\n')
        lines.append(f"{name}_count{{{label_text}}} {number(buckets[-1][1])}\n")
        lines.append(f"{name}_sum{{{label_text}}} {number(sum_value)}\n")

    def head(self) -> str:
        """The family's ``# HELP`` and ``# TYPE`` lines."""
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {self.name} {help_text}\n# TYPE {self.name} {self.kind}\n"

    def text(self) -> str:
        """The family's whole text: its head and its samples."""
        return self.head() + "".join(self.lines)


def single(name: str, kind: str, help_text: str, value: float) -> Family:
    """A family of one sample without labels."""
    family = Family(name, kind, help_text)
    family.add("", value)
    return family


def page(families: Iterable[Family]) -> bytes:
    """The families' text, one after the other, UTF-8 encoded (one join for the whole page)."""
    parts: list[str] = []
    for family in families:
        parts.append(family.head())
        parts += family.lines
    return "".join(parts).encode()


def bucket_labels(bounds: Sequence[float]) -> tuple[str, ...]:
    """The ``le`` label values of a histogram's buckets, ``+Inf`` last."""
    return (*(repr(float(b)) for b in bounds), "+Inf")


class HistogramText:
    """A histogram's ``_bucket``, ``_count`` and ``_sum`` lines, kept from one page to the next
    while its counts stay the same (a run's step histograms change only when it steps). The text
    is a function of the key it is kept under (family, labels, bounds, counts, sum), so a kept
    text is never stale; entries no page used are dropped at :meth:`next_page`."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], tuple[tuple[object, ...], str]] = {}
        self._used: dict[tuple[str, str], tuple[tuple[object, ...], str]] = {}
        self._le: dict[tuple[float, ...], tuple[str, ...]] = {}

    def next_page(self) -> None:
        """Start a page: keep what the last page used, drop the rest."""
        self._kept, self._used = self._used, {}

    def text(
        self,
        name: str,
        label_text: str,
        bounds: tuple[float, ...],
        counts: Sequence[int],
        n: int,
        total: float,
    ) -> str:
        """The lines of family ``name``'s histogram for ``label_text``: ``counts[i]`` observed
        values in ``(bounds[i-1], bounds[i]]``, ``n`` observed in all, summing to ``total``."""
        key = (name, label_text)
        state = (bounds, tuple(counts), n, total)
        kept = self._kept.get(key)
        if kept is None or kept[0] != state:
            kept = (state, self._render(name, label_text, bounds, counts, n, total))
        self._used[key] = kept
        return kept[1]

    def _render(
        self,
        name: str,
        label_text: str,
        bounds: tuple[float, ...],
        counts: Sequence[int],
        n: int,
        total: float,
    ) -> str:
        le = self._le.get(bounds)
        if le is None:
            le = self._le[bounds] = bucket_labels(bounds)
        lines, running = [], 0
        for bound, count in zip(le, (*counts, None), strict=True):
            running = n if count is None else running + count
            lines.append(f'{name}_bucket{{{label_text},le="{bound}"}} {number(running)}\n')
        lines.append(f"{name}_count{{{label_text}}} {number(n)}\n")
        lines.append(f"{name}_sum{{{label_text}}} {number(total)}\n")
        return "".join(lines)
