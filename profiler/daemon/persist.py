"""Ledger persistence and resume for the daemon: the minute rollups gathered between flushes,
periodic and final flushes (with the recovery file when the ledger does not take the last one),
re-creating a ledger deleted under the daemon, and continuing the runs a previous daemon left
running (with the energy its GPUs' counters measured across the restart, :meth:`credit_gap`).
Runs are turned into rows and back by :mod:`profiler.ledger.rows` only.

Energy in joules, time in seconds (``_mono``: CLOCK_MONOTONIC; ``unix``/``wall``: unix
seconds), money in the pricing's currency.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from profiler.accounting.attribution import counter_marks
from profiler.accounting.devices import DeviceState
from profiler.accounting.energy import CounterMark, GapShare, split_gap
from profiler.accounting.rollups import add_priced, minute
from profiler.accounting.runs import Run
from profiler.config import Config
from profiler.ledger.recovery import (
    FlushOutcome,
    Held,
    combine,
    read_recovery_records,
    recovery_path,
    release_reserve,
    write_recovery,
)
from profiler.ledger.rows import rows_of, run_from_row, run_to_row
from profiler.ledger.store import Ledger, LedgerError, Rollup
from profiler.sensors import procs
from profiler.sensors.base import GpuSample

if TYPE_CHECKING:
    from profiler.cost.meter import CostMeter
    from profiler.cost.pricing import Pricing

log = logging.getLogger(__name__)


class Persistence:
    """What the daemon holds for the ledger, and the ledger itself (None until
    :meth:`open_ledger`). ``runs``, ``devices``, ``finished_at`` and ``health`` are the
    daemon's own (shared, not copied); ``clock`` gives monotonic seconds, ``wall`` unix
    seconds, ``gpu_source`` the daemon's GPU source now (recorded with each run row)."""

    def __init__(
        self,
        config: Config,
        *,
        runs: dict[str, Run],
        devices: dict[str, DeviceState],
        finished_at: dict[str, float],
        health: Counter[str],
        cost_meter: CostMeter,
        clock: Callable[[], float],
        wall: Callable[[], float],
        started_mono: float,
        gpu_source: Callable[[], str],
    ) -> None:
        self.config = config
        self.runs = runs
        self.devices = devices
        self.finished_at = finished_at
        self.health = health
        self.cost_meter = cost_meter
        self.clock = clock
        self.wall = wall
        self.started_mono = started_mono
        self.gpu_source = gpu_source
        self.ledger: Ledger | None = None
        # Gathered since the last flush: (run, minute) -> rollup, (device uuid, minute) -> idle J.
        self.rollups: dict[tuple[str, int], Rollup] = {}
        self.idle: dict[tuple[str, int], float] = {}
        self.flush_failures = 0
        self.last_flush_error = ""  # the last failed ledger write's one line ("" before any)
        # A recovery file (see profiler.ledger.recovery) is left to merge: the ledger did not take
        # it.
        self.recovery_pending = False
        self.last_recovery_error = ""  # why it is left (one line)
        # The newest run rows of that file's unmerged records (run id -> row as
        # Ledger.runs() gives it): newer than the ledger's own rows of those runs.
        self.recovered_rows: dict[str, dict[str, Any]] = {}
        # Restored runs: the raw energy counter marks their last flush stored (run -> device
        # uuid -> mark), and the restart gap added to their unmeasured_s (run -> seconds).
        self.gap_marks: dict[str, dict[str, CounterMark]] = {}
        self.gap_unmeasured_s: dict[str, float] = {}

    def rollup(self, run_id: str, unix_s: float) -> Rollup:
        """The rollup of ``run_id``'s minute holding ``unix_s`` (created when first asked)."""
        key = (run_id, minute(unix_s))
        rollup = self.rollups.get(key)
        if rollup is None:
            rollup = self.rollups[key] = Rollup(run_id, key[1])
        return rollup

    def record_pricing(self, pricing: Pricing) -> None:
        """Record a pricing now in force in the ledger (a failure is logged; costs go on)."""
        if self.ledger is not None:
            try:
                self.ledger.record_pricing(self.wall(), pricing)
            except LedgerError as e:
                log.error("%s; costs go on at the new prices", e)

    def open_ledger(self) -> None:
        """Open (or create) the ledger: re-create tables found missing (one line in the log),
        merge what an earlier daemon could not write (its recovery file), record the pricing
        and continue the runs the ledger holds as running."""
        self.ledger = Ledger(self.config.ledger)
        if self.ledger.repaired:
            log.warning(
                "%s had lost its %s table(s): re-created them empty (what they held is gone)",
                self.config.ledger, ", ".join(self.ledger.repaired),
            )  # fmt: skip
        self._merge_recovery()
        try:
            self.ledger.record_pricing(self.wall(), self.cost_meter.pricing)
        except LedgerError as e:
            log.error("%s; costs go on at these prices", e)
        rows = {row["id"]: row for row in self.ledger.runs(status="running")}
        for run_id, row in self.recovered_rows.items():  # newer than the ledger's, unmerged
            if row.get("status") == "running":
                rows[run_id] = row
            else:
                rows.pop(run_id, None)
        for row in rows.values():
            run = self.restored(row)
            alive = {
                int(pid): ct
                for pid, ct in row["meta"].get("pids", {}).items()
                if procs.alive(int(pid), ct)
            }
            declared = row["meta"].get("process_devices", {})
            ranks = row["meta"].get("ranks", {})
            for pid, ct in alive.items():
                proc = run.processes[pid] = run.new_process(pid, ct)
                # the GPUs its hook declared: held from this daemon's first reading, not only
                # once the hook says hello again (NVML may not list the process)
                proc.devices = tuple(declared.get(str(pid), ()))
                # and its rank, so the lowest rank still times the run's steps meanwhile
                rank = ranks.get(str(pid))
                if isinstance(rank, list) and len(rank) == 3:
                    proc.rank, proc.local_rank, proc.world_size = rank
            if not alive:
                run.status = "lost"
                run.ended_at = run.to_wall(run.last_event_mono)
                self.finished_at[run.id] = self.clock()
            self.runs[run.id] = run

    def resume(self, run_id: str) -> Run | None:
        """A run this daemon does not know: a previous daemon may have recorded it."""
        if self.ledger is None:
            return None
        row = self.recovered_rows.get(run_id)
        try:
            row = row or self.ledger.run(run_id)
        except LedgerError:
            return None  # the ledger cannot answer now; the flush logs why
        if row is None or row["status"] != "running":
            return None
        run = self.runs[run_id] = self.restored(row)
        return run

    def restored(self, row: dict[str, Any]) -> Run:
        """A running run from the ledger. What happened between the previous daemon's last
        flush of it and this daemon's start was not measured: add that gap to
        ``unmeasured_s``."""
        run = run_from_row(row)
        run.restored = True
        flushed = row["meta"].get("flushed_mono")
        if flushed is not None and flushed < self.started_mono:
            run.unmeasured_s += self.started_mono - flushed
            run.dirty = True
            stored = row["meta"].get("gpu_counters")
            marks = {
                uuid: mark
                for uuid, m in (stored.items() if isinstance(stored, dict) else ())
                if (mark := CounterMark.from_meta(m)) is not None
                and run.id in mark.holders
                and uuid not in self.devices  # else its first reading in this daemon is past
            }
            if marks:  # the GPUs' counters may measure the gap: see credit_gap
                self.gap_marks[run.id] = marks
                self.gap_unmeasured_s[run.id] = self.started_mono - flushed
        return run

    def credit_gap(self, dev: DeviceState, s: GpuSample) -> None:
        """The device's first reading in this daemon: give the restored runs that held it at
        the previous daemon's last flush the energy its counter measured since (from their
        stored mark to ``s``), in equal shares, with the device-seconds and their cost; they
        hold it from here on. Counter-sourced, not estimated: only when the counter's epoch is
        the same, it did not go backwards and every run that held the device lives (see
        :func:`split_gap`); otherwise the gap stays in their ``unmeasured_s`` (counted in health
        as ``restart_gap_unmeasured:<reason>``). A run whose every held device got its gap
        measured has the restart gap taken out of its ``unmeasured_s``. On a GPU in MIG mode
        the gap stays unmeasured (reason ``mig``)."""
        marks = {
            run_id: by_device[dev.uuid]
            for run_id, by_device in self.gap_marks.items()
            if dev.uuid in by_device
        }
        if not marks:
            return
        live = {run_id for run_id in marks if run_id in self.runs and self.runs[run_id].live}
        share = split_gap(marks, live, s.t_s, s.counter_j, s.counter_id)
        if dev.mig_instances and share.reason is None:
            # runs hold MIG instances, not the GPU: equal shares of the parent would charge a
            # 1g.10gb run the whole GPU's time and the other instances' energy for the gap
            share = GapShare({}, {}, "mig")
        if share.reason is not None:
            self.health[f"restart_gap_unmeasured:{share.reason}"] += 1
            log.warning(
                "GPU %d: the energy since the last flush before the restart is not measured "
                "(%s); it stays in unmeasured_s of run(s) %s",
                dev.index, share.reason.replace("_", " "), ", ".join(sorted(marks)),
            )  # fmt: skip
            for run_id in marks:
                self.gap_unmeasured_s.pop(run_id, None)  # stays unmeasured
        minute_wall = self.wall() - (self.clock() - s.t_s)
        span = s.t_s - next(iter(marks.values())).t_s
        for run_id, joules in share.energy_j.items():
            run = self.runs[run_id]
            seconds = share.seconds[run_id]
            run.gpu_energy_j[dev.uuid] = run.gpu_energy_j.get(dev.uuid, 0.0) + joules
            run.gpu_seconds[dev.uuid] = run.gpu_seconds.get(dev.uuid, 0.0) + seconds
            run.gap_gpu_energy_j += joules
            run.device_since.setdefault(dev.uuid, s.t_s)
            priced = self.cost_meter.gpu_interval(run.cost, dev.uuid, seconds, joules, span, s.t_s)
            rollup = self.rollup(run_id, minute_wall)
            rollup.gpu_energy_j += joules
            rollup.gpu_seconds += seconds
            add_priced(rollup, priced)
            run.dirty = True
            self.health["restart_gap_measured"] += 1
        for run_id in marks:
            del self.gap_marks[run_id][dev.uuid]
            if not self.gap_marks[run_id]:
                del self.gap_marks[run_id]
                gap_s = self.gap_unmeasured_s.pop(run_id, None)
                if gap_s is not None and run_id in self.runs:
                    run = self.runs[run_id]
                    run.unmeasured_s = max(0.0, run.unmeasured_s - gap_s)
                    run.dirty = True

    def flush(self) -> bool:
        """Write dirty runs and the rollups gathered since the last flush (one transaction).
        On failure keep everything in memory and try again at the next flush. True when all
        that was held is in the ledger. A ledger file deleted or replaced under the daemon is
        re-created and given every run still in memory; a table found missing is re-created and
        the write done again in full."""
        if self.ledger is None:
            return True
        reason = self.ledger.gone()
        if reason is not None and not self._reopen_ledger(reason):
            return False
        if self.recovery_pending and not self._merge_recovery():
            # Unmerged rows must not be written after (and so over) what memory holds.
            return self._flush_failed(LedgerError(self.last_recovery_error))
        try:
            self._write_held()
        except LedgerError as e:
            if not e.repaired:
                return self._flush_failed(e)
            log.warning("%s; writing every run in memory again (the rows they held are gone)", e)
            for run in self.runs.values():
                run.dirty = True
            try:
                self._write_held()
            except LedgerError as again:
                return self._flush_failed(again)
        if self.flush_failures:
            log.warning("ledger writes work again after %d failures", self.flush_failures)
        self.flush_failures = 0
        return True

    def held(self) -> tuple[list[Run], Held]:
        """What is not in the ledger yet: the dirty runs, and for :meth:`Ledger.write` their
        rows and device totals, the rollups and the idle rollups."""
        dirty = [r for r in self.runs.values() if r.dirty]
        devices = [
            (r.id, uuid, self.devices[uuid].model if uuid in self.devices else "", j,
             r.gpu_seconds.get(uuid, 0.0))
            for r in dirty
            for uuid, j in r.gpu_energy_j.items()
        ]  # fmt: skip
        idle = [(uuid, minute, j) for (uuid, minute), j in self.idle.items()]
        marks = counter_marks(self.devices, self.runs)
        energy_source = ",".join(
            sorted({d.latest.energy_source for d in self.devices.values() if d.latest})
        )
        flushed_mono = self.clock()
        rows = [
            run_to_row(r, marks=marks, gpu_source=self.gpu_source(), energy_source=energy_source,
                       flushed_mono=flushed_mono)
            for r in dirty
        ]  # fmt: skip
        return dirty, Held(rows, devices, list(self.rollups.values()), idle)

    def _write_held(self) -> None:
        dirty, held = self.held()
        assert self.ledger is not None
        self.ledger.write(held.runs, held.devices, held.rollups, held.idle)
        self._forget_held(dirty)

    def _forget_held(self, dirty: list[Run]) -> None:
        """What was held is written (to the ledger or the recovery file)."""
        for r in dirty:
            r.dirty = False
        self.rollups.clear()
        self.idle.clear()

    def _flush_failed(self, error: Exception) -> bool:
        self.flush_failures += 1
        self.last_flush_error = str(error)
        if self.flush_failures == 1:
            log.error("ledger write failed (%s); keeping data in memory and retrying", error)
        self.health["ledger_write_errors"] += 1
        return False

    def _reopen_ledger(self, reason: str) -> bool:
        """The ledger file was deleted or replaced while this daemon wrote it: say so once and
        write a new one, with every run still in memory (marked dirty). False (counted as a
        failed write) when no new one can be opened; the next flush tries again."""
        path = self.config.ledger
        assert self.ledger is not None
        if self.flush_failures == 0:
            log.error(
                "ledger %s was %s while the daemon ran: writing a new one with the %d run(s) "
                "in memory; runs that had already left memory, and the minute rollups written "
                "before, are not in it", path, reason, len(self.runs),
            )  # fmt: skip
        try:
            self.ledger.close()
        except sqlite3.Error:
            pass  # the old file is gone; there is nothing more to write there
        if reason == "deleted" and not path.exists():
            for suffix in ("-wal", "-shm"):  # a stale log must not be replayed into a new file
                try:
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                except OSError as e:  # a new ledger beside it would replay it: not now
                    return self._flush_failed(e)
        try:
            self.ledger = Ledger(path)
        except (LedgerError, OSError) as e:  # the old, closed one stays: gone() says so again
            return self._flush_failed(e)
        for run in self.runs.values():
            run.dirty = True
        try:
            self.ledger.record_pricing(self.wall(), self.cost_meter.pricing)
        except LedgerError as e:
            log.error("%s; costs go on at these prices", e)
        return True

    def final_flush(self, budget_events: list[tuple[Any, ...]] | None = None) -> FlushOutcome:
        """The flush before exit (with ``budget_events``, the budget events rows not yet in the
        ledger). If the ledger does not take it, free the space set aside
        (:func:`make_reserve`) and try again; failing that, write what is held to the recovery
        file beside the ledger (JSON lines, 0600), which the next daemon merges in. The outcome
        says plainly what was not written and where it went."""
        ledger = self.config.ledger
        events = list(budget_events or [])
        if self.flush() and self._write_events(events):
            return FlushOutcome(True, f"ledger flushed to {ledger}")
        if release_reserve(self.config) and self.flush() and self._write_events(events):
            return FlushOutcome(True, f"ledger flushed to {ledger}")
        dirty, held = self.held()
        held.budget_events = events
        shown = ", ".join(r.id for r in dirty[:5]) + (", ..." if len(dirty) > 5 else "")
        what = f"{len(dirty)} run(s) ({shown}) and {len(held.rollups)} minute rollup(s)"
        if events:
            what += f" and {len(events)} budget event(s)"
        path = recovery_path(self.config)
        try:
            write_recovery(path, held)
        except (OSError, ValueError) as e:
            return FlushOutcome(
                False,
                f"the final ledger write failed ({self.last_flush_error}) and so did writing "
                f"{path} ({e}): {what} are lost",
            )
        self._forget_held(dirty)
        return FlushOutcome(
            False,
            f"the final ledger write failed ({self.last_flush_error}): {what} went to {path}, "
            "which the next daemon merges into the ledger",
        )

    def _write_events(self, events: list[tuple[Any, ...]]) -> bool:
        """Add budget events rows to the ledger (True when written, or none); a failure is
        kept in ``last_flush_error``."""
        if not events:
            return True
        if self.ledger is None:
            return False
        try:
            self.ledger.write([], [], [], [], budget_events=events)
        except LedgerError as e:
            self.last_flush_error = str(e)
            return False
        events.clear()
        return True

    def _merge_recovery(self) -> bool:
        """Merge the recovery file an earlier final flush left (what is not merged yet, in one
        transaction that also records each merged record's token, so none is merged twice),
        then remove it. When the ledger does not take it, it stays (``recovery_pending``) and
        its run rows are kept in ``recovered_rows`` for restoring runs; a later flush tries
        again. True when nothing is left to merge (the file may stay if it cannot be removed:
        the next daemon finds it merged and removes it)."""
        path = recovery_path(self.config)
        assert self.ledger is not None
        try:
            records, bad = read_recovery_records(path)
        except FileNotFoundError:
            self.recovery_pending = False
            self.recovered_rows = {}
            return True
        except OSError as e:
            if not self.recovery_pending:
                log.error("cannot read %s (%s); it stays for a later flush", path, e)
            self.recovery_pending = True
            self.last_recovery_error = f"cannot read {path} ({e})"
            return True  # nothing read, nothing to keep from being overwritten
        try:
            done = self.ledger.merged_tokens(token for token, _ in records)
            todo = [(token, held) for token, held in records if token not in done]
            held = combine(h for _, h in todo)
            self.ledger.write(held.runs, held.devices, held.rollups, held.idle,
                              merged=[token for token, _ in todo],
                              budget_events=held.budget_events)  # fmt: skip
        except LedgerError as e:
            if not self.recovery_pending:
                log.error("cannot merge %s into the ledger yet (%s); it stays", path, e)
            self.recovery_pending = True
            self.last_recovery_error = f"cannot merge {path} into the ledger yet ({e})"
            self.recovered_rows = rows_of(combine(h for _, h in records))
            return False
        self.recovery_pending = False
        self.recovered_rows = {}
        if todo:
            log.warning(
                "merged %s into %s: %d run row(s) and %d minute rollup(s) an earlier daemon "
                "could not write%s", path, self.config.ledger, len(held.runs), len(held.rollups),
                f"; {bad} unreadable line(s) skipped" if bad else "",
            )  # fmt: skip
        try:
            path.unlink(missing_ok=True)
        except OSError as e:  # merged (and recorded so): never merged twice
            log.error("merged %s but cannot remove it (%s); remove it by hand", path, e)
        return True
