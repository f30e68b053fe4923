"""The daemon's side of budgets: which budgets apply to a run, the decision on the daemon's own
priced figures (:func:`profiler.budget.decision.decide`), the replies to the run's processes
and the events kept for ``/metrics`` and the ledger.

Replies go only to the addresses that the run's processes' authenticated ``hello`` s came from
(:attr:`profiler.ingest.messages.Hello.reply_to`, set by the receiver from the kernel), from a
socket of this daemon's own (so the kernel puts the daemon's uid on them, which the hook
checks: :mod:`hooks.budget`). A run stopped for its budget ends with status
``budget_exceeded`` (its figures kept). Without pricing a budget cannot be enforced: the run's
processes are told so once (``refused``), never silently ignored.

A project's monthly budget counts the project's runs on this node this month (UTC): the ledger's
finished runs plus the live runs in memory.
"""

from __future__ import annotations

import logging
import math
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from hooks import wire
from profiler.budget.decision import Budget, BudgetEvent, BudgetMark, decide
from profiler.budget.settings import BudgetSettings
from profiler.cost.meter import projected
from profiler.ledger.store import LedgerError

if TYPE_CHECKING:
    from profiler.accounting.runs import Run
    from profiler.ingest.messages import Hello
    from profiler.ledger.store import Ledger

log = logging.getLogger(__name__)

# Multi-rank runs stop after a step far enough ahead that every rank has the stop before it:
# the daemon sees steps up to one hook flush (0.1 s) late; this covers that and the reply.
STOP_LEAD_S = 0.5
PROJECT_SPEND_REFRESH_S = 60.0
STATUS = "budget_exceeded"


@dataclass(frozen=True)
class BudgetRecord:
    """One event as kept: ``at`` unix seconds; money in ``currency``."""

    run: str
    at: float
    event: str
    reason: str
    scope: str
    source: str
    spent: float
    projected: float | None
    budget: float
    currency: str
    at_step: int


