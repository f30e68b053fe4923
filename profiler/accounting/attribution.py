"""Energy attribution: each device interval's energy split among the runs holding the device,
step energy, and the waste reason of a share. Plain arithmetic over explicit state (runs,
devices, the minute rollups as a callable): no I/O, so it is tested with numbers alone. A
process's lineage (``ancestors``) is given by the caller, which reads ``/proc``.

Times are monotonic seconds unless named ``_wall``/``unix``; energy in joules; money in the
pricing's currency (through :class:`~profiler.cost.meter.CostMeter`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from profiler.accounting.devices import DeviceState, Sharing
from profiler.accounting.energy import CounterMark, Holder, split_interval
from profiler.accounting.rollups import RollupFor, add_priced, minute
from profiler.accounting.runs import Run

if TYPE_CHECKING:
    from profiler.cost.meter import CostMeter

STALE_PENDING_S = 30.0
ATTRIBUTION_LAG_S = 0.5  # more than the hooks' flush interval (0.25 s)
IDLE_UTILIZATION = 0.05
"""A device interval at most this busy (utilization ratio) in which the run ended no step is
idle waste (:func:`waste_reason`)."""


Ancestors = Callable[[int], Sequence[int]]
"""pid -> its living ancestors, parent first (empty when unknown)."""


def attribute(
    dev: DeviceState,
    upto: float,
    *,
    runs: dict[str, Run],
    cost_meter: CostMeter,
    rollup_for: RollupFor,
    idle: dict[tuple[str, int], float],
    wall_at: Callable[[float], float],
    ancestors: Ancestors,
) -> None:
    """Split the device's energy from where the last split stopped up to ``upto`` among the
    runs holding it. Runs ``ATTRIBUTION_LAG_S`` behind the newest sample, so the hooks' step
    and ``bye`` messages for that span have arrived and runs end where their last event is.
    Adds to the runs' totals, their minute rollups (``rollup_for``) and the device's idle energy
    per minute (``idle``: (uuid, minute) -> joules); ``wall_at`` turns a monotonic time into
    unix seconds."""
    first = dev.curve.first
    if first is None:
        return
    start = dev.attributed_to if dev.attributed_to is not None else first.t_s
    upto = min(upto, dev.curve.last.t_s)
    if upto <= start:
        return
    share = split_interval(dev.curve, start, upto, holders(dev, start, runs, ancestors))
    dev.attributed_to = upto
    dev.pids_seen.clear()
    minute_wall = wall_at(upto)
    power = dev.curve.power_peak_w(start, upto)
    utilization = dev.utilization_between(start, upto)
    for run_id, joules in share.energy_j.items():
        run = runs[run_id]
        seconds = share.seconds[run_id]
        run.gpu_energy_j[dev.uuid] = run.gpu_energy_j.get(dev.uuid, 0.0) + joules
        run.gpu_seconds[dev.uuid] = run.gpu_seconds.get(dev.uuid, 0.0) + seconds
        if power is not None:
            run.gpu_power_peak_w = max(run.gpu_power_peak_w or 0.0, power)
        priced = cost_meter.gpu_interval(
            run.cost, dev.uuid, seconds, joules, upto - start, upto,
            waste_reason(run, start, utilization),
        )  # fmt: skip
        rollup = rollup_for(run_id, minute_wall)
        rollup.gpu_energy_j += joules
        rollup.gpu_seconds += seconds
        add_priced(rollup, priced)
        run.dirty = True
    dev.idle_j += share.idle_j
    key = (dev.uuid, minute(minute_wall))
    idle[key] = idle.get(key, 0.0) + share.idle_j


def counter_marks(devices: dict[str, DeviceState], runs: dict[str, Run]) -> dict[str, CounterMark]:
    """Per device uuid: its raw counter where its energy was last split, and the runs that
    held it there; stored with each flush of those runs (``meta.gpu_counters``) so that a
    restarted daemon can measure the gap (``credit_gap`` in :mod:`profiler.daemon.persist`).
    Devices whose counter cannot be read there (no counter, a reset since) get none."""
    marks = {}
    for dev in devices.values():
        upto = dev.attributed_to
        if upto is None:
            continue
        reading = dev.counter.counter_at(dev.curve, upto)
        if reading is None:
            continue
        holders = tuple(sorted(
            run.id for run in runs.values()
            if dev.uuid in run.device_since and run.device_since[dev.uuid] < upto
            and (run.end_mono is None or run.end_mono > upto)
        ))  # fmt: skip
        if holders:
            marks[dev.uuid] = CounterMark(upto, reading[0], reading[1], holders)
    return marks


def holders(
    dev: DeviceState, t0: float, runs: dict[str, Run], ancestors: Ancestors
) -> list[Holder]:
    """Runs holding the device: NVML listed one of their processes, or a descendant of one
    (the CUDA process under ``profiler run``'s child, a DataLoader worker), since the last
    split, or a hook declared it. A run holds a device from the later of its start and the
    span in which it was first seen there, to its end."""
    on_device = dev.pids_seen
    nearest: set[str] | None = None  # runs owning the nearest ancestor of a pid on it
    out = []
    for run in runs.values():
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
                    nearest = nearest_runs(on_device, runs, ancestors)
                seen = run.id in nearest
            if not seen or not run.live:
                continue
            since = max(run.start_mono, t0)
            run.device_since[dev.uuid] = since
        out.append(Holder(run.id, since, run.end_mono))
    return out


def nearest_runs(pids: set[int], runs: dict[str, Run], ancestors: Ancestors) -> set[str]:
    """The live runs that own, for some pid in ``pids``, the nearest process of its lineage
    (the pid itself, else its parent, and so on, as ``ancestors`` gives them): a GPU
    process belongs to the innermost run around it, never to every run above it."""
    owner = {
        pid: run.id
        for run in runs.values()
        if run.live
        for pid, p in run.processes.items()
        if not p.gone
    }
    out = set()
    for pid in pids:
        for candidate in (pid, *ancestors(pid)):
            if candidate in owner:
                out.add(owner[candidate])
                break
    return out


def resolve_steps(runs: dict[str, Run], devices: dict[str, DeviceState], now: float) -> None:
    """Give each finished step its energy once every device curve reaches its end (a device
    several runs hold gives each its share); a step with no device to measure it is dropped
    after :data:`STALE_PENDING_S`. ``now``: monotonic seconds."""
    horizon = min((d.curve.last.t_s for d in devices.values() if d.curve.last), default=None)
    shares: dict[str, Sharing] = {}  # per device, built when first needed in this pass
    for run in runs.values():
        if not run.pending:
            continue
        held = [devices[u] for u in run.device_since if u in devices]
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
                if dev.uuid not in shares:
                    shares[dev.uuid] = sharing(dev, runs)
                joules += dev.curve.energy_between(p.start_mono, p.end_mono) / shares[
                    dev.uuid
                ].holders_at(mid)
            run.step_joules.observe(joules)
            run.step_energy_sum_j += joules
            run.steps_with_energy += 1
        run.pending = keep


def sharing(dev: DeviceState, runs: dict[str, Run]) -> Sharing:
    """Which runs hold ``dev`` when: every run that has held it, with its end."""
    spans = [
        (run.device_since[dev.uuid], run.end_mono)
        for run in runs.values()
        if dev.uuid in run.device_since
    ]
    # a run that ended before it was first seen on the device never held it
    return Sharing([(since, end) for since, end in spans if end is None or end >= since])


def waste_reason(run: Run, start_mono: float, utilization: float | None) -> str | None:
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
