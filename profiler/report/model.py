"""The monthly report's model: the records (:class:`Totals`, :class:`RunLine`,
:class:`MonthReport`), how run lines add up (:func:`sum_runs`, :func:`group_runs`), the month
a ``--month`` names (:func:`parse_month`) and the checks on months and budgets.

Units: money in the report's currency (the currency most of the month's priced runs use; runs
priced in another currency are listed with their own figures but left out of the money totals);
energy in kWh as measured (GPU plus CPU, before PUE); CO2 in kg CO2e as the cost engine
recorded it (PUE included); time in unix seconds, months in UTC. No I/O: the month is read from
the ledger by :mod:`profiler.report.monthly` and from Prometheus by :mod:`profiler.report.fleet`;
the renderers (:mod:`profiler.report.render`) import this module, never the reverse.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from profiler.accounting.runs import attribution_basis
from profiler.units import JOULES_PER_KWH

GROUP_KEYS = ("project", "user", "framework", "host", "gpu_model")
TOP_RUNS = 10
UTC = dt.timezone.utc
# --month accepts these years: before 1970 no ledger holds data, and 9999 is the last year a
# date can have.
FIRST_YEAR, LAST_YEAR = 1970, 9999


class ReportError(ValueError):
    """A bad month, grouping or budget; the message is one line."""


# A figure that may be unknown for a run (None) -> the Totals field counting the runs for which
# it is: sums over runs add the known ones and say how many runs they leave out.
UNKNOWN_RUNS = {
    "steps": "steps_unknown_runs", "samples": "samples_unknown_runs",
    "co2_kg": "co2_unknown_runs", "gpu_hours": "gpu_hours_unknown_runs",
    # money priced from GPU time: unknown with no GPU sensor (null in `profiler runs --json`)
    "cost": "cost_unknown_runs", "cost_gpu_time": "cost_unknown_runs",
    "waste_cost": "cost_unknown_runs",
}  # fmt: skip


@dataclass
class Totals:
    """Sums over a set of run-minutes. Money in the report's currency; energy in kWh."""

    # Money (cost, its GPU-time part, waste) sums the runs whose cost is known; None when no
    # run's is. A priced run measured by no GPU sensor has unknown GPU time, so an unknown cost
    # (counted in ``cost_unknown_runs``); its energy cost (CPU energy) is known.
    cost: float | None = 0.0
    cost_gpu_time: float | None = 0.0
    cost_energy: float = 0.0
    waste_cost: float | None = 0.0
    # Measured energy: CPU energy, plus GPU energy where a GPU sensor measured it;
    # ``gpu_energy_unknown_runs`` counts the runs whose GPU energy is unknown (no GPU sensor),
    # so ``kwh`` holds only their CPU part.
    kwh: float = 0.0
    co2_kg: float | None = 0.0
    gpu_hours: float | None = 0.0
    runs: int = 0
    # Counts over the runs that know them; None when no run does. ``*_unknown_runs`` counts
    # the runs whose steps/samples are unknown (no hook timed steps; no batch size), never 0.
    steps: int | None = 0
    samples: int | None = 0
    steps_unknown_runs: int = 0
    samples_unknown_runs: int = 0
    # Likewise: ``co2_kg`` sums the runs whose grid carbon intensity was known (None when no
    # run's was), ``gpu_hours`` the runs a GPU sensor measured (None when no sensor measured
    # any: a daemon with ``PROFILER_GPU=none``); the counts say how many runs each leaves out.
    co2_unknown_runs: int = 0
    gpu_hours_unknown_runs: int = 0
    cost_unknown_runs: int = 0
    gpu_energy_unknown_runs: int = 0

    def add(self, other: Totals) -> None:
        for key in asdict(self):
            if key in UNKNOWN_RUNS:
                known = [v for v in (getattr(self, key), getattr(other, key)) if v is not None]
                setattr(self, key, sum(known) if known else None)
            else:
                setattr(self, key, getattr(self, key) + getattr(other, key))
        for key, unknown in UNKNOWN_RUNS.items():
            if self.runs and getattr(self, unknown) == self.runs:
                setattr(self, key, None)

    @property
    def cost_per_1k_samples(self) -> float | None:
        """Currency per 1,000 samples; None when samples or cost are unknown for any run (a
        ratio over part of the runs would be wrong) or samples are zero."""
        if not self.samples or self.samples_unknown_runs or self.cost_unknown_runs:
            return None
        if self.cost is None:
            return None
        return self.cost / self.samples * 1000

    @property
    def joules_per_sample(self) -> float | None:
        """Joules per sample; None when samples or GPU energy are unknown for any run, or
        samples are zero."""
        if not self.samples or self.samples_unknown_runs or self.gpu_energy_unknown_runs:
            return None
        return self.kwh * JOULES_PER_KWH / self.samples


