"""Figures as report text, shared by the Markdown and HTML renderers: a sum over runs that says
how many runs it leaves out ("1.25 (2 runs unknown)"), "unknown" where no run knows it (never
0), and the notes that go with them."""

from __future__ import annotations

from collections.abc import Callable

from profiler.report.model import MonthReport


def no_work_notice(report: MonthReport) -> str:
    """The line an empty month's report opens with, so that zeros are not mistaken for data."""
    return f"No work was recorded in {report.month}: every figure below is zero."


def count_text(value: int | None, unknown_runs: int = 0) -> str:
    """A count over runs: "unknown" when no run knows it, else the sum of the runs that do,
    saying how many runs it leaves out ("1,000 (2 runs unknown)")."""
    if value is None:
        return "unknown"
    if unknown_runs:
        return f"{value:,} ({unknown_runs} run{'s' if unknown_runs > 1 else ''} unknown)"
    return f"{value:,}"


def cell_text(value: float | None, fmt: str) -> str:
    """One run's or group's figure formatted with ``fmt``, "-" when unknown (a table cell)."""
    return "-" if value is None else format(value, fmt)


def amount_text(value: float | None, fmt: str, unknown_runs: int = 0) -> str:
    """A figure summed over runs, formatted with ``fmt``: "unknown" when no run knows it, else
    the sum of the runs that do, saying how many runs it leaves out ("1.25 (2 runs unknown)")."""
    if value is None:
        return "unknown"
    if unknown_runs:
        return f"{value:{fmt}} ({unknown_runs} run{'s' if unknown_runs > 1 else ''} unknown)"
    return f"{value:{fmt}}"


def kwh_text(value: float, fmt: str, gpu_unknown_runs: int = 0) -> str:
    """Measured energy in kWh, saying for how many runs the GPU part is unknown (no GPU sensor:
    only their CPU energy is in it), e.g. "1.250 (GPU energy unknown for 2 runs)"."""
    if gpu_unknown_runs:
        runs = f"{gpu_unknown_runs} run{'s' if gpu_unknown_runs > 1 else ''}"
        return f"{value:{fmt}} (GPU energy unknown for {runs})"
    return f"{value:{fmt}}"


def cost_unknown_note(unknown_runs: int) -> str:
    """The sentence saying how many runs' cost is unknown and left out of the money figures."""
    runs = f"{unknown_runs} run{'s' if unknown_runs > 1 else ''}"
    return (
        f"The cost of {runs} is unknown (no GPU sensor measured the GPU time it is priced "
        "from): left out of the money figures, not counted as 0."
    )


BASIS_TEXT = {
    "activity": "by measured per-process activity",
    "equal": "equally among the runs holding a GPU (no per-process activity)",
    "slices": "by MIG instance size (a MIG GPU with no per-process activity)",
    "mixed": "partly by activity, partly equally (the fleet report cannot tell the parts apart)",
}


def split_note(hours_by_basis: dict[str, float]) -> str | None:
    """The sentence saying how the month's GPU energy was split on shared GPUs, by GPU-hours per
    basis ("GPU energy split: 3.200 GPU-hours by measured per-process activity, 1.100 equally
    among the runs holding a GPU (no per-process activity)."); None when no run's basis is
    known."""
    parts = [(basis, hours) for basis, hours in sorted(hours_by_basis.items()) if hours > 0]
    if not parts:
        return None
    text = ", ".join(
        f"{hours:,.3f}{' GPU-hours' if i == 0 else ''} {BASIS_TEXT.get(basis, basis)}"
        for i, (basis, hours) in enumerate(parts)
    )
    return f"GPU energy split: {text}."


def mig_note(runs_by_profile: dict[str, int], cell: Callable[[str], str] = str) -> str | None:
    """The sentence saying which MIG instance profiles the month's runs held ("MIG instances
    held: 1g.10gb by 2 runs, 3g.40gb by 1 run; ..."), each profile (the driver's text) through
    ``cell`` (a format's escaping); None when no run held one."""
    if not runs_by_profile:
        return None
    held = ", ".join(f"{cell(profile)} by {n} run{'s' if n > 1 else ''}"
                     for profile, n in sorted(runs_by_profile.items()))  # fmt: skip
    return (f"MIG instances held: {held}; a run on an instance is billed the instance's share "
            "of the GPU (its slices over the GPU's).")  # fmt: skip


def share_text(value: float | None) -> str:
    """A fraction as a percentage cell ("25.0%"), "-" when unknown."""
    return "-" if value is None else f"{value:.1%}"
