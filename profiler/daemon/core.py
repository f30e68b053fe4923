"""The node daemon's core: one per machine, serving every training process on it.

:class:`Daemon` wires the parts and holds the state they share: it applies decoded messages
(admission in :mod:`profiler.ingest.admission`; the run lifecycle here: hello, steps, bye,
processes gone, runs ended and forgotten), applies sensor readings (attribution in
:mod:`profiler.accounting.attribution`, CPU in :mod:`profiler.accounting.cpu`) and keeps the
ledger through :mod:`profiler.daemon.persist`. The process shell and main loop are
:class:`profiler.daemon.service.Service`.

One thread runs the main loop (apply messages, sample sensors at a fixed rate on the monotonic
clock, attribute energy, end runs, flush the ledger); the HTTP server thread only reads a
snapshot under :attr:`Daemon.lock` (through :class:`profiler.daemon.view.MetricsView`). Beside
them, the ingest thread (:class:`profiler.ingest.receiver.Inbox`) keeps the socket read while
the loop is busy, and the NVML sensor makes its calls on a reader thread of its own (a hung
driver call cannot stop the loop). Sensors are read without the lock; what they return is
applied under it. Never imports torch or tensorflow.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil

from profiler import __version__
from profiler.accounting.attribution import (
    ATTRIBUTION_LAG_S,
    STALE_PENDING_S,
    attribute,
    resolve_steps,
)
from profiler.accounting.cpu import CpuAccount
from profiler.accounting.devices import DeviceState, Readings
from profiler.accounting.runs import ProcessInfo, Run
from profiler.config import Config
from profiler.cost.meter import CostMeter, no_pricing
from profiler.cost.pricing import Pricing
from profiler.daemon.announce import Announcer, announcement
from profiler.daemon.persist import Persistence
from profiler.ingest.admission import owner_of, refusal
from profiler.ingest.messages import Bye, Hello, Message, StepBatch
from profiler.ledger.recovery import FlushOutcome
from profiler.ledger.store import Ledger, Rollup
from profiler.sensors.base import CpuSensor, GpuSample, GpuSensor
from profiler.sensors.procs import ProcessTable, alive, ancestor_pids, create_time
from profiler.sensors.rapl import cpu_total_j

log = logging.getLogger(__name__)


WATCHED_GRACE_S = 5.0  # how long a gone process waits for `profiler run`'s bye, seconds


class Daemon:
    """State and logic of the node daemon. ``clock``/``wall`` are injectable for tests."""

    def __init__(
        self,
        config: Config,
        *,
        gpu_sensor: GpuSensor | None = None,
        gpu_description: str = "",
        cpu_sensor: CpuSensor | None = None,
        cpu_description: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        hostname: str | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        self.config = config
        self.cost_meter = CostMeter(pricing or no_pricing())
        # Posts run starts and ends to Grafana (profiler.grafana.Annotator) when configured.
        self.annotator: Announcer | None = None
        self.gpu_sensor = gpu_sensor
        self.gpu_source = gpu_sensor.source if gpu_sensor is not None else "none"
        self.gpu_description = gpu_description
        self.cpu_sensor = cpu_sensor
        self.cpu_description = cpu_description
        self.clock = clock
        self.wall = wall
        self.hostname = hostname or socket.gethostname()
        self.lock = threading.RLock()
        self.runs: dict[str, Run] = {}
        self.devices: dict[str, DeviceState] = {}
        self.health: Counter[str] = Counter()
        self.message_counts: Counter[str] = Counter()
        self.sample_seconds_last = 0.0
        self.started_at = wall()
        self.started_mono = clock()
        self._finished_at: dict[str, float] = {}  # run id -> monotonic time it finished
        self.cpu = CpuAccount()
        # The host's processes as of the last CPU accounting (refreshed once a second): the
        # ancestry of GPU processes is looked up here, not in /proc, on every sample.
        self._procs: ProcessTable | None = None
        self._simulated_pids: set[int] = set()  # processes the simulated GPU was told about
        # pid watched by `profiler run` -> (that command's pid, its create time): while the
        # watcher lives, a gone child waits for its bye; a watcher gone (killed) sends none.
        self._watchers: dict[int, tuple[int, float | None]] = {}
        # The ledger, the rollups gathered between flushes, and resuming runs after a restart.
        self.persist = Persistence(
            config, runs=self.runs, devices=self.devices, finished_at=self._finished_at,
            health=self.health, cost_meter=self.cost_meter, clock=clock, wall=wall,
            started_mono=self.started_mono, gpu_source=lambda: self.gpu_source,
        )  # fmt: skip

    # ---- messages -------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        """Apply one decoded message to the run state, unless its sender may not send it
        (counted as ``rejected:<reason>``)."""
        reason = refusal(msg, now_mono=self.clock(), find_run=self._find_run)
        if reason is not None:
            self.message_counts[f"rejected:{reason}"] += 1
            return
        if isinstance(msg, Hello):
            self._hello(msg)
        elif isinstance(msg, StepBatch):
            self._steps(msg)
        elif isinstance(msg, Bye):
            self._bye(msg)

    def _find_run(self, run_id: str) -> Run | None:
        """The run ``run_id`` in memory, else restored from the ledger (None when neither)."""
        return self.runs.get(run_id) or self.persist.resume(run_id)

    def _hello(self, msg: Hello) -> None:
        f = msg.fields
        run = self._find_run(msg.run)
        created = False
        if run is None:
            if not self._make_room():
                self.message_counts["rejected:too_many_runs"] += 1
                return
            since = min(f.get("since", f["mono"]), f["mono"])
            run = Run(
                id=msg.run,
                name=f["name"] or msg.run,
                start_mono=since,
                last_event_mono=f["mono"],
                started_at=f["wall"] - (f["mono"] - since),
                wall_offset_s=f["wall"] - f["mono"],
                unmeasured_s=max(0.0, self.started_mono - since),
            )
            self.runs[run.id] = run
            self.health["runs_started"] += 1
            created = True
        elif not run.live:
            self.health["messages_for_ended_run"] += 1
            return
        if run.owner_uid is None:
            run.owner_uid = owner_of(msg)
        for key in ("project", "user", "framework", "framework_version", "hook", "host", "clock",
                    "samples_source", "memory_source"):  # fmt: skip
            if f.get(key):
                setattr(run, key, f[key])
        run.batch_size = f["batch_size"] or run.batch_size
        run.total_steps = f["total_steps"] or run.total_steps
        # A process's own hello comes from a hook that times steps (0 steps is then a count);
        # `profiler run`/`attach` speak for processes (proxy) and time none: unknown, not 0.
        run.steps_known = run.steps_known or not msg.proxy
        if created:
            self._announce(run, "start")
        proc = run.processes.get(msg.pid)
        if proc is None:
            proc = run.new_process(msg.pid, create_time(msg.pid))
            run.processes[msg.pid] = proc
        if msg.pid not in self._simulated_pids:  # new, or restored from a previous daemon
            self._attach_simulated(msg.pid, f["local_rank"], f["devices"])
        proc.rank, proc.local_rank, proc.world_size = f["rank"], f["local_rank"], f["world_size"]
        proc.devices = f["devices"]
        if f.get("sent") is not None and run.restored and not proc.reconciled:
            # Only a restart explains steps sent but not recorded: compare once per process, at
            # its first hello to this daemon (steps refused on purpose stay refused).
            proc.reconciled = True
            self._count_unrecorded(run, proc, *f["sent"])
        self._hello_extras(run, proc, f)
        if f.get("watched") and msg.proxy and msg.sender is not None:
            self._watchers[msg.pid] = (msg.sender.pid, create_time(msg.sender.pid))
        run.dirty = True

    def _count_unrecorded(self, run: Run, proc: ProcessInfo, steps: int, samples: int) -> None:
        """Steps the process's hook sent that no daemon recorded: into the run's totals and
        the current minute's rollup (the lead rank's steps, every rank's samples)."""
        before = proc.samples
        added = run.count_unrecorded(proc, steps, samples)
        if added:
            rollup = self.persist.rollup(run.id, self.wall())
            rollup.steps += added if proc.rank == run.lead_rank() else 0
            rollup.samples += proc.samples - before
            self.health["unrecorded_steps"] += added

    @staticmethod
    def _hello_extras(run: Run, proc: ProcessInfo, f: dict[str, Any]) -> None:
        """What ``profiler run``/``attach`` and scheduler-aware hooks add to ``hello``: run
        metadata (merged, at most 32 keys in all), and the marks of a process recorded from
        outside (``attach``) or watched by ``profiler run`` (``watched``), kept once set."""
        for key, value in f.get("meta", {}).items():
            if key in run.meta or len(run.meta) < 32:
                run.meta[key] = value
        proc.attached = proc.attached or bool(f.get("attach"))
        proc.watched = proc.watched or bool(f.get("watched"))

    def _attach_simulated(self, pid: int, local_rank: int, devices: tuple[str, ...]) -> None:
        """The simulated GPU follows the load of the processes it is told about: each process
        goes on the devices it declared (indexes), else on device ``local_rank mod count``."""
        if self.gpu_sensor is None or self.gpu_source != "simulated" or not self.devices:
            return
        count = len(self.devices)
        indexes = [int(d) for d in devices if d.isdigit() and int(d) < count]
        self.gpu_sensor.attach_process(pid, indexes or [local_rank % count])
        self._simulated_pids.add(pid)

    def _live_run(self, run_id: str, pid: int) -> Run | None:
        run = self._find_run(run_id)
        if run is None:
            self.health["messages_unknown_run"] += 1
            return None
        if not run.live:
            self.health["messages_for_ended_run"] += 1
            return None
        if pid not in run.processes:
            run.processes[pid] = run.new_process(pid, create_time(pid))
        return run

    def _steps(self, msg: StepBatch) -> None:
        run = self._live_run(msg.run, msg.pid)
        if run is None:
            return
        run.dropped_steps += msg.dropped
        proc = run.processes[msg.pid]
        for step, start, end, samples, extras in msg.rows:
            timed = run.record_step(proc, step, start, end, samples, extras)
            rollup = self.persist.rollup(run.id, run.to_wall(end))
            rollup.steps += timed is not None
            rollup.samples += samples

    def _bye(self, msg: Bye) -> None:
        run = self._live_run(msg.run, msg.pid)
        if run is None:
            return
        proc = run.processes[msg.pid]
        proc.said_bye = True
        if msg.mono is not None:
            run.last_event_mono = max(run.last_event_mono, msg.mono)
        if msg.status != "finished":
            run.bye_status = msg.status
        self._close_if_done(run)
        run.dirty = True

    @staticmethod
    def _close_if_done(run: Run) -> None:
        """Once every process said ``bye`` or is gone, the run's end is its last event; from
        then on no interval gives it energy past that time."""
        if run.end_mono is None and run.all_processes_done():
            run.end_mono = run.last_event_mono

    # ---- sampling and attribution ---------------------------------------------------------

    def sample(self) -> None:
        """Read every sensor once, extend the energy curves and attribute the new intervals."""
        self.apply_readings(self.read_sensors())

    def read_sensors(self) -> Readings:
        """Read every sensor once. Touches no daemon state, so the main loop calls it without
        holding :attr:`lock` (an NVML pass over 8 GPUs would otherwise hold up scrapes)."""
        started = time.perf_counter()
        gpu = self.gpu_sensor.sample() if self.gpu_sensor is not None else []
        cpu = self.cpu_sensor.sample() if self.cpu_sensor is not None else None
        return Readings(gpu, cpu, started)

    def apply_readings(self, readings: Readings) -> None:
        """Extend the energy curves with ``readings`` and attribute the new intervals, give
        finished steps their energy and end runs whose processes are done (under the lock)."""
        if self.gpu_sensor is not None:
            for s in readings.gpu:
                self._gpu_sample(s)
            # a copy: a reader thread back from a hung call may add a key meanwhile
            for key, n in dict(self.gpu_sensor.errors).items():
                self.health[f"sensor_error:gpu:{key}"] = n
        if self.cpu_sensor is not None and readings.cpu is not None:
            self.cpu.observe(readings.cpu, cpu_total_j(readings.cpu))
            for key, n in dict(self.cpu_sensor.errors).items():
                self.health[f"sensor_error:cpu:{key}"] = n
        resolve_steps(self.runs, self.devices, self.clock())
        self._end_runs()
        self.sample_seconds_last = time.perf_counter() - readings.started

    def _gpu_sample(self, s: GpuSample) -> None:
        dev = self.devices.get(s.uuid)
        if dev is None:
            dev = self.devices[s.uuid] = DeviceState(s.uuid, s.index, s.name)
        dev.latest = s
        if s.utilization_ratio is not None:
            dev.utilization.append((s.t_s, s.utilization_ratio))
        first = dev.curve.first is None
        if not (dev.curve.last is not None and s.t_s <= dev.curve.last.t_s):  # as the curve
            dev.counter.observe(s.t_s, s.energy_j, s.counter_j, s.counter_id)
        if s.energy_j is None:
            return
        dev.curve.append(s.t_s, s.energy_j, s.power_w)
        if first:
            self.persist.credit_gap(dev, s)
        for pid in (p.pid for p in s.processes):
            dev.pids_seen.add(pid)
        self._attribute(dev, s.t_s - ATTRIBUTION_LAG_S)

    def _attribute(self, dev: DeviceState, upto: float) -> None:
        """Split ``dev``'s energy up to ``upto`` (monotonic seconds) among the runs holding it
        (:func:`profiler.accounting.attribution.attribute`)."""
        attribute(
            dev, upto, runs=self.runs, cost_meter=self.cost_meter, rollup_for=self.persist.rollup,
            idle=self.persist.idle, wall_at=self._wall_at, ancestors=self._ancestors,
        )  # fmt: skip

    def _wall_at(self, mono: float) -> float:
        """Unix seconds of monotonic time ``mono``, by this daemon's clocks now."""
        return self.wall() - (self.clock() - mono)

    def _ancestors(self, pid: int) -> list[int]:
        """``pid``'s ancestors, parent first: from the process table of the last CPU accounting,
        else read from ``/proc``."""
        known = self._procs.ancestors(pid) if self._procs is not None else None
        return ancestor_pids(pid) if known is None else known

    def attribute_all(self) -> None:
        """Attribute up to the newest sample (at shutdown)."""
        for dev in self.devices.values():
            if dev.curve.last is not None:
                self._attribute(dev, dev.curve.last.t_s)

    def account_cpu(self) -> None:
        """Give runs their share of host CPU energy since the last call, by the CPU time of their
        process trees (:meth:`profiler.accounting.cpu.CpuAccount.account`), read from ``/proc``
        now; refreshes the process table the GPU processes' ancestry is looked up in."""
        table = self._procs = ProcessTable.read()
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        self.cpu.account(
            self.runs, table, busy, rollup_for=self.persist.rollup, cost_meter=self.cost_meter,
            minute_wall=self.wall(),
        )  # fmt: skip

    # ---- run ends ---------------------------------------------------------------------------

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
            self._close_if_done(run)

    def _watcher_alive(self, pid: int) -> bool:
        """Whether the ``profiler run`` watching ``pid`` still runs (unknown: assumed so)."""
        watcher = self._watchers.get(pid)
        return watcher is None or alive(*watcher)

    def _end_runs(self) -> None:
        # A run is closed once energy is attributed past its end on every device.
        horizon = min(
            (d.attributed_to for d in self.devices.values() if d.attributed_to is not None),
            default=None,
        )
        for run in self.runs.values():
            if not run.live or not run.all_processes_done():
                continue
            self._close_if_done(run)
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
        self._finished_at[run.id] = self.clock()
        self.health["runs_ended"] += 1
        self._announce(run, "end")
        for pid in run.processes:
            self.cpu.forget(pid)
            self._simulated_pids.discard(pid)
            self._watchers.pop(pid, None)
            if self.gpu_sensor is not None:
                self.gpu_sensor.detach_process(pid)
        self.flush()

    def _announce(self, run: Run, event: str) -> None:
        """A Grafana annotation for a run's start or end (queued; never blocks the loop)."""
        if self.annotator is None:
            return
        self.annotator.annotate(*announcement(run, event, self.wall()))

    def forget_finished(self) -> None:
        """Finished runs leave /metrics after ``finished_run_ttl_s``; the ledger keeps them."""
        now = self.clock()
        for run_id, when in list(self._finished_at.items()):
            if now - when >= self.config.finished_run_ttl_s and not self.runs[run_id].dirty:
                del self.runs[run_id]
                del self._finished_at[run_id]

    def _make_room(self) -> bool:
        """Keep at most ``max_runs`` runs in memory (and in /metrics): drop the oldest finished
        runs once the ledger holds them. False when every run is live (or unsaved)."""
        if len(self.runs) < self.config.max_runs:
            return True
        for run_id, _when in sorted(self._finished_at.items(), key=lambda kv: kv[1]):
            if self.runs[run_id].dirty and self.ledger is not None:
                self.flush()
            if self.runs[run_id].dirty and self.ledger is not None:
                return False  # the ledger does not take writes now: keep what is unsaved
            del self.runs[run_id]
            del self._finished_at[run_id]
            if len(self.runs) < self.config.max_runs:
                return True
        return False

    # ---- ledger -----------------------------------------------------------------------------

    def set_pricing(self, pricing: Pricing) -> None:
        """Price work from now on with ``pricing`` (what runs cost so far stays as it was)."""
        self.cost_meter.pricing = pricing
        self.persist.record_pricing(pricing)

    def open_ledger(self) -> None:
        """Open the ledger and continue the runs it holds as running
        (:meth:`profiler.daemon.persist.Persistence.open_ledger`)."""
        self.persist.open_ledger()

    def flush(self) -> bool:
        """Write what is not in the ledger yet; True when all of it is
        (:meth:`profiler.daemon.persist.Persistence.flush`)."""
        return self.persist.flush()

    def final_flush(self) -> FlushOutcome:
        """The flush before exit (:meth:`profiler.daemon.persist.Persistence.final_flush`)."""
        return self.persist.final_flush()

    @property
    def ledger(self) -> Ledger | None:
        """The open ledger (None before :meth:`open_ledger`)."""
        return self.persist.ledger

    @property
    def flush_failures(self) -> int:
        """Ledger writes failed in a row (0 once one works again)."""
        return self.persist.flush_failures

    @property
    def last_flush_error(self) -> str:
        """The last failed ledger write's one line ("" before any)."""
        return self.persist.last_flush_error

    @property
    def _rollups(self) -> dict[tuple[str, int], Rollup]:
        return self.persist.rollups

    @property
    def _recovery_pending(self) -> bool:
        return self.persist.recovery_pending

    # ---- what /metrics and status read ----------------------------------------------------------

    @property
    def cpu_energy_j(self) -> dict[str, tuple[float, str]]:
        """CPU zone -> (its cumulative joules, their source) as last read."""
        return self.cpu.energy_j

    @cpu_energy_j.setter
    def cpu_energy_j(self, zones: dict[str, tuple[float, str]]) -> None:
        self.cpu.energy_j = zones

    @property
    def cpu_total_j(self) -> float | None:
        """The host's CPU joules since start (all zones), None before a reading gives one."""
        return self.cpu.total_j

    @property
    def cpu_source(self) -> str:
        """Where the CPU energy comes from (``rapl`` or ``estimated``; "" before a reading)."""
        return self.cpu.source

    def status(self, metrics_url: str) -> dict[str, Any]:
        """What ``daemon.json`` and ``profiler status`` show of this daemon."""
        return {
            "pid": os.getpid(),
            "version": __version__,
            "home": str(self.config.home),
            "socket": str(self.config.socket),
            "ledger": str(self.config.ledger),
            "log": str(self.config.log_file),
            "metrics_url": metrics_url,
            "gpu_source": self.gpu_source,
            "gpu": self.gpu_description,
            "cpu": self.cpu_description,
            "started_at": self.started_at,
            "sample_interval_s": self.config.sample_interval_s,
            "pricing": self.cost_meter.pricing.profile,
            "currency": self.cost_meter.pricing.currency,
        }