@dataclass
class RunLine:
    """One run's part of the month."""

    id: str
    name: str
    project: str
    user: str
    framework: str
    host: str
    gpu_model: str
    status: str
    simulated: bool
    currency: str
    totals: Totals
    waste_by_reason: dict[str, float] = field(default_factory=dict)  # whole run, currency
    # How the run's GPU energy was split on shared GPUs (whole run): "activity" (by each
    # process's measured activity), "equal" (equally among the runs holding the GPU), "slices"
    # (by MIG instance size, a MIG GPU with no per-process activity), "mixed" (several);
    # None: unknown (no GPU time, or a ledger from before attribution was recorded).
    attribution: str | None = None
    # Of the run's GPU energy (whole run), the fraction that is its equal share of its GPUs'
    # idle power (0..1); None when the idle power was unknown.
    gpu_idle_share: float | None = None
    # The month's GPU-hours (``totals.gpu_hours``) by the basis their energy was split on,
    # in the proportions of the whole run's device-seconds per basis; {} when unknown.
    gpu_hours_by_basis: dict[str, float] = field(default_factory=dict)
    # The MIG profiles ("3g.40gb") of the MIG instances the run held; [] on GPUs without MIG.
    mig_profiles: list[str] = field(default_factory=list)
    # The run's own budget (profiler.budget; in ``currency``, None: none) and the budget
    # events the daemon gave it ("warn", "stop"; a project budget's included), oldest first.
    budget: float | None = None
    budget_events: list[str] = field(default_factory=list)


@dataclass
class MonthReport:
    month: str  # YYYY-MM
    currency: str
    totals: Totals
    previous: Totals
    groups: dict[str, list[tuple[str, Totals]]]
    runs: list[RunLine]
    daily: list[tuple[str, dict[str, float]]]  # (YYYY-MM-DD, project -> cost)
    other_currency_runs: int
    simulated_runs: int
    budget: float | None
    forecast: float | None  # the month's projected cost at its end (current month only)
    project_budgets: dict[str, float] = field(default_factory=dict)

    def project_budget_lines(self) -> list[tuple[str, float, float | None, float | None]]:
        """(project, budget, cost, forecast) for each project with a budget; cost None when
        every run of the project has an unknown cost."""
        costs = dict(group_runs(self.runs, "project", self.currency))
        scale = self.forecast / self.totals.cost if self.forecast and self.totals.cost else None
        out = []
        for project, amount in sorted(self.project_budgets.items()):
            cost = costs[project].cost if project in costs else 0.0
            forecast = cost * scale if scale is not None and cost is not None else None
            out.append((project, amount, cost, forecast))
        return out

    def budget_runs(self) -> list[RunLine]:
        """The month's runs with a budget of their own or a budget event, most spent first."""
        runs = [r for r in self.runs if r.budget is not None or r.budget_events]
        return sorted(runs, key=lambda r: -(r.totals.cost or 0.0))

    def budget_stopped(self) -> list[RunLine]:
        """The month's runs stopped for their budget (status ``budget_exceeded``)."""
        return [r for r in self.runs if r.status == "budget_exceeded" or "stop" in r.budget_events]

    def gpu_hours_by_basis(self) -> dict[str, float]:
        """The month's GPU-hours by how their energy was split (``"activity"``: by measured
        per-process activity; ``"equal"``: equally among the runs holding a GPU; ``"slices"``:
        by MIG instance size), over every run (any currency) whose basis is known."""
        out: dict[str, float] = {}
        for run in self.runs:
            for basis, hours in run.gpu_hours_by_basis.items():
                out[basis] = out.get(basis, 0.0) + hours
        return out

    def mig_runs(self) -> dict[str, int]:
        """MIG profile -> how many of the month's runs held an instance of it."""
        out: dict[str, int] = {}
        for run in self.runs:
            for profile in sorted(set(run.mig_profiles)):
                out[profile] = out.get(profile, 0) + 1
        return out

    def waste_by_reason(self) -> dict[str, float]:
        """The month's waste cost by reason (``idle``, ``nonfinite``). Minute rollups hold waste
        cost as one figure; each run's month share is split by its whole-run reason shares."""
        out: dict[str, float] = {}
        for run in self.runs:
            whole = sum(run.waste_by_reason.values())
            if run.currency != self.currency or not whole or run.totals.waste_cost is None:
                continue
            for reason, cost in run.waste_by_reason.items():
                out[reason] = out.get(reason, 0.0) + run.totals.waste_cost * cost / whole
        return out

    @property
    def top_runs(self) -> list[RunLine]:
        priced = [r for r in self.runs if r.currency == self.currency]
        return sorted(priced, key=lambda r: -(r.totals.cost or 0.0))[:TOP_RUNS]

    def by(self, key: str) -> list[tuple[str, Totals]]:
        return self.groups.get(key) or group_runs(self.runs, key, self.currency)


