"""The node daemon: one per machine, serving every training process on it.

One thread runs the main loop (apply messages, sample sensors at a fixed rate on the monotonic
clock, attribute energy, end runs, flush the ledger); the HTTP server thread only reads a
snapshot under :attr:`Daemon.lock`. Beside them, the ingest thread
(:class:`profiler.ingest.messages.Inbox`)
keeps the socket read while the loop is busy, and the NVML sensor makes its calls on a reader
thread of its own (a hung driver call cannot stop the loop). Sensors are read without the
lock; what they return is applied under it. Never imports torch or tensorflow.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from profiler import __version__
from profiler.accounting.energy import (
    CounterMark,
    CounterTrack,
    EnergyCurve,
    Holder,
    split_cpu_energy,
    split_gap,
    split_interval,
)
from profiler.accounting.runs import ProcessInfo, Run
from profiler.config import Config
from profiler.cost.meter import IDLE_UTILIZATION, CostMeter, Priced, RunCost, no_pricing
from profiler.cost.pricing import Pricing
from profiler.daemon.lock import home_error, lock_state, start_ticks
from profiler.ingest.messages import Bye, Hello, Inbox, Message, Receiver, StepBatch
from profiler.ledger.recovery import (
    FlushOutcome,
    Held,
    combine,
    make_reserve,
    read_recovery_records,
    recovery_path,
    release_reserve,
    write_exit_report,
    write_recovery,
)
from profiler.ledger.store import Ledger, LedgerError, Rollup
from profiler.sensors.base import CpuSample, GpuSample

if TYPE_CHECKING:
    from profiler.sensors.host import ProcessTable

log = logging.getLogger(__name__)

STALE_PENDING_S = 30.0
# Hooks and daemon read one CLOCK_MONOTONIC; a time further ahead than this is refused (it
# would hold a run open until then).
FUTURE_SLACK_S = 60.0
ATTRIBUTION_LAG_S = 0.5  # more than the hooks' flush interval (0.25 s)
HANDLE_CHUNK = 16  # messages handled per hold of the daemon's lock


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@dataclass
class DeviceState:
    """What the daemon keeps per GPU: its energy curve and its latest reading."""

    uuid: str
    index: int
    model: str
    curve: EnergyCurve = field(default_factory=EnergyCurve)
    latest: GpuSample | None = None
    idle_j: float = 0.0
    attributed_to: float | None = None  # monotonic seconds: energy before this is split
    pids_seen: set[int] = field(default_factory=set)
    counter: CounterTrack = field(default_factory=CounterTrack)  # the driver's raw counter
    # (monotonic seconds, utilization ratio) of recent samples, for judging idle intervals.
    utilization: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=256))

    def utilization_between(self, t0: float, t1: float) -> float | None:
        """Mean utilization of the samples in ``(t0, t1]``, else of the first sample after
        ``t1``; None when the sensor gives none."""
        inside, after = [], None
        for t, u in reversed(self.utilization):  # newest first: intervals asked are recent
            if t <= t0:
                break
            if t <= t1:
                inside.append(u)
            else:
                after = u  # ends as the earliest sample after t1
        if inside:
            return sum(inside) / len(inside)
        return after


@dataclass(frozen=True)
class Readings:
    """One pass over the sensors (:meth:`Daemon.read_sensors`); ``started`` is its
    ``perf_counter`` start, for the pass's duration."""

    gpu: list[GpuSample]
    cpu: list[CpuSample] | None
    started: float


class Sharing:
    """How many runs hold one device at a given time, from each run's ``(since, end)`` span
    (monotonic seconds; ``end`` None while it runs): two sorted lists and two bisections per
    question, so a pass over many runs' steps stays linear in the steps."""

    def __init__(self, spans: list[tuple[float, float | None]]) -> None:
        self._starts = sorted(since for since, _end in spans)
        self._ends = sorted(end for _since, end in spans if end is not None)

    def holders_at(self, t: float) -> int:
        """Runs holding the device at ``t`` (held from ``since`` to ``end``, both included);
        at least 1, so a share never divides by zero."""
        started = bisect.bisect_right(self._starts, t)
        ended = bisect.bisect_left(self._ends, t)  # spans over before t
        return max(1, started - ended)