class BudgetEnforcer:
    """Budgets of the daemon's runs. ``priced()`` says whether a pricing is configured;
    ``wall`` gives unix seconds."""

    def __init__(
        self,
        settings: BudgetSettings,
        *,
        priced: Callable[[], bool],
        currency: Callable[[], str],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.priced = priced
        self.currency = currency
        self.wall = wall
        self.given: dict[str, Budget] = {}  # run id -> a budget the run declared
        self.addresses: dict[str, dict[int, bytes]] = {}  # run id -> pid -> reply address
        self.proxies: dict[str, set[int]] = {}  # run id -> pids of `profiler run` wrappers
        self.marks: dict[tuple[str, str], BudgetMark] = {}
        self.stops: dict[str, dict[str, object]] = {}  # run id -> the stop reply sent
        self.refused: set[str] = set()
        self.records: list[BudgetRecord] = []  # every event (for /metrics; bounded below)
        self.pending: list[BudgetRecord] = []  # events not yet in the ledger
        self.counts: Counter[tuple[str, str]] = Counter()  # (run, event) -> n
        # (run, scope) -> (the budget, spent against it) as of the last check, for /metrics
        self.latest: dict[tuple[str, str], tuple[Budget, float]] = {}
        self.send_errors = 0
        self._unreachable: set[tuple[str, int]] = set()  # (run, pid) a stop did not reach
        self._project_spend: dict[str, tuple[float, float]] = {}  # project -> (spent, at)
        self._restored: set[str] = set()  # runs of a previous daemon whose events were read
        self._sock: socket.socket | None = None

    # ---- what applies ------------------------------------------------------------------------

    def hello(self, run: Run, msg: Hello) -> None:
        """Learn the reply address of an admitted ``hello`` and the budget it declares; a
        process that joins a run already stopped is told at once."""
        f = msg.fields
        if f.get("budget") is not None:
            source = "profiler run" if msg.proxy else "track"
            self.given[run.id] = Budget(
                amount=f["budget"], scope="run", source=source,
                on_exceed=f.get("on_exceed") or self.settings.on_exceed,
                warn_at=self.settings.warn_at,
            )  # fmt: skip
        if msg.reply_to is None or msg.sender is None:
            return
        known = self.addresses.setdefault(run.id, {})
        new = known.get(msg.sender.pid) != msg.reply_to
        known[msg.sender.pid] = msg.reply_to
        if msg.proxy:
            self.proxies.setdefault(run.id, set()).add(msg.sender.pid)
        if not new:
            return
        if self.budgets(run) and not self.priced():
            self._send(msg.reply_to, self._refusal(run))
        elif run.id in self.stops:
            reply = self._for(run, msg.sender.pid, self.stops[run.id])
            self._send(msg.reply_to, reply, run.id, msg.sender.pid)

    def budgets(self, run: Run) -> list[Budget]:
        """The budgets that apply to ``run``: its own (declared, else ``per_run``) and its
        project's month."""
        s = self.settings
        out = []
        own = self.given.get(run.id)
        if own is None and s.per_run is not None:
            own = Budget(s.per_run, "run", "per_run", s.on_exceed, s.warn_at)
        if own is not None:
            out.append(own)
        if run.project in s.projects:
            out.append(
                Budget(s.projects[run.project], "project", f"project {run.project}",
                       s.on_exceed, s.warn_at)
            )  # fmt: skip
        return out

    # ---- the decision --------------------------------------------------------------------------

    def check(self, runs: dict[str, Run], ledger: Ledger | None, now_mono: float) -> None:
        """Decide for every live run from its priced figures; send and keep the events."""
        self._forget(runs)
        for run in list(runs.values()):
            if run.restored and run.id not in self._restored:
                self.restore(run, ledger)
        if not self.priced():
            return
        for run in list(runs.values()):
            if not run.live:
                continue
            applying = self.budgets(run)
            described = [asdict(b) for b in applying]
            if run.budgets != described:  # kept in the run's row: `profiler runs` shows it
                run.budgets = described
                run.dirty = True
            for budget in applying:
                spent, proj = self._figures(run, budget, runs, ledger)
                self.latest[(run.id, budget.scope)] = (budget, spent)
                mark = self.marks.setdefault((run.id, budget.scope), BudgetMark())
                for event in decide(budget, spent, proj, mark):
                    self._act(run, event)
        self.write(ledger)

    def _forget(self, runs: dict[str, Run]) -> None:
        """Drop what is kept for runs the daemon no longer holds (events are in the ledger)."""
        known = {key[0] for key in self.marks} | self.addresses.keys() | self.given.keys()
        for run_id in known - runs.keys():
            for table in (self.marks, self.latest):
                for key in [k for k in table if k[0] == run_id]:
                    del table[key]
            for key in [k for k in self.counts if k[0] == run_id]:
                del self.counts[key]
            for mapping in (self.addresses, self.given, self.stops, self.proxies):
                mapping.pop(run_id, None)
            self.refused.discard(run_id)
            self._unreachable = {k for k in self._unreachable if k[0] != run_id}
            self._restored.discard(run_id)

    def restore(self, run: Run, ledger: Ledger | None) -> None:
        """A run continued from a previous daemon's ledger: what was decided for it (its
        ``budget_events``) is decided already, so a warning or a stop is never given twice; a
        run stopped stays stopped (its processes that say hello are told again), and the budget
        it declared applies until its processes say hello again."""
        if ledger is None:
            return
        try:
            rows = ledger.query(
                "SELECT * FROM budget_events WHERE run_id = ? ORDER BY at", (run.id,)
            )
        except LedgerError as e:
            log.warning("budget events of run %s not read (%s); read on the next check", run.id, e)
            return
        self._restored.add(run.id)
        for b in run.budgets:
            if b.get("scope") == "run" and b.get("source") in ("track", "profiler run"):
                self.given.setdefault(run.id, Budget(**{k: b[k] for k in _BUDGET_KEYS if k in b}))
        for r in rows:
            mark = self.marks.setdefault((run.id, r["scope"]), BudgetMark())
            mark.warned = True  # a stop is given with a warning, when none was before it
            self.counts[(run.id, r["event"])] += 1
            if r["event"] != "stop":
                continue
            mark.stopped = True
            record = BudgetRecord(
                run=run.id, at=r["at"], event="stop", reason=r["reason"], scope=r["scope"],
                source=r["source"], spent=r["spent"], projected=r["projected"],
                budget=r["budget"], currency=r["currency"], at_step=r["at_step"],
            )  # fmt: skip
            self.stops[run.id] = wire.budget_reply(
                run.id, "stop", spent=round(r["spent"], 6),
                projected=None if r["projected"] is None else round(r["projected"], 6),
                budget=r["budget"], currency=r["currency"], at_step=r["at_step"],
                text=_text(record),
            )  # fmt: skip
            run.bye_status = STATUS

    def _figures(
        self, run: Run, budget: Budget, runs: dict[str, Run], ledger: Ledger | None
    ) -> tuple[float, float | None]:
        spent = run.cost.total
        proj = projected(spent, run.steps, run.total_steps)
        if budget.scope == "run":
            return spent, proj
        live = [r for r in runs.values() if r.project == run.project]
        others = self._month_spend(run.project, {r.id for r in live}, ledger)
        spent_all = others + sum(r.cost.total for r in live)
        return spent_all, None

    def _month_spend(self, project: str, live: set[str], ledger: Ledger | None) -> float:
        """The project's runs this month (UTC) in the ledger, but those in ``live``."""
        now = self.wall()
        cached = self._project_spend.get(project)
        if cached is not None and now - cached[1] < PROJECT_SPEND_REFRESH_S:
            return cached[0]
        total = 0.0
        if ledger is not None:
            t = time.gmtime(now)
            month_start = float(
                time.mktime((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, 0)) - time.timezone
            )
            try:
                rows = ledger.query(
                    "SELECT id, cost_gpu_time, cost_energy FROM runs "
                    "WHERE project = ? AND started_at >= ?", (project, month_start),
                )  # fmt: skip
            except (sqlite3.Error, LedgerError):
                rows = []
            total = sum(
                (r["cost_gpu_time"] or 0.0) + (r["cost_energy"] or 0.0)
                for r in rows if r["id"] not in live
            )  # fmt: skip
        self._project_spend[project] = (total, now)
        return total

    def _act(self, run: Run, event: BudgetEvent) -> None:
        at_step = self._stop_step(run) if event.event == "stop" else 0
        currency = run.cost.currency or self.currency()
        record = BudgetRecord(
            run=run.id, at=self.wall(), event=event.event, reason=event.reason,
            scope=event.budget.scope, source=event.budget.source, spent=event.spent,
            projected=event.projected, budget=event.budget.amount, currency=currency,
            at_step=at_step,
        )  # fmt: skip
        self.records.append(record)
        del self.records[:-1000]
        self.pending.append(record)
        self.counts[(run.id, event.event)] += 1
        reply = wire.budget_reply(
            run.id, event.event, spent=round(event.spent, 6),
            projected=None if event.projected is None else round(event.projected, 6),
            budget=event.budget.amount, currency=currency, at_step=at_step,
            text=_text(record),
        )  # fmt: skip
        if event.event == "stop":
            self.stops[run.id] = reply
            run.bye_status = STATUS
            run.dirty = True
        log.info("budget: %s", _text(record))
        for pid, address in self.addresses.get(run.id, {}).items():
            proc = run.processes.get(pid)
            if proc is None or not proc.gone:  # a gone one's address may name another now
                self._send(address, self._for(run, pid, reply), run.id, pid)

    def _for(self, run: Run, pid: int, reply: dict[str, object]) -> dict[str, object]:
        """``reply`` as process ``pid`` of ``run`` gets it: to ``profiler run``'s wrapper, with
        ``hooked`` True when a hooked process of the run (one that said hello itself, still
        running) has its own reply address: that process prints the line and stops itself, so
        the wrapper stays quiet and does not signal it at once (no line twice, no signal racing
        the training's clean exit)."""
        proxies = self.proxies.get(run.id, set())
        if pid not in proxies:
            return reply
        hooked = any(
            other not in proxies and not getattr(run.processes.get(other), "gone", True)
            for other in self.addresses.get(run.id, {})
        )
        return dict(reply, hooked=hooked)

    @staticmethod
    def _stop_step(run: Run) -> int:
        """The step after which every rank stops: the next for one process; for several, far
        enough ahead (:data:`STOP_LEAD_S` at the mean step time) that all have the stop."""
        ranks = {p.rank for p in run.processes.values()}
        if len(ranks) <= 1 and max((p.world_size for p in run.processes.values()), default=1) <= 1:
            return 0
        latest = max(run.rank_steps.values(), default=run.steps)
        mean = run.step_time_sum_s / run.timed_steps if run.timed_steps else 0.0
        lead = math.ceil(STOP_LEAD_S / mean) if mean > 0 else 50
        return latest + min(max(lead, 2), 10_000)

    def _refusal(self, run: Run) -> dict[str, object]:
        budget = self.budgets(run)[0]
        self.refused.add(run.id)
        return wire.budget_reply(
            run.id, "refused", spent=0.0, projected=None, budget=budget.amount, currency="",
            at_step=0,
            text=(f"budget {budget.amount:g} for run {run.id} is not enforced: no pricing is "
                  "configured; set [cost] pricing in profiler.toml (see `profiler prices`) "
                  "and restart the daemon"),
        )  # fmt: skip

    def _send(
        self, address: bytes, reply: dict[str, object], run_id: str = "", pid: int = 0
    ) -> None:
        """One reply datagram, never blocking; a failure is counted, and a stop that did not
        reach process ``pid`` of run ``run_id`` is said once in the log (it is not stopped)."""
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(wire.encode(reply), address)
        except OSError as e:
            self.send_errors += 1
            if reply.get("event") == "stop" and (run_id, pid) not in self._unreachable:
                self._unreachable.add((run_id, pid))
                log.warning(
                    "budget: the stop of run %s could not reach pid %d (%s), so it is not "
                    "stopped: it exited, or it is in another network namespace than the daemon "
                    "(a container with its own network and the daemon's socket mounted in), "
                    "where budget replies cannot reach it", run_id, pid, e.strerror or e,
                )  # fmt: skip

    # ---- the ledger --------------------------------------------------------------------------

    def write(self, ledger: Ledger | None) -> None:
        """Write the pending events to the ledger's ``budget_events``; those that fail stay
        pending for the next call."""
        if ledger is None or not self.pending:
            return
        rows = [
            (r.run, r.at, r.event, r.reason, r.scope, r.source, r.spent, r.projected, r.budget,
             r.currency, r.at_step)
            for r in self.pending
        ]  # fmt: skip
        try:
            with ledger.db:
                ledger.db.executemany(
                    "INSERT INTO budget_events (run_id, at, event, reason, scope, source, spent,"
                    " projected, budget, currency, at_step) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows,
                )  # fmt: skip
        except sqlite3.Error as e:
            log.warning("budget events not written to the ledger yet (%s); retrying", e)
            return
        self.pending = []

    def take_pending(self) -> list[tuple[object, ...]]:
        """The events not yet in the ledger as ``budget_events`` rows, handed over (the final
        flush writes them, or puts them in the recovery file)."""
        rows = [
            (r.run, r.at, r.event, r.reason, r.scope, r.source, r.spent, r.projected, r.budget,
             r.currency, r.at_step)
            for r in self.pending
        ]  # fmt: skip
        self.pending = []
        return rows

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


_BUDGET_KEYS = ("amount", "scope", "source", "on_exceed", "warn_at")


def _text(r: BudgetRecord) -> str:
    """The one line a warning or a stop shows (stderr of the training, the daemon's log)."""
    proj = "unknown" if r.projected is None else f"{r.projected:.4f} {r.currency}"
    what = "its budget" if r.scope == "run" else f"the {r.source} monthly budget"
    head = (f"run {r.run}: spent {r.spent:.4f} {r.currency} of {what} {r.budget:.4f} "
            f"{r.currency} (projected at the end: {proj})")  # fmt: skip
    if r.event == "stop":
        after = "the next step" if r.at_step == 0 else f"step {r.at_step}"
        return f"{head}; budget reached: the run stops after {after}"
    if r.reason == "projected":
        return f"{head}; warning: the projected cost is above the budget"
    return f"{head}; warning: {r.spent / r.budget:.0%} of the budget spent"
