"""How runs end in the daemon: processes found gone (``profiler run``'s watched child waits for
that command's ``bye``), runs closed once energy is attributed past their end, finished runs
forgotten after their time in ``/metrics``, and room made for new runs. Whether a process lives
is read from ``/proc`` (:mod:`profiler.sensors.procs`).

Times are monotonic seconds unless named ``_at`` (unix seconds).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from profiler.accounting.attribution import STALE_PENDING_S
from profiler.accounting.devices import DeviceState
from profiler.accounting.runs import Run
from profiler.config import Config
from profiler.daemon.persist import Persistence
from profiler.sensors.procs import alive

WATCHED_GRACE_S = 5.0  # how long a gone process waits for `profiler run`'s bye, seconds


def close_if_done(run: Run) -> None:
    """Once every process said ``bye`` or is gone, the run's end is its last event; from then on
    no interval gives it energy past that time."""
    if run.end_mono is None and run.all_processes_done():
        run.end_mono = run.last_event_mono


class Lifecycle:
    """The ends of the daemon's runs. ``runs``, ``devices``, ``finished_at`` (run id -> monotonic
    time it finished) and ``health`` are the daemon's own (shared, not copied); ``persist``
    writes the ledger; ``on_finish`` is called with each run that finishes, before it is
    written (the daemon announces it and lets its processes go)."""

    def __init__(
        self,
        config: Config,
        *,
        runs: dict[str, Run],
        devices: dict[str, DeviceState],
        finished_at: dict[str, float],
        health: Counter[str],
        persist: Persistence,
        clock: Callable[[], float],
        on_finish: Callable[[Run], None],
    ) -> None:
        self.config = config
        self.runs = runs
        self.devices = devices
        self.finished_at = finished_at
        self.health = health
        self.persist = persist
        self.clock = clock
        self.on_finish = on_finish
        # pid watched by `profiler run` -> (that command's pid, its create time): while the
        # watcher lives, a gone child waits for its bye; a watcher gone (killed) sends none.
        self.watchers: dict[int, tuple[int, float | None]] = {}

    def check_processes(self) -> None:
        """Mark processes that are gone (pid absent, or reused by another process). An
        attached process (``profiler attach``) that is gone has ended as expected: it counts
        as having said ``bye`` (``finished``; its exit status cannot be known) at the time it
        was found gone. A process ``profiler run`` watches is given :data:`WATCHED_GRACE_S`
        for that command's ``bye`` (its exit status and end time) before it counts as gone,
        unless that command is itself gone (killed: no bye will come). A process found gone
        lived until then (at most one check late): that time is the run's last event, so its
        wall time ends where its energy and GPU time stop."""
        now = self.clock()
        for run in self.runs.values():
            if not run.live:
                continue
            for proc in run.processes.values():
                if proc.said_bye or proc.gone:
                    continue
                if not alive(proc.pid, proc.create_time):
                    if proc.missing_since is None:
                        proc.missing_since = now
                    waiting = now - proc.missing_since < WATCHED_GRACE_S
                    if proc.watched and waiting and self._watcher_alive(proc.pid):
                        continue
                    proc.gone = True
                    if proc.attached:
                        proc.said_bye = True
                    run.last_event_mono = max(run.last_event_mono, proc.missing_since)
                    run.dirty = True
            close_if_done(run)

    def _watcher_alive(self, pid: int) -> bool:
        """Whether the ``profiler run`` watching ``pid`` still runs (unknown: assumed so)."""
        watcher = self.watchers.get(pid)
        return watcher is None or alive(*watcher)

    def end_runs(self) -> None:
        """Finish the runs whose processes are done once energy is attributed past their end."""
        # A run is closed once energy is attributed past its end on every device. A device
        # sampled but not split yet (a young daemon; on a device with per-process activity the
        # first split waits for the first activity reading) holds every run back: -inf. No
        # sampled device at all (no GPU): None, nothing to wait for.
        sampled = [d.attributed_to for d in self.devices.values() if d.curve.last is not None]
        horizon = None
        if sampled:
            horizon = min(-math.inf if a is None else a for a in sampled)
        for run in self.runs.values():
            if not run.live or not run.all_processes_done():
                continue
            close_if_done(run)
            assert run.end_mono is not None
            # Wait until attribution passes the run's end, so its whole energy and its last
            # steps' energy are in (bounded, in case a device stops answering).
            waited = self.clock() - run.end_mono
            if horizon is None or horizon >= run.end_mono or waited > STALE_PENDING_S:
                self._finish(run)

    def _finish(self, run: Run) -> None:
        run.status = run.final_status()
        run.ended_at = run.to_wall(run.end_mono or run.last_event_mono)
        run.pending.clear()
        run.dirty = True
        self.finished_at[run.id] = self.clock()
        self.health["runs_ended"] += 1
        for pid in run.processes:
            self.watchers.pop(pid, None)
        self.on_finish(run)
        self.persist.flush()

    def forget_finished(self) -> None:
        """Finished runs leave /metrics after ``finished_run_ttl_s``; the ledger keeps them."""
        now = self.clock()
        for run_id, when in list(self.finished_at.items()):
            if now - when >= self.config.finished_run_ttl_s and not self.runs[run_id].dirty:
                del self.runs[run_id]
                del self.finished_at[run_id]

    def make_room(self) -> bool:
        """Keep at most ``max_runs`` runs in memory (and in /metrics): drop the oldest finished
        runs once the ledger holds them. False when every run is live (or unsaved)."""
        if len(self.runs) < self.config.max_runs:
            return True
        for run_id, _when in sorted(self.finished_at.items(), key=lambda kv: kv[1]):
            if self.runs[run_id].dirty and self.persist.ledger is not None:
                self.persist.flush()
            if self.runs[run_id].dirty and self.persist.ledger is not None:
                return False  # the ledger does not take writes now: keep what is unsaved
            del self.runs[run_id]
            del self.finished_at[run_id]
            if len(self.runs) < self.config.max_runs:
                return True
        return False
