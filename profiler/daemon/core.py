"""The node daemon's core: one per machine, serving every training process on it.

:class:`Daemon` wires the parts and holds the state they share: it applies decoded messages
(admission in :mod:`profiler.ingest.admission`; hello, steps and bye here; processes gone, runs
ended and forgotten in :mod:`profiler.daemon.lifecycle`), applies sensor readings (attribution in
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
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from profiler import __version__
from profiler.accounting.attribution import attribute, attribution_horizon, resolve_steps
from profiler.accounting.cpu import CpuAccount
from profiler.accounting.devices import DeviceState, Readings
from profiler.accounting.energy import FINE_KEEP_S
from profiler.accounting.idle_floor import device_held
from profiler.accounting.runs import ProcessInfo, Run
from profiler.budget.enforcer import STATUS as BUDGET_EXCEEDED
from profiler.budget.enforcer import BudgetEnforcer
from profiler.budget.settings import budget_settings
from profiler.config import Config
from profiler.cost.meter import CostMeter, no_pricing
from profiler.daemon.announce import Announcer, announcement
from profiler.daemon.lifecycle import Lifecycle, close_if_done
from profiler.daemon.persist import Persistence
from profiler.daemon.statelock import StateLock
from profiler.ingest.admission import owner_of, refusal
from profiler.ingest.messages import Bye, Hello, Message, StepBatch
from profiler.ledger.recovery import FlushOutcome
from profiler.ledger.store import Ledger
from profiler.sensors.base import CpuSensor, GpuSample, GpuSensor
from profiler.sensors.procs import ProcessScanner, ProcessTable, ancestor_pids, create_time
from profiler.sensors.rapl import cpu_total_j

if TYPE_CHECKING:
    from profiler.cost.pricing import Pricing

log = logging.getLogger(__name__)


class Daemon:
    """State and logic of the node daemon. ``clock``/``wall`` are injectable for tests;
    ``no_gpu_reason`` is what status and the start log say instead of the GPU sensor's
    description when there is none (why: sampling off, no GPU found)."""

    def __init__(
        self,
        config: Config,
        *,
        gpu_sensor: GpuSensor | None = None,
        no_gpu_reason: str = "",
        cpu_sensor: CpuSensor | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        hostname: str | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        self.config = config
        self.cost_meter = CostMeter(pricing or no_pricing())
        # Budgets that act (profiler.budget): decided on this daemon's priced figures.
        self.budgets = BudgetEnforcer(
            budget_settings(config.budget, config.source),
            priced=lambda: self.cost_meter.pricing.kind != "none",
            currency=lambda: self.cost_meter.pricing.currency, wall=wall,
        )  # fmt: skip
        # Posts run starts and ends to Grafana (profiler.grafana.Annotator) when configured.
        self.annotator: Announcer | None = None
        self.gpu_sensor = gpu_sensor
        self.gpu_source = gpu_sensor.source if gpu_sensor is not None else "none"
        self.no_gpu_reason = no_gpu_reason
        self.cpu_sensor = cpu_sensor
        self.clock = clock
        self.wall = wall
        self.hostname = hostname or socket.gethostname()
        self.lock = StateLock()  # readers (scrapes) get it between the loop's holds
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
        self._scanner = ProcessScanner()  # reads parents once, figures only for the runs' trees
        self._simulated_pids: set[int] = set()  # processes the simulated GPU was told about
        # The ledger, the rollups gathered between flushes, and resuming runs after a restart.
        self.persist = Persistence(
            config, runs=self.runs, devices=self.devices, finished_at=self._finished_at,
            health=self.health, cost_meter=self.cost_meter, clock=clock, wall=wall,
            started_mono=self.started_mono, gpu_source=lambda: self.gpu_source,
        )  # fmt: skip
        # Run ends: processes gone, runs finished, finished runs forgotten.
        self.lifecycle = Lifecycle(
            config, runs=self.runs, devices=self.devices, finished_at=self._finished_at,
            health=self.health, persist=self.persist, clock=clock, on_finish=self._finished,
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
            if not self.lifecycle.make_room():
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
        self.budgets.hello(run, msg)
        if f.get("watched") and msg.proxy and msg.sender is not None:
            self.lifecycle.watchers[msg.pid] = (msg.sender.pid, create_time(msg.sender.pid))
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
        goes on the devices it declared (indexes, or ``MIG-`` instance uuids), else on device
        ``local_rank mod count``."""
        if self.gpu_sensor is None or self.gpu_source != "simulated" or not self.devices:
            return
        count = len(self.devices)
        declared: list[int | str] = [int(d) for d in devices if d.isdigit() and int(d) < count]
        declared += [d for d in devices if d.startswith("MIG-")]
        self.gpu_sensor.attach_process(pid, declared or [local_rank % count])
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
        if msg.status != "finished" and run.bye_status != BUDGET_EXCEEDED:
            run.bye_status = msg.status
        close_if_done(run)
        run.dirty = True

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
        finished steps their energy and end runs whose processes are done. Takes :attr:`lock`
        once per device, once for the steps and once for budgets and ends, handing it to a
        waiting scrape in between (:meth:`StateLock.yield_to_readers`): a scrape waits for one
        piece of a sampling pass at most, not for the whole pass. Each device's series stay
        consistent with its runs' shares of it; a page may show some devices one sample ahead
        of others."""
        if self.gpu_sensor is not None:
            for s in readings.gpu:
                self.lock.yield_to_readers()
                with self.lock:
                    self._gpu_sample(s)
        self.lock.yield_to_readers()
        with self.lock:
            if self.gpu_sensor is not None:
                # a copy: a reader thread back from a hung call may add a key meanwhile
                for key, n in dict(self.gpu_sensor.errors).items():
                    self.health[f"sensor_error:gpu:{key}"] = n
            if self.cpu_sensor is not None and readings.cpu is not None:
                self.cpu.observe(readings.cpu, cpu_total_j(readings.cpu))
                for key, n in dict(self.cpu_sensor.errors).items():
                    self.health[f"sensor_error:cpu:{key}"] = n
            resolve_steps(self.runs, self.devices, self.clock())
        self.lock.yield_to_readers()
        with self.lock:
            self.budgets.check(self.runs, self.persist.ledger, self.clock())
            self.lifecycle.end_runs()
            self.sample_seconds_last = time.perf_counter() - readings.started

    def _gpu_sample(self, s: GpuSample) -> None:
        dev = self.devices.get(s.uuid)
        if dev is None:
            dev = self.devices[s.uuid] = DeviceState(s.uuid, s.index, s.name)
        dev.latest = s
        if s.utilization_ratio is not None:
            dev.utilization.append((s.t_s, s.utilization_ratio))
        held = (  # judged only where the floor is measured: no idle figure, no process
            s.idle_power_w is None
            and not s.processes
            and device_held(
                dev.uuid, dev.index, (m.uuid for m in s.mig_instances), self.runs.values(), s.t_s
            )
        )
        dev.observe_idle_power(s, held)  # the sensor's idle watts, else the measured floor
        dev.activity_source = s.activity_source
        dev.observe_instances(s)
        if s.process_activity is not None:  # read about once a second; None in between
            dev.observe_activity(s.t_s, s.process_activity)
            dev.pids_seen.update(s.process_activity)
        first = dev.curve.first is None
        if not (dev.curve.last is not None and s.t_s <= dev.curve.last.t_s):  # as the curve
            dev.counter.observe(s.t_s, s.energy_j, s.counter_j, s.counter_id)
        if s.energy_j is None:
            return
        dev.curve.append(s.t_s, s.energy_j, s.power_w, s.power_points)  # fast readings too
        if first:
            self.persist.credit_gap(dev, s)
        for pid in (p.pid for p in s.processes):
            dev.pids_seen.add(pid)
        self._attribute(dev, attribution_horizon(dev, s.t_s))
        if dev.attributed_to is not None:  # the fast readings: kept while steps may need them
            dev.curve.thin(dev.attributed_to - FINE_KEEP_S)

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
        """Attribute up to the newest sample (at shutdown). The newest sample's processes are
        shown on the device up to then, though its split already cleared them: they count again,
        so the tail's split knows them (its activity basis does not fall back to equal)."""
        for dev in self.devices.values():
            if dev.curve.last is not None:
                if dev.latest is not None:
                    dev.pids_seen.update(p.pid for p in dev.latest.processes)
                self._attribute(dev, dev.curve.last.t_s)

    def account_cpu(self) -> None:
        """Give runs their share of host CPU energy since the last call, by the CPU time of their
        process trees (:meth:`profiler.accounting.cpu.CpuAccount.account`), read from ``/proc``
        now (:class:`~profiler.sensors.procs.ProcessScanner`: the live runs' trees, and the
        parents of new processes); refreshes the table the GPU processes' ancestry is looked up
        in."""
        roots = [pid for run in self.runs.values() if run.live for pid in run.processes]
        table = self._procs = self._scanner.read(roots)
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        self.cpu.account(
            self.runs, table, busy, rollup_for=self.persist.rollup, cost_meter=self.cost_meter,
            minute_wall=self.wall(),
        )  # fmt: skip

    # ---- run ends (profiler.daemon.lifecycle) ------------------------------------------------

    def _finished(self, run: Run) -> None:
        """``run`` finished: announce its end, and let its processes go (CPU accounting, the
        GPU sensor); the lifecycle then writes it to the ledger."""
        self._announce(run, "end")
        for pid in run.processes:
            self.cpu.forget(pid)
            self._simulated_pids.discard(pid)
            if self.gpu_sensor is not None:
                self.gpu_sensor.detach_process(pid)

    def _announce(self, run: Run, event: str) -> None:
        """A Grafana annotation for a run's start or end (queued; never blocks the loop)."""
        if self.annotator is None:
            return
        self.annotator.annotate(*announcement(run, event, self.wall()))

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
        """The flush before exit (:meth:`profiler.daemon.persist.Persistence.final_flush`),
        budget events not yet in the ledger included."""
        self.budgets.write(self.persist.ledger)
        return self.persist.final_flush(self.budgets.take_pending())

    @property
    def ledger(self) -> Ledger | None:
        """The open ledger (None before :meth:`open_ledger`)."""
        return self.persist.ledger

    # ---- what /metrics and status read ----------------------------------------------------------

    @property
    def cpu_energy_j(self) -> dict[str, tuple[float, str]]:
        """CPU zone -> (its cumulative joules, their source) as last read."""
        return self.cpu.energy_j

    def describe_gpu(self) -> str:
        """The GPU sensor in one line (its ``describe()``), else why there is none."""
        return self.gpu_sensor.describe() if self.gpu_sensor is not None else self.no_gpu_reason

    def describe_cpu(self) -> str:
        """The CPU sensor in one line (its ``describe()``); "" without one."""
        return self.cpu_sensor.describe() if self.cpu_sensor is not None else ""

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
            "gpu": self.describe_gpu(),
            "cpu": self.describe_cpu(),
            "started_at": self.started_at,
            "sample_interval_s": self.config.sample_interval_s,
            "pricing": self.cost_meter.pricing.profile,
            "currency": self.cost_meter.pricing.currency,
        }