def _minute(unix_s: float) -> int:
    return int(unix_s // 60) * 60


class Daemon:
    """State and logic of the node daemon. ``clock``/``wall`` are injectable for tests."""

    def __init__(
        self,
        config: Config,
        *,
        gpu_sensor: Any = None,
        gpu_description: str = "",
        cpu_sensor: Any = None,
        cpu_description: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        hostname: str | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        self.config = config
        self.cost_meter = CostMeter(pricing or no_pricing())
        # Posts run starts and ends to Grafana (profiler.grafana.Annotator) when configured.
        self.annotator: Any = None
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
        self.cpu_energy_j: dict[str, tuple[float, str]] = {}  # zone -> (joules, source)
        self.health: Counter[str] = Counter()
        self.message_counts: Counter[str] = Counter()
        self.sample_seconds_last = 0.0
        self.started_at = wall()
        self.started_mono = clock()
        self.ledger: Ledger | None = None
        self._rollups: dict[tuple[str, int], Rollup] = {}
        self._idle: dict[tuple[str, int], float] = {}
        self._finished_at: dict[str, float] = {}
        self.cpu_total_j: float | None = None  # host CPU joules since start (all zones)
        self.cpu_source = ""
        self._cpu_mark: tuple[float, float] | None = None  # (cpu joules, busy cpu seconds)
        self._proc_cpu: dict[int, float] = {}  # pid -> CPU seconds at the last check
        # The host's processes as of the last CPU accounting (refreshed once a second): the
        # ancestry of GPU processes is looked up here, not in /proc, on every sample.
        self._procs: ProcessTable | None = None
        self._simulated_pids: set[int] = set()  # processes the simulated GPU was told about
        # pid watched by `profiler run` -> (that command's pid, its create time): while the
        # watcher lives, a gone child waits for its bye; a watcher gone (killed) sends none.
        self._watchers: dict[int, tuple[int, float | None]] = {}
        self.flush_failures = 0
        self.last_flush_error = ""  # the last failed ledger write's one line ("" before any)
        # A recovery file (see profiler.ledger.recovery) is left to merge: the ledger did not take
        # it.
        self._recovery_pending = False
        self.last_recovery_error = ""  # why it is left (one line)
        # The newest run rows of that file's unmerged records (run id -> row as
        # Ledger.runs() gives it): newer than the ledger's own rows of those runs.
        self._recovered_rows: dict[str, dict[str, Any]] = {}
        # Restored runs: the raw energy counter marks their last flush stored (run -> device
        # uuid -> mark), and the restart gap added to their unmeasured_s (run -> seconds).
        self._gap_marks: dict[str, dict[str, CounterMark]] = {}
        self._gap_unmeasured_s: dict[str, float] = {}

    # ---- messages -------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        """Apply one decoded message to the run state, unless its sender may not send it
        (counted as ``rejected:<reason>``)."""
        refusal = self._refusal(msg)
        if refusal is not None:
            self.message_counts[f"rejected:{refusal}"] += 1
            return
        if isinstance(msg, Hello):
            self._hello(msg)
        elif isinstance(msg, StepBatch):
            self._steps(msg)
        elif isinstance(msg, Bye):
            self._bye(msg)

    def _refusal(self, msg: Message) -> str | None:
        """Why the message's sender (kernel credentials) may not send it, or None. Root may
        speak for anyone; other users only for their own runs and their own processes.
        Without credentials (in-process use) everything is allowed."""
        if _latest_mono(msg) > self.clock() + FUTURE_SLACK_S:
            return "time_in_future"
        sender = msg.sender
        if sender is None or sender.uid == 0:
            return None
        run = self.runs.get(msg.run) or self._resume(msg.run)
        if run is not None and run.owner_uid not in (None, sender.uid):
            return "run_not_owned"
        if msg.proxy and msg.pid != sender.pid:
            owner = _owner_uid(msg.pid)
            if owner is None:
                if run is None or msg.pid not in run.processes:
                    return "pid_not_found"
            elif owner != sender.uid:
                return "pid_not_owned"
        return None

    def _owner_of(self, msg: Message) -> int | None:
        """The uid a message speaks for: the target process's owner for a proxy (so root's
        ``profiler attach`` of a user's job gives the user the run), else the sender's; None
        without credentials."""
        if msg.sender is None:
            return None
        return _owner_uid(msg.pid) if msg.proxy else msg.sender.uid

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

    def _hello(self, msg: Hello) -> None:
        f = msg.fields
        run = self.runs.get(msg.run) or self._resume(msg.run)
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
            run.owner_uid = self._owner_of(msg)
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
            proc = run.new_process(msg.pid, _create_time(msg.pid))
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
            self._watchers[msg.pid] = (msg.sender.pid, _create_time(msg.sender.pid))
        run.dirty = True

    def _count_unrecorded(self, run: Run, proc: ProcessInfo, steps: int, samples: int) -> None:
        """Steps the process's hook sent that no daemon recorded: into the run's totals and
        the current minute's rollup (the lead rank's steps, every rank's samples)."""
        before = proc.samples
        added = run.count_unrecorded(proc, steps, samples)
        if added:
            rollup = self._rollup(run.id, self.wall())
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
        attach = getattr(self.gpu_sensor, "attach_process", None)
        if attach is None or self.gpu_source != "simulated" or not self.devices:
            return
        count = len(self.devices)
        indexes = [int(d) for d in devices if d.isdigit() and int(d) < count]
        attach(pid, indexes or [local_rank % count])
        self._simulated_pids.add(pid)

    def _live_run(self, run_id: str, pid: int) -> Run | None:
        run = self.runs.get(run_id) or self._resume(run_id)
        if run is None:
            self.health["messages_unknown_run"] += 1
            return None
        if not run.live:
            self.health["messages_for_ended_run"] += 1
            return None
        if pid not in run.processes:
            run.processes[pid] = run.new_process(pid, _create_time(pid))
        return run

    def _steps(self, msg: StepBatch) -> None:
        run = self._live_run(msg.run, msg.pid)
        if run is None:
            return
        run.dropped_steps += msg.dropped
        proc = run.processes[msg.pid]
        for step, start, end, samples, extras in msg.rows:
            timed = run.record_step(proc, step, start, end, samples, extras)
            rollup = self._rollup(run.id, run.to_wall(end))
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
            for key, n in dict(getattr(self.gpu_sensor, "errors", {})).items():
                self.health[f"sensor_error:gpu:{key}"] = n
        if self.cpu_sensor is not None and readings.cpu is not None:
            self._cpu_samples(readings.cpu)
            for key, n in dict(getattr(self.cpu_sensor, "errors", {})).items():
                self.health[f"sensor_error:cpu:{key}"] = n
        self._resolve_steps()
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
            self._credit_gap(dev, s)
        for pid in (p.pid for p in s.processes):
            dev.pids_seen.add(pid)
        self._attribute(dev, s.t_s - ATTRIBUTION_LAG_S)

    def _credit_gap(self, dev: DeviceState, s: GpuSample) -> None:
        """The device's first reading in this daemon: give the restored runs that held it at
        the previous daemon's last flush the energy its counter measured since (from their
        stored mark to ``s``), in equal shares, with the device-seconds and their cost; they
        hold it from here on. Counter-sourced, not estimated: only when the counter's epoch is
        the same, it did not go backwards and every run that held the device lives (see
        :func:`split_gap`); otherwise the gap stays in their ``unmeasured_s`` (counted in health
        as ``restart_gap_unmeasured:<reason>``). A run whose every held device got its gap
        measured has the restart gap taken out of its ``unmeasured_s``."""
        marks = {
            run_id: by_device[dev.uuid]
            for run_id, by_device in self._gap_marks.items()
            if dev.uuid in by_device
        }
        if not marks:
            return
        live = {run_id for run_id in marks if run_id in self.runs and self.runs[run_id].live}
        share = split_gap(marks, live, s.t_s, s.counter_j, s.counter_id)
        if share.reason is not None:
            self.health[f"restart_gap_unmeasured:{share.reason}"] += 1
            log.warning(
                "GPU %d: the energy since the last flush before the restart is not measured "
                "(%s); it stays in unmeasured_s of run(s) %s",
                dev.index, share.reason.replace("_", " "), ", ".join(sorted(marks)),
            )  # fmt: skip
            for run_id in marks:
                self._gap_unmeasured_s.pop(run_id, None)  # stays unmeasured
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
            rollup = self._rollup(run_id, minute_wall)
            rollup.gpu_energy_j += joules
            rollup.gpu_seconds += seconds
            _add_priced(rollup, priced)
            run.dirty = True
            self.health["restart_gap_measured"] += 1
        for run_id in marks:
            del self._gap_marks[run_id][dev.uuid]
            if not self._gap_marks[run_id]:
                del self._gap_marks[run_id]
                gap_s = self._gap_unmeasured_s.pop(run_id, None)
                if gap_s is not None and run_id in self.runs:
                    run = self.runs[run_id]
                    run.unmeasured_s = max(0.0, run.unmeasured_s - gap_s)
                    run.dirty = True

    def _counter_marks(self) -> dict[str, CounterMark]:
        """Per device uuid: its raw counter where its energy was last split, and the runs that
        held it there; stored with each flush of those runs (``meta.gpu_counters``) so that a
        restarted daemon can measure the gap (:meth:`_credit_gap`). Devices whose counter cannot
        be read there (no counter, a reset since) get none."""
        marks = {}
        for dev in self.devices.values():
            upto = dev.attributed_to
            if upto is None:
                continue
            reading = dev.counter.counter_at(dev.curve, upto)
            if reading is None:
                continue
            holders = tuple(sorted(
                run.id for run in self.runs.values()
                if dev.uuid in run.device_since and run.device_since[dev.uuid] < upto
                and (run.end_mono is None or run.end_mono > upto)
            ))  # fmt: skip
            if holders:
                marks[dev.uuid] = CounterMark(upto, reading[0], reading[1], holders)
        return marks

    def _attribute(self, dev: DeviceState, upto: float) -> None:
        """Split the device's energy from where the last split stopped up to ``upto`` among the
        runs holding it. Runs ``ATTRIBUTION_LAG_S`` behind the newest sample, so the hooks' step
        and ``bye`` messages for that span have arrived and runs end where their last event is."""
        first = dev.curve.first
        if first is None:
            return
        start = dev.attributed_to if dev.attributed_to is not None else first.t_s
        upto = min(upto, dev.curve.last.t_s)
        if upto <= start:
            return
        share = split_interval(dev.curve, start, upto, self._holders(dev, start))
        dev.attributed_to = upto
        dev.pids_seen.clear()
        minute_wall = self.wall() - (self.clock() - upto)
        power = dev.curve.power_peak_w(start, upto)
        utilization = dev.utilization_between(start, upto)
        for run_id, joules in share.energy_j.items():
            run = self.runs[run_id]
            seconds = share.seconds[run_id]
            run.gpu_energy_j[dev.uuid] = run.gpu_energy_j.get(dev.uuid, 0.0) + joules
            run.gpu_seconds[dev.uuid] = run.gpu_seconds.get(dev.uuid, 0.0) + seconds
            if power is not None:
                run.gpu_power_peak_w = max(run.gpu_power_peak_w or 0.0, power)
            priced = self.cost_meter.gpu_interval(
                run.cost, dev.uuid, seconds, joules, upto - start, upto,
                _waste_reason(run, start, utilization),
            )  # fmt: skip
            rollup = self._rollup(run_id, minute_wall)
            rollup.gpu_energy_j += joules
            rollup.gpu_seconds += seconds
            _add_priced(rollup, priced)
            run.dirty = True
        dev.idle_j += share.idle_j
        key = (dev.uuid, _minute(minute_wall))
        self._idle[key] = self._idle.get(key, 0.0) + share.idle_j

    def attribute_all(self) -> None:
        """Attribute up to the newest sample (at shutdown)."""
        for dev in self.devices.values():
            if dev.curve.last is not None:
                self._attribute(dev, dev.curve.last.t_s)

    def _holders(self, dev: DeviceState, t0: float) -> list[Holder]:
        """Runs holding the device: NVML listed one of their processes, or a descendant of one
        (the CUDA process under ``profiler run``'s child, a DataLoader worker), since the last
        split, or a hook declared it. A run holds a device from the later of its start and the
        span in which it was first seen there, to its end."""
        on_device = dev.pids_seen
        nearest: set[str] | None = None  # runs owning the nearest ancestor of a pid on it
        holders = []
        for run in self.runs.values():
            if run.end_mono is not None and run.end_mono <= t0:
                continue
            since = run.device_since.get(dev.uuid)
            if since is None:
                seen = any(
                    pid in on_device or dev.uuid in p.devices or str(dev.index) in p.devices
                    for pid, p in run.processes.items()
                )
                if not seen and on_device and run.live:
                    if nearest is None:
                        nearest = self._nearest_runs(on_device)
                    seen = run.id in nearest
                if not seen or not run.live:
                    continue
                since = max(run.start_mono, t0)
                run.device_since[dev.uuid] = since
            holders.append(Holder(run.id, since, run.end_mono))
        return holders

    def _nearest_runs(self, pids: set[int]) -> set[str]:
        """The live runs that own, for some pid in ``pids``, the nearest process of its lineage
        (the pid itself, else its parent, and so on; read from ``/proc`` when asked): a GPU
        process belongs to the innermost run around it, never to every run above it."""
        from profiler.sensors.host import ancestor_pids

        table = self._procs
        owner = {
            pid: run.id
            for run in self.runs.values()
            if run.live
            for pid, p in run.processes.items()
            if not p.gone
        }
        out = set()
        for pid in pids:
            known = table.ancestors(pid) if table is not None else None
            for candidate in (pid, *(ancestor_pids(pid) if known is None else known)):
                if candidate in owner:
                    out.add(owner[candidate])
                    break
        return out

    def _cpu_samples(self, samples: list[CpuSample]) -> None:
        from profiler.sensors.rapl import cpu_total_j

        for s in samples:
            self.cpu_energy_j[s.zone] = (s.energy_j, s.source)
        total = cpu_total_j(samples)
        if total is not None and samples:
            self.cpu_total_j = total
            self.cpu_source = samples[0].source

    def account_cpu(self) -> None:
        """Give runs their share of host CPU energy since the last call, by CPU time (run at
        the process-check rate), add the CPU time to the run's, and refresh each run's
        resident memory. Each process tree counts once: a process inside the tree of another
        process of the same run (the hooked training under ``profiler run``'s child) is
        counted with that tree, not again."""
        import psutil

        from profiler.sensors.host import ProcessTable

        table = self._procs = ProcessTable.read()
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        run_cpu: dict[str, float] = {}
        for run in self.runs.values():
            if not run.live:
                continue
            seconds, rss = 0.0, 0
            active = [p for p in run.processes.values() if not (p.said_bye or p.gone)]
            outermost = table.outermost(p.pid for p in active)
            for proc in active:
                if proc.pid not in outermost:  # counted with its ancestor's tree
                    self._proc_cpu.pop(proc.pid, None)  # a fresh baseline if it stands alone
                    continue
                cpu = table.tree_cpu_seconds(proc.pid)
                prev = self._proc_cpu.get(proc.pid)
                if prev is None and _born_with(proc, run):
                    prev = 0.0  # all of its CPU time is the run's (profiler run's child)
                if cpu is not None:
                    if prev is not None and cpu >= prev:
                        seconds += cpu - prev
                    self._proc_cpu[proc.pid] = cpu
                rss += table.tree_rss_bytes(proc.pid) or 0
            run.host_rss_bytes = rss
            run_cpu[run.id] = seconds
            if seconds:
                run.cpu_seconds += seconds
                run.dirty = True
        if self._cpu_mark is not None and self.cpu_total_j is not None:
            energy_j = self.cpu_total_j - self._cpu_mark[0]
            shares = split_cpu_energy(energy_j, busy - self._cpu_mark[1], run_cpu)
            minute_wall = self.wall()
            for run_id, joules in shares.items():
                run = self.runs[run_id]
                run.cpu_energy_j += joules
                run.cpu_energy_source = self.cpu_source
                rollup = self._rollup(run_id, minute_wall)
                rollup.cpu_energy_j += joules
                _add_priced(rollup, self.cost_meter.cpu_energy(run.cost, joules))
                run.dirty = True
        if self.cpu_total_j is not None:
            self._cpu_mark = (self.cpu_total_j, busy)

    def _resolve_steps(self) -> None:
        """Give each finished step its energy once every device curve reaches its end."""
        horizon = min(
            (d.curve.last.t_s for d in self.devices.values() if d.curve.last), default=None
        )
        now = self.clock()
        sharing: dict[str, Sharing] = {}  # per device, built when first needed in this pass
        for run in self.runs.values():
            if not run.pending:
                continue
            held = [self.devices[u] for u in run.device_since if u in self.devices]
            if not held or horizon is None:
                run.pending = [p for p in run.pending if now - p.end_mono < STALE_PENDING_S]
                continue
            keep = []
            for p in run.pending:
                if p.end_mono > horizon:
                    keep.append(p)
                    continue
                mid = (p.start_mono + p.end_mono) / 2
                joules = 0.0
                for dev in held:
                    if dev.uuid not in sharing:
                        sharing[dev.uuid] = self._sharing(dev)
                    joules += dev.curve.energy_between(p.start_mono, p.end_mono) / sharing[
                        dev.uuid
                    ].holders_at(mid)
                run.step_joules.observe(joules)
                run.step_energy_sum_j += joules
                run.steps_with_energy += 1
            run.pending = keep

    def _sharing(self, dev: DeviceState) -> Sharing:
        """Which runs hold ``dev`` when: every run that has held it, with its end."""
        spans = [
            (run.device_since[dev.uuid], run.end_mono)
            for run in self.runs.values()
            if dev.uuid in run.device_since
        ]
        # a run that ended before it was first seen on the device never held it
        return Sharing([(since, end) for since, end in spans if end is None or end >= since])

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
                if not _alive(proc.pid, proc.create_time):
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
        return watcher is None or _alive(*watcher)

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
        detach = getattr(self.gpu_sensor, "detach_process", None)
        for pid in run.processes:
            self._proc_cpu.pop(pid, None)
            self._simulated_pids.discard(pid)
            self._watchers.pop(pid, None)
            if detach is not None:
                detach(pid)
        self.flush()

    def _announce(self, run: Run, event: str) -> None:
        """A Grafana annotation for a run's start or end (queued; never blocks the loop)."""
        if self.annotator is None:
            return
        what = f"{run.name} ({run.framework or 'unknown framework'})"
        if event == "start":
            text, when = f"{what} started", run.started_at
        else:
            cost = run.cost
            money = f", cost {cost.total:.2f} {cost.currency}" if cost.currency else ""
            text, when = f"{what} {run.status}{money}", run.ended_at or self.wall()
        tags = ["ml-profiler", f"run:{run.id}", event] + ([run.status] if event == "end" else [])
        self.annotator.annotate(when, text, tags)

    def forget_finished(self) -> None:
        """Finished runs leave /metrics after ``finished_run_ttl_s``; the ledger keeps them."""
        now = self.clock()
        for run_id, when in list(self._finished_at.items()):
            if now - when >= self.config.finished_run_ttl_s and not self.runs[run_id].dirty:
                del self.runs[run_id]
                del self._finished_at[run_id]

    # ---- ledger -----------------------------------------------------------------------------

    def _rollup(self, run_id: str, unix_s: float) -> Rollup:
        key = (run_id, _minute(unix_s))
        rollup = self._rollups.get(key)
        if rollup is None:
            rollup = self._rollups[key] = Rollup(run_id, key[1])
        return rollup

    def set_pricing(self, pricing: Pricing) -> None:
        """Price work from now on with ``pricing`` (what runs cost so far stays as it was)."""
        self.cost_meter.pricing = pricing
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
        for run_id, row in self._recovered_rows.items():  # newer than the ledger's, unmerged
            if row.get("status") == "running":
                rows[run_id] = row
            else:
                rows.pop(run_id, None)
        for row in rows.values():
            run = self._restored(row)
            alive = {
                int(pid): ct
                for pid, ct in row["meta"].get("pids", {}).items()
                if _alive(int(pid), ct)
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
                self._finished_at[run.id] = self.clock()
            self.runs[run.id] = run

    def _resume(self, run_id: str) -> Run | None:
        """A run this daemon does not know: a previous daemon may have recorded it."""
        if self.ledger is None:
            return None
        row = self._recovered_rows.get(run_id)
        try:
            row = row or self.ledger.run(run_id)
        except LedgerError:
            return None  # the ledger cannot answer now; the flush logs why
        if row is None or row["status"] != "running":
            return None
        run = self.runs[run_id] = self._restored(row)
        return run

    def _restored(self, row: dict[str, Any]) -> Run:
        """A running run from the ledger. What happened between the previous daemon's last
        flush of it and this daemon's start was not measured: add that gap to
        ``unmeasured_s``."""
        run = _run_from_row(row)
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
            if marks:  # the GPUs' counters may measure the gap: see _credit_gap
                self._gap_marks[run.id] = marks
                self._gap_unmeasured_s[run.id] = self.started_mono - flushed
        return run

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
        if self._recovery_pending and not self._merge_recovery():
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

    def _held(self) -> tuple[list[Run], Held]:
        """What is not in the ledger yet: the dirty runs, and for :meth:`Ledger.write` their
        rows and device totals, the rollups and the idle rollups."""
        dirty = [r for r in self.runs.values() if r.dirty]
        devices = [
            (r.id, uuid, self.devices[uuid].model if uuid in self.devices else "", j,
             r.gpu_seconds.get(uuid, 0.0))
            for r in dirty
            for uuid, j in r.gpu_energy_j.items()
        ]  # fmt: skip
        idle = [(uuid, minute, j) for (uuid, minute), j in self._idle.items()]
        marks = self._counter_marks()
        rows = [self._run_row(r, marks) for r in dirty]
        return dirty, Held(rows, devices, list(self._rollups.values()), idle)

    def _write_held(self) -> None:
        dirty, held = self._held()
        assert self.ledger is not None
        self.ledger.write(held.runs, held.devices, held.rollups, held.idle)
        self._forget_held(dirty)

    def _forget_held(self, dirty: list[Run]) -> None:
        """What was held is written (to the ledger or the recovery file)."""
        for r in dirty:
            r.dirty = False
        self._rollups.clear()
        self._idle.clear()

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

    # ---- recovery: what a final flush could not write ----------------------------------------

    def final_flush(self) -> FlushOutcome:
        """The flush before exit. If the ledger does not take it, free the space set aside
        (:func:`make_reserve`) and try again; failing that, write what is held to the recovery
        file beside the ledger (JSON lines, 0600), which the next daemon merges in. The outcome
        says plainly what was not written and where it went."""
        ledger = self.config.ledger
        if self.flush():
            return FlushOutcome(True, f"ledger flushed to {ledger}")
        if release_reserve(self.config) and self.flush():
            return FlushOutcome(True, f"ledger flushed to {ledger}")
        dirty, held = self._held()
        shown = ", ".join(r.id for r in dirty[:5]) + (", ..." if len(dirty) > 5 else "")
        what = f"{len(dirty)} run(s) ({shown}) and {len(held.rollups)} minute rollup(s)"
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

    def _merge_recovery(self) -> bool:
        """Merge the recovery file an earlier final flush left (what is not merged yet, in one
        transaction that also records each merged record's token, so none is merged twice),
        then remove it. When the ledger does not take it, it stays (``_recovery_pending``) and
        its run rows are kept in ``_recovered_rows`` for restoring runs; a later flush tries
        again. True when nothing is left to merge (the file may stay if it cannot be removed:
        the next daemon finds it merged and removes it)."""
        path = recovery_path(self.config)
        assert self.ledger is not None
        try:
            records, bad = read_recovery_records(path)
        except FileNotFoundError:
            self._recovery_pending = False
            self._recovered_rows = {}
            return True
        except OSError as e:
            if not self._recovery_pending:
                log.error("cannot read %s (%s); it stays for a later flush", path, e)
            self._recovery_pending = True
            self.last_recovery_error = f"cannot read {path} ({e})"
            return True  # nothing read, nothing to keep from being overwritten
        try:
            done = self.ledger.merged_tokens(token for token, _ in records)
            todo = [(token, held) for token, held in records if token not in done]
            held = combine(h for _, h in todo)
            self.ledger.write(held.runs, held.devices, held.rollups, held.idle,
                              merged=[token for token, _ in todo])  # fmt: skip
        except LedgerError as e:
            if not self._recovery_pending:
                log.error("cannot merge %s into the ledger yet (%s); it stays", path, e)
            self._recovery_pending = True
            self.last_recovery_error = f"cannot merge {path} into the ledger yet ({e})"
            self._recovered_rows = _rows_of(combine(h for _, h in records))
            return False
        self._recovery_pending = False
        self._recovered_rows = {}
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

    def _run_row(self, run: Run, marks: dict[str, CounterMark] | None = None) -> dict[str, Any]:
        if marks is None:
            marks = self._counter_marks()
        row = {k: getattr(run, k) for k in (
            "id", "name", "project", "user", "framework", "framework_version", "hook", "host",
            "status", "started_at", "ended_at", "steps", "samples", "dropped_steps",
            "step_time_sum_s", "step_energy_sum_j", "steps_with_energy", "gpu_power_peak_w",
            "batch_size", "total_steps",
        )}  # fmt: skip
        row["steps"] = run.known_steps  # NULL: unknown (no hook timed steps), never 0
        row["samples"] = run.known_samples
        row["step_time_p95_s"] = run.step_time_quantile_s(0.95)
        row["gpu_energy_j"] = run.total_gpu_energy_j if run.gpu_energy_j else None
        row["gpu_seconds"] = run.total_gpu_seconds
        row["cpu_energy_j"] = run.cpu_energy_j
        row["gpu_source"] = self.gpu_source
        row["simulated"] = self.gpu_source == "simulated"
        row["energy_source"] = ",".join(
            sorted({d.latest.energy_source for d in self.devices.values() if d.latest})
        )
        row["currency"] = run.cost.currency
        row["cost_gpu_time"] = run.cost.gpu_time
        row["cost_energy"] = run.cost.energy
        row["co2_g"] = run.cost.co2_g
        row["waste_cost"] = run.cost.waste_total
        row["meta"] = {
            "cost": run.cost.to_meta(),
            "nonfinite_since_mono": run.nonfinite_since_mono,
            "pids": {str(p.pid): p.create_time for p in run.processes.values()},
            "ranks": {
                str(p.pid): [p.rank, p.local_rank, p.world_size] for p in run.processes.values()
            },
            "process_devices": {str(p.pid): list(p.devices) for p in run.processes.values()},
            "start_mono": run.start_mono,
            "last_event_mono": run.last_event_mono,
            "wall_offset_s": run.wall_offset_s,
            "clock": run.clock,
            "samples_source": run.samples_source,
            "memory_source": run.memory_source,
            "timed_steps": run.timed_steps,
            "steps_known": run.steps_known,
            "samples_count": run.samples,
            "rank_steps": {str(k): v for k, v in run.rank_steps.items()},
            "rank_samples": {str(k): v for k, v in run.rank_samples.items()},
            "rank_memory_peak": {str(k): list(v) for k, v in run.rank_memory_peak.items()},
            "last_loss": run.last_loss,
            "nonfinite_loss_steps": run.nonfinite_loss_steps,
            "first_nonfinite_step": run.first_nonfinite_step,
            "cpu_energy_source": run.cpu_energy_source,
            "owner_uid": run.owner_uid,
            "unmeasured_s": run.unmeasured_s,
            "gap_gpu_energy_j": run.gap_gpu_energy_j,
            "unrecorded_steps": run.unrecorded_steps,
            "process_counts": {
                **{str(pid): list(c) for pid, c in run.process_counts.items()},
                **{str(p.pid): [p.steps, p.samples] for p in run.processes.values()},
            },
            "flushed_mono": self.clock(),
            "gpu_counters": {
                uuid: mark.to_meta() for uuid, mark in marks.items() if run.id in mark.holders
            },
            "run_meta": dict(run.meta),
            "cpu_seconds": run.cpu_seconds,
            # processes that said bye or are gone (`profiler run` waits on its child's)
            "done_pids": sorted(p.pid for p in run.processes.values() if p.said_bye or p.gone),
            "step_time_max_s": run.step_time_max_s,
            "durations": run.reservoir[:512],
        }
        return row

    # ---- status ------------------------------------------------------------------------------

    def status(self, metrics_url: str) -> dict[str, Any]:
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


def _run_from_row(row: dict[str, Any]) -> Run:
    meta = row["meta"]
    run = Run(
        id=row["id"],
        name=row["name"],
        started_at=row["started_at"],
        start_mono=meta.get("start_mono", 0.0),
        last_event_mono=meta.get("last_event_mono", 0.0),
        wall_offset_s=meta.get("wall_offset_s", 0.0),
    )
    for key in ("project", "user", "framework", "framework_version", "hook", "host", "status",
                "steps", "samples", "dropped_steps", "step_time_sum_s", "step_energy_sum_j",
                "steps_with_energy", "gpu_power_peak_w", "batch_size", "total_steps"):  # fmt: skip
        setattr(run, key, row[key])
    # NULL steps/samples are unknown; the counters restart from what was counted.
    run.steps_known = bool(meta.get("steps_known", row["steps"] is not None))
    run.steps = row["steps"] or 0
    run.samples = row["samples"] if row["samples"] is not None else meta.get("samples_count", 0)
    run.step_time_max_s = meta.get("step_time_max_s", 0.0)
    run.timed_steps = meta.get("timed_steps", run.steps)
    run.cost = RunCost.from_meta(meta.get("cost", {}))
    run.nonfinite_since_mono = meta.get("nonfinite_since_mono")
    for key in ("clock", "samples_source", "memory_source", "last_loss", "nonfinite_loss_steps",
                "first_nonfinite_step"):  # fmt: skip
        if meta.get(key) is not None:
            setattr(run, key, meta[key])
    run.rank_steps = {int(k): v for k, v in meta.get("rank_steps", {}).items()}
    run.rank_samples = {int(k): v for k, v in meta.get("rank_samples", {}).items()}
    run.rank_memory_peak = {
        int(k): (v[0], v[1]) for k, v in meta.get("rank_memory_peak", {}).items()
    }
    run.seed_durations(meta.get("durations", []))
    for d in row["devices"]:
        run.gpu_energy_j[d["uuid"]] = d["energy_j"]
        run.gpu_seconds[d["uuid"]] = d["gpu_seconds"]
    run.cpu_energy_j = row["cpu_energy_j"]
    run.cpu_energy_source = meta.get("cpu_energy_source", "")
    run.owner_uid = meta.get("owner_uid")
    run.unmeasured_s = meta.get("unmeasured_s", 0.0)
    run.gap_gpu_energy_j = meta.get("gap_gpu_energy_j", 0.0)
    run.unrecorded_steps = meta.get("unrecorded_steps", 0)
    run.process_counts = {
        int(pid): (int(c[0]), int(c[1])) for pid, c in meta.get("process_counts", {}).items()
    }
    run.meta = dict(meta.get("run_meta", {}))
    run.cpu_seconds = meta.get("cpu_seconds", 0.0)
    run.dirty = False
    return run


def _rows_of(held: Held) -> dict[str, dict[str, Any]]:
    """The newest run rows of recovery records, by run id, as :meth:`Ledger.runs` gives
    rows (with their per-device totals under ``devices``)."""
    rows = {row["id"]: dict(row) for row in held.runs if isinstance(row.get("id"), str)}
    for row in rows.values():
        row["meta"] = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        row.setdefault("devices", [])
    for run_id, uuid, model, joules, seconds in held.devices:
        if run_id in rows:
            devices = [d for d in rows[run_id]["devices"] if d["uuid"] != uuid]
            devices.append({"uuid": uuid, "model": model, "energy_j": joules,
                            "gpu_seconds": seconds})  # fmt: skip
            rows[run_id]["devices"] = devices
    return rows


BORN_WITH_RUN_S = 1.0  # a process created at most this long before its run began is its own
WATCHED_GRACE_S = 5.0  # how long a gone process waits for `profiler run`'s bye, seconds


def _born_with(proc: ProcessInfo, run: Run) -> bool:
    """Whether ``proc`` was started for the run (``profiler run``'s child, created just before
    its ``hello``), so that all its CPU time counts; an older process (attached, or hooked
    after a long start-up) counts from when the daemon first read it."""
    return proc.create_time is not None and proc.create_time >= run.started_at - BORN_WITH_RUN_S


def _waste_reason(run: Run, start_mono: float, utilization: float | None) -> str | None:
    """Why a run's share of a device interval starting at ``start_mono`` is waste, if it is:
    ``nonfinite`` after its loss became NaN/inf, ``idle`` when the device did no work for it
    (utilization at most IDLE_UTILIZATION and no step of the run ended since the interval
    began)."""
    if run.nonfinite_since_mono is not None and start_mono >= run.nonfinite_since_mono:
        return "nonfinite"
    if (
        utilization is not None
        and utilization <= IDLE_UTILIZATION
        and run.last_event_mono < start_mono
    ):
        return "idle"
    return None


def _add_priced(rollup: Rollup, priced: Priced) -> None:
    rollup.cost_gpu_time += priced.gpu_time
    rollup.cost_energy += priced.energy
    rollup.co2_g += priced.co2_g
    rollup.waste_cost += priced.waste


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _latest_mono(msg: Message) -> float:
    """The latest monotonic time a message states (seconds)."""
    if isinstance(msg, Hello):
        return msg.fields["mono"]
    if isinstance(msg, StepBatch):
        return max((row[2] for row in msg.rows), default=float("-inf"))
    return msg.mono if msg.mono is not None else float("-inf")


def _owner_uid(pid: int) -> int | None:
    """The real uid of process ``pid``, or None when there is no such process."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _alive(pid: int, create_time: float | None) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.01
    except (psutil.Error, OSError):
        return False


# ---- running it --------------------------------------------------------------------------------


class Service:
    """The daemon as a process: lock, socket, metrics server, main loop, signals."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.stop_event = threading.Event()
        self._lock_fd: int | None = None
        self.receiver: Receiver | None = None
        self.inbox: Inbox | None = None
        self.http = None
        self.metrics_url = ""

    def acquire_lock(self) -> None:
        """One daemon per home: hold an exclusive lock on ``daemon.lock`` for life."""
        home = self.config.home
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.config.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise DaemonError(home_error(home, e)) from None
        # A CLI testing the lock holds it shared for an instant: retry for up to 1 s.
        for attempt in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 19:
                    time.sleep(0.05)
        else:
            os.close(fd)
            other = lock_state(self.config.lock_file).pid or "?"
            raise DaemonError(
                f"a daemon (pid {other}) already runs for {self.config.home}; "
                "use `profiler status`, or `profiler stop` first"
            ) from None
        self._lock_fd = fd
        # Warned only by the daemon that keeps the home (a refused second one says one line).
        loose = home.stat().st_mode & (0o077 if not self.config.socket_group else 0o067)
        if loose:
            log.warning(
                "%s is open to other users (mode %o); the daemon keeps its files owner-only, "
                "but `chmod 700 %s` is safer", home, home.stat().st_mode & 0o777, home,
            )  # fmt: skip

    def start(self) -> None:
        from profiler.daemon.exporter import serve_metrics

        self.acquire_lock()
        self.daemon.open_ledger()
        try:
            make_reserve(self.config)
        except OSError as e:
            log.warning(
                "cannot set aside space for a last ledger write in %s (%s): on a full disk, "
                "what the daemon holds at exit may not be written", self.config.home, e.strerror,
            )  # fmt: skip
        try:
            self.http, port = serve_metrics(
                self.daemon, self.config.metrics_host, self.config.metrics_port
            )
        except OSError as e:
            raise DaemonError(
                f"cannot serve /metrics on {self.config.metrics_host}:{self.config.metrics_port}"
                f" ({e.strerror}): choose another port with PROFILER_METRICS_PORT (0 = any free)"
            ) from e
        host = self.config.metrics_host
        shown = f"[{host}]" if ":" in host else host
        self.metrics_url = f"http://{shown}:{port}/metrics"
        group = None
        if self.config.socket_group:
            from profiler.ingest.messages import group_id

            group = group_id(self.config.socket_group)
            # The group may pass through the home directory to the socket (not list it).
            os.chown(self.config.home, -1, group)
            os.chmod(self.config.home, 0o710)
        self.receiver = Receiver(self.config.socket, self.daemon.message_counts, group=group)
        self.inbox = Inbox(self.receiver)
        self._write_status()
        log.info(
            "daemon %s listening on %s, metrics at %s; %s",
            __version__,
            self.config.socket,
            self.metrics_url,
            self.daemon.gpu_description,
        )

    def _write_status(self) -> None:
        """``daemon.json``, whole or not at all (written aside, then renamed): the status, and
        this process's start time (``/proc/<pid>/stat`` ticks), which with the pid names this
        process for good (``profiler stop`` signals nothing else)."""
        status = dict(
            self.daemon.status(self.metrics_url),
            start_ticks=start_ticks(os.getpid()),
            exit_report=True,  # `profiler stop` expects daemon.exit.json from this daemon
        )
        tmp = self.config.status_file.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(status, indent=1))
            tmp.replace(self.config.status_file)
        except OSError as e:
            raise DaemonError(home_error(self.config.home, e)) from None

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def run(self) -> None:
        """Main loop at a fixed rate on the monotonic clock until ``stop_event``."""
        d, cfg = self.daemon, self.config
        assert self.inbox is not None
        now = time.monotonic()
        next_sample = now
        next_flush = now + cfg.flush_interval_s
        next_check = now + cfg.process_check_interval_s
        while not self.stop_event.is_set():
            timeout = max(0.0, min(next_sample, next_flush, next_check) - time.monotonic())
            messages = self.inbox.get(min(timeout, 0.25))
            if messages:
                for i in range(0, len(messages), HANDLE_CHUNK):
                    with d.lock:  # let a scrape in between chunks of a burst
                        for m in messages[i : i + HANDLE_CHUNK]:
                            self._handle(m)
            now = time.monotonic()
            if now >= next_sample:
                readings = d.read_sensors()
                with d.lock:
                    d.apply_readings(readings)
                next_sample += cfg.sample_interval_s
                if next_sample < now:
                    next_sample = now + cfg.sample_interval_s
            if now >= next_check:
                with d.lock:
                    d.check_processes()
                    d.account_cpu()
                    d.forget_finished()
                next_check = now + cfg.process_check_interval_s
            if now >= next_flush:
                with d.lock:
                    self._flush()
                next_flush = now + cfg.flush_interval_s

    def _flush(self) -> None:
        """A periodic flush; one that trips a bug (a failed write is handled by the flush
        itself) is counted and logged (once with its traceback), and the next one tries again
        with everything still in memory."""
        try:
            self.daemon.flush()
        except Exception:  # noqa: BLE001 - a flush bug must not end the daemon
            first = not self.daemon.health["flush_errors"]
            self.daemon.health["flush_errors"] += 1
            if first:
                log.exception("a ledger flush failed unexpectedly; data stays in memory")

    def _handle(self, message: Message) -> None:
        """Apply one message; a message that trips a bug is counted and logged (once with its
        traceback) instead of stopping the daemon that every training process relies on."""
        try:
            self.daemon.handle(message)
        except Exception:  # noqa: BLE001 - one bad message must not end the daemon
            first = not self.daemon.health["handler_errors"]
            self.daemon.health["handler_errors"] += 1
            if first:
                log.exception("a %s message could not be applied", type(message).__name__)

    def shutdown(self) -> None:
        d = self.daemon
        if self.receiver is not None:
            left = self.inbox.stop() if self.inbox is not None else self.receiver.drain()
            with d.lock:
                for m in left:
                    self._handle(m)
            self.receiver.close()
        with d.lock:
            if d.gpu_sensor is not None:
                d.sample()
                d.attribute_all()
            outcome = d.final_flush()
        if self.http is not None:
            self.http.shutdown()
        if d.annotator is not None:
            d.annotator.close(2.0)
        if d.ledger is not None:
            d.ledger.close()
        if d.gpu_sensor is not None:
            d.gpu_sensor.close()
        release_reserve(self.config)  # set aside again by the next daemon
        try:
            write_exit_report(self.config, os.getpid(), outcome)
        except OSError as e:
            log.error("cannot record the outcome of the final flush for `profiler stop` (%s)", e)
        try:
            self.config.status_file.unlink()
        except FileNotFoundError:
            pass
        if outcome.ok:
            log.info("daemon stopped; %s", outcome.message)
        else:
            log.error("daemon stopped; %s", outcome.message)


def build_daemon(config: Config) -> Daemon:
    """Discover sensors per the config and make a daemon (raises DaemonError on a bad GPU spec)."""
    from profiler.sensors import discover_gpu_sensor
    from profiler.sensors.base import SensorUnavailable
    from profiler.sensors.host import discover_cpu_sensor

    try:
        gpu, gpu_text = discover_gpu_sensor(config.gpu)
    except (SensorUnavailable, ValueError) as e:
        raise DaemonError(f"gpu = {config.gpu!r}: {e}") from e
    pricing = effective_pricing(config)
    cpu, cpu_text = discover_cpu_sensor(root=config.rapl_root, tdp_w=config.cpu_tdp_w)
    daemon = Daemon(
        config, gpu_sensor=gpu, gpu_description=gpu_text, cpu_sensor=cpu, cpu_description=cpu_text,
        pricing=pricing, hostname=config.hostname or None,
    )  # fmt: skip
    if config.grafana_url:
        from profiler.grafana import Annotator, GrafanaError, token_from

        try:
            token = token_from(os.environ, config.grafana_token_file or None)
            daemon.annotator = Annotator(config.grafana_url, token)
        except GrafanaError as e:
            log.warning("Grafana annotations are off: %s", e)
    return daemon


def effective_pricing(config: Config) -> Pricing:
    """The pricing ``config`` asks for (raises DaemonError with the one-line reason)."""
    from profiler.cost.pricing import PricingError, resolve_pricing

    try:
        return resolve_pricing(config.cost, config.catalog, where=config.source)
    except PricingError as e:
        raise DaemonError(str(e)) from e


def run_foreground(config: Config) -> None:
    """``profiler daemon``: run until SIGTERM/SIGINT, then flush and exit. Files the daemon
    creates (ledger, status, lock) are owner-only: umask 077."""
    os.umask(0o077)
    serve(build_daemon(config))


def serve(daemon: Daemon) -> None:
    """Run a built daemon (its lock, ledger, socket and ``/metrics``) until SIGTERM/SIGINT,
    then flush and exit."""
    service = Service(daemon)
    service.start()
    service.install_signals()
    try:
        service.run()
    finally:
        service.shutdown()