def parse_month(text: str | None, today: dt.date | None = None) -> tuple[str, float, float]:
    """``YYYY-MM`` (default: the last complete month) -> (label, start, end) in unix seconds."""
    today = today or dt.datetime.now(UTC).date()
    if text is None:
        year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    else:
        try:
            year, month = (int(p) for p in text.split("-"))
            if not FIRST_YEAR <= year <= LAST_YEAR:
                raise ValueError(year)
            dt.date(year, month, 1)
        except ValueError as e:
            raise ReportError(
                f"--month {text!r}: expected YYYY-MM from {FIRST_YEAR}-01 to {LAST_YEAR}-12, "
                "e.g. 2026-11"
            ) from e
    start = dt.datetime(year, month, 1, tzinfo=UTC).timestamp()
    end = start + calendar.monthrange(year, month)[1] * 86400  # no datetime past year 9999
    return f"{year:04d}-{month:02d}", start, end


def check_begun(label: str, start: float, now: float) -> None:
    """Refuse a month that has not begun at ``now`` (unix seconds): it has no data yet, and an
    empty report would read as a month that cost nothing."""
    if start > now:
        today = dt.datetime.fromtimestamp(now, UTC).date().isoformat()
        raise ReportError(
            f"--month {label}: it has not begun (today is {today} UTC); choose the current "
            "month or an earlier one"
        )


def check_budget(budget: float | None) -> None:
    """A budget is a positive, finite amount (the report currency)."""
    if budget is not None and not 0 < budget < math.inf:
        raise ReportError(f"--budget {budget!r}: must be a positive, finite amount")


def budgets_from_config(table: dict[str, Any], where: str) -> tuple[float | None, dict[str, float]]:
    """``[budget]`` from profiler.toml: ``monthly = amount`` and ``[budget.projects]`` with
    ``project = amount`` (the report currency). Raises ReportError naming a bad key."""

    def amount(key: str, value: Any) -> float:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 < value < math.inf):  # fmt: skip
            raise ReportError(f"{where} [budget]: '{key}' must be a positive amount, got {value!r}")
        return float(value)

    # per_run, on_exceed, warn_at: enforced by the daemon (profiler.budget.settings)
    unknown = set(table) - {"monthly", "projects", "per_run", "on_exceed", "warn_at"}
    if unknown:
        raise ReportError(f"{where} [budget]: unknown key '{sorted(unknown)[0]}' "
                          "(known: monthly, projects, per_run, on_exceed, warn_at)")  # fmt: skip
    monthly = amount("monthly", table["monthly"]) if "monthly" in table else None
    projects = table.get("projects", {})
    if not isinstance(projects, dict):
        raise ReportError(f"{where} [budget]: 'projects' must be a table ([budget.projects])")
    return monthly, {str(k): amount(f"projects.{k}", v) for k, v in projects.items()}


def attribution_figures(
    attribution_s: dict[str, float],
    idle_energy_j: float | None,
    gpu_energy_j: float | None,
    gpu_hours: float | None,
) -> tuple[str | None, float | None, dict[str, float]]:
    """A run's (basis, idle share, GPU-hours by basis) for :class:`RunLine` from what the ledger
    keeps of the whole run: ``attribution_s`` (device-seconds per basis), ``idle_energy_j`` (J of
    its GPU energy that is its share of idle power; None unknown), ``gpu_energy_j`` (J; None
    unknown) and ``gpu_hours`` (the month's part; None unknown), split in the whole run's
    proportions. Unknown figures are None / {}, never 0."""
    seconds = {k: v for k, v in attribution_s.items() if v > 0}
    basis = attribution_basis(seconds)
    share = None
    if idle_energy_j is not None and gpu_energy_j:
        share = idle_energy_j / gpu_energy_j
    total_s = sum(seconds.values())
    by_basis = {}
    if gpu_hours is not None and total_s > 0:
        by_basis = {k: gpu_hours * v / total_s for k, v in sorted(seconds.items())}
    return basis, share, by_basis


def mig_profiles(held: Any) -> list[str]:
    """The MIG profiles of the instances a run held, from its ledger meta's ``mig_instances``
    (a list of objects with ``mig_profile``); anything else gives none."""
    if not isinstance(held, list):
        return []
    return [str(m["mig_profile"]) for m in held if isinstance(m, dict) and m.get("mig_profile")]


def sum_runs(runs: list[RunLine], currency: str) -> Totals:
    """The sums over ``runs``: counts, energy and CO2 over all of them, money only over the runs
    priced in ``currency`` (the others add 0 and are not counted as unknown)."""
    out = Totals()
    for run in runs:
        t = run.totals
        if run.currency != currency:
            t = Totals(**{**asdict(t), "cost": 0.0, "cost_gpu_time": 0.0, "cost_energy": 0.0,
                          "waste_cost": 0.0, "cost_unknown_runs": 0})  # fmt: skip
        out.add(t)
    return out


def group_runs(runs: list[RunLine], key: str, currency: str) -> list[tuple[str, Totals]]:
    """:func:`sum_runs` per value of the :class:`RunLine` field ``key`` (``"(none)"`` for an
    empty one), the costliest first."""
    members: dict[str, list[RunLine]] = defaultdict(list)
    for run in runs:
        members[getattr(run, key) or "(none)"].append(run)
    rows = [(value, sum_runs(group, currency)) for value, group in members.items()]
    return sorted(rows, key=lambda kv: (-(kv[1].cost or 0.0), kv[0]))
