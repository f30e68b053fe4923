"""Energy attribution: each device interval's energy split among the runs holding the device,
step energy, and the waste reason of a share. Plain arithmetic over explicit state (runs,
devices, the minute rollups as a callable): no I/O, so it is tested with numbers alone. A
process's lineage (``ancestors``) is given by the caller, which reads ``/proc``.

A shared device (:func:`split_shared`): each piece of an interval (cut where a run begins or
ends holding the device, or an activity reading begins or ends) has energy ``E`` over ``dt``
seconds. Its idle part is ``min(P_idle * dt, E)`` (``P_idle``: the idle power the sensor gives,
the model's figure or a measured floor; unknown: no idle part, all of ``E`` is active), shared
equally by the runs holding the device (they reserved it). Its active part ``E - idle`` goes to
the holders in proportion to their activity ``a_r`` (the summed mean SM utilization of the
run's processes on the device in that piece): ``(E - idle) * a_r / sum(a)``. That is the piece's
``"activity"`` basis. Where activity is unknown (no reading covers the piece, or a holder none
of whose processes the driver shows, as a device only a hook declared) the active part is shared
equally too: basis ``"equal"`` (today's split). Where every holder's measured activity is 0 the
active part (what the device drew above idle with none of them active) is shared equally as
well, but the basis stays ``"activity"``: the split follows what was measured, and a run's basis
says only whether its share was measured (so a busy run that pauses is not relabelled). A piece
one run holds alone gives it all of ``E`` either way. A piece no run holds is the device's
unattributed (idle) energy. Device-seconds are always shared equally. The runs' shares and the
unattributed energy add up to the curve's energy exactly.

A GPU in MIG mode (:mod:`profiler.accounting.mig`): a run holds the MIG instances its processes
run in (NVML's ``gpuInstanceId``, or a ``MIG-`` device its hook declared), not the whole GPU.
Its device-seconds are the time x its instance's slices / the GPU's (7), shared equally only
among the runs on that instance, and keyed by the instance's uuid; the idle part goes to each
held instance by its slices (the share of instances no run holds stays the GPU's unattributed
idle energy); the active part goes by activity across the whole GPU as above. Without
per-process activity (real drivers may not give it in MIG mode) the active part goes by
instance size: basis ``"slices"``. A piece where a holder's instance is unknown is split as
without MIG. The runs' shares plus the unattributed energy still equal the parent's counter.

Times are monotonic seconds unless named ``_wall``/``unix``; energy in joules; money in the
pricing's currency (through :class:`~profiler.cost.meter.CostMeter`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from profiler.accounting.devices import DeviceState, SharePiece, Sharing
from profiler.accounting.energy import (
    CounterMark,
    EnergyCurve,
    Holder,
    holder_pieces,
    step_bound_j,
)
from profiler.accounting.mig import MigHold, MigShare, split_mig
from profiler.accounting.rollups import RollupFor, add_priced, minute
from profiler.accounting.runs import Run
from profiler.sensors.base import MigInstance

if TYPE_CHECKING:
    from profiler.cost.meter import CostMeter

STALE_PENDING_S = 30.0
ATTRIBUTION_LAG_S = 0.5  # more than the hooks' flush interval (0.25 s)
ACTIVITY_WAIT_S = 2.5
"""On a device with per-process activity, attribution waits for the activity reading that
covers an interval (readings come about once a second), but stays at most this many seconds
behind the newest sample; past that the newest reading stands in (:func:`attribution_horizon`)."""
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
    held = holders(dev, start, runs, ancestors)
    held_runs = [runs[h.run] for h in held]
    activity = run_activity(dev, start, held_runs, ancestors)
    cuts = dev.activity_cuts(start, upto)
    instances = run_instances(dev, held_runs, ancestors)
    if dev.mig_instances:  # each run holds its instances (profiler.accounting.mig)
        share = split_mig(
            dev.curve, start, upto, held, instances, parent_uuid=dev.uuid,
            idle_power_w=dev.idle_power_w, activity=activity, cuts=cuts, pieces=dev.share_pieces,
            split_whole=lambda lo, hi, active: keyed(split_shared(
                dev.curve, lo, hi, active, idle_power_w=dev.idle_power_w, activity=activity,
                pieces=dev.share_pieces,
            ), dev.uuid),
        )  # fmt: skip
    else:
        share = keyed(split_shared(
            dev.curve, start, upto, held, idle_power_w=dev.idle_power_w, activity=activity,
            cuts=cuts, pieces=dev.share_pieces,
        ), dev.uuid)  # fmt: skip
    dev.attributed_to = upto
    dev.pids_seen.clear()
    minute_wall = wall_at(upto)
    power = dev.curve.power_peak_w(start, upto)
    utilization = dev.utilization_between(start, upto)
    for run_id, by_key in share.energy_j.items():
        run = runs[run_id]
        rollup = rollup_for(run_id, minute_wall)
        for inst in instances.get(run_id, ()):
            if inst.uuid in by_key:
                run.mig_instances[inst.uuid] = MigHold.of(dev.index, dev.uuid, inst)
        reason = waste_reason(run, start, utilization)
        for key, joules in by_key.items():
            seconds = share.seconds[run_id][key]
            run.gpu_energy_j[key] = run.gpu_energy_j.get(key, 0.0) + joules
            run.gpu_seconds[key] = run.gpu_seconds.get(key, 0.0) + seconds
            priced = cost_meter.gpu_interval(
                run.cost, key, seconds, joules, upto - start, upto, reason
            )
            rollup.gpu_energy_j += joules
            rollup.gpu_seconds += seconds
            add_priced(rollup, priced)
        if run_id in share.idle_share_j:
            run.gpu_idle_energy_j = (run.gpu_idle_energy_j or 0.0) + share.idle_share_j[run_id]
        for basis, basis_s in share.basis_s[run_id].items():
            run.attribution_s[basis] = run.attribution_s.get(basis, 0.0) + basis_s
        if power is not None:
            run.gpu_power_peak_w = max(run.gpu_power_peak_w or 0.0, power)
        run.dirty = True
    dev.idle_j += share.idle_j
    key = (dev.uuid, minute(minute_wall))
    idle[key] = idle.get(key, 0.0) + share.idle_j


def keyed(share: SharedShare, uuid: str) -> MigShare:
    """A split of a GPU without MIG, its energy and device-seconds keyed by the GPU's ``uuid``."""
    return MigShare(
        energy_j={run: {uuid: j} for run, j in share.energy_j.items()},
        seconds={run: {uuid: s} for run, s in share.seconds.items()},
        idle_share_j=share.idle_share_j, basis_s=share.basis_s, idle_j=share.idle_j,
    )  # fmt: skip


def run_instances(
    dev: DeviceState, held: Sequence[Run], ancestors: Ancestors
) -> dict[str, tuple[MigInstance, ...]]:
    """On a GPU in MIG mode, per run in ``held``: the instances it holds, those its processes
    (or their nearest run-owned ancestor) were listed in by NVML, and those a hook declared
    (``MIG-`` uuids in a process's devices). Runs with none known are absent; ``{}`` on a GPU
    without MIG."""
    if not dev.mig_instances:
        return {}
    by_id = {i.gpu_instance_id: i for i in dev.mig_instances}
    by_uuid = {i.uuid: i for i in dev.mig_instances}
    own = {pid: run.id for run in held for pid in run.processes}
    found: dict[str, dict[str, MigInstance]] = {}
    for pid, run_id in owners(dev.instance_of_pid, own, ancestors).items():
        inst = by_id.get(dev.instance_of_pid[pid])
        if inst is not None:
            found.setdefault(run_id, {})[inst.uuid] = inst
    for run in held:
        for p in run.processes.values():
            for d in p.devices:
                if d in by_uuid:
                    found.setdefault(run.id, {})[d] = by_uuid[d]
    return {run: tuple(sorted(i.values(), key=lambda x: x.uuid)) for run, i in found.items()}


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
                or any(m.uuid in p.devices for m in dev.mig_instances)
                for pid, p in run.processes.items()
            )  # fmt: skip
            if not seen and on_device and run.live:
                if nearest is None:
                    nearest = nearest_runs(on_device, runs, ancestors)
                seen = run.id in nearest
            # a run that ended after t0 is first seen here too: on a device with per-process
            # activity the split lags up to ACTIVITY_WAIT_S, so a short run may end before the
            # first split covering its life (it holds the device up to its end, never past it)
            if not seen or (not run.live and run.end_mono is None):
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
    return set(owners(pids, owner, ancestors).values())


def owners(pids: Iterable[int], owner: dict[int, str], ancestors: Ancestors) -> dict[int, str]:
    """Per pid in ``pids``: the run (``owner``: pid -> run id, the runs' own processes) owning
    the nearest process of its lineage (the pid itself, else its parent, and so on); pids no run
    owns are left out."""
    out = {}
    for pid in pids:
        if pid in owner:  # its own (the lineage is looked up only when needed)
            out[pid] = owner[pid]
            continue
        for candidate in ancestors(pid):
            if candidate in owner:
                out[pid] = owner[candidate]
                break
    return out


def attribution_horizon(dev: DeviceState, t_s: float) -> float:
    """How far (monotonic seconds) a device's energy may be split after a sample at ``t_s``:
    :data:`ATTRIBUTION_LAG_S` behind it, and on a device with per-process activity no further
    than its newest activity reading covers (before its first reading: not at all), unless that
    lags more than :data:`ACTIVITY_WAIT_S` (then the newest reading stands in for the rest, or
    the equal split before any: a bounded lag, never a drift)."""
    upto = t_s - ATTRIBUTION_LAG_S
    if dev.activity_source is None:
        return upto
    covered = dev.activity_to
    if covered is None:
        return t_s - ACTIVITY_WAIT_S
    return max(min(upto, covered), t_s - ACTIVITY_WAIT_S)


RunActivity = Callable[[float, float], dict[str, float] | None]
"""(t0, t1) -> per run id, the summed activity (0..1 per process) of its processes on the device
over that span; None when unknown. Runs the driver does not show on the device are absent."""


def run_activity(
    dev: DeviceState, t0: float, held: Sequence[Run], ancestors: Ancestors
) -> RunActivity:
    """The activity of the runs in ``held`` on ``dev`` from ``t0`` on, from its activity
    readings: a process the driver shows on the device (its process list since the last split,
    or an activity reading) counts for the run owning it or its nearest ancestor (a run that
    ended since ``t0`` still owns its processes here). A run none of whose processes is shown
    is absent (its activity unknown), unless the driver showed it in the previous split: then
    its processes have left the device (exited, before the run's ``bye``) and its activity is 0.
    Remembers the runs shown (``dev.shown_runs``) for the next split."""
    shown = set(dev.pids_seen)
    for r in reversed(dev.activity):
        shown.update(r.by_pid)
        if r.t1_s <= t0:
            break
    own = {pid: run.id for run in held for pid in run.processes}
    of_pid = owners(shown, own, ancestors) if held and shown else {}
    known = set(of_pid.values()) | (dev.shown_runs & {run.id for run in held})
    dev.shown_runs = known

    def activity(lo: float, hi: float) -> dict[str, float] | None:
        by_pid = dev.activity_between(lo, hi)
        if by_pid is None:
            return None
        out = dict.fromkeys(known, 0.0)
        for pid, a in by_pid.items():
            if pid in of_pid:
                out[of_pid[pid]] += max(0.0, a)
        return out

    return activity


@dataclass
class SharedShare:
    """What one span of one device gave each run (see the module docstring): ``energy_j``
    (joules, idle part included) and device-``seconds`` per run id, ``idle_share_j`` the part
    of each run's joules that is its equal share of the idle power (absent when the idle power
    is unknown), ``basis_s`` per run the device-seconds split on each basis (``"activity"``,
    ``"equal"``), and ``idle_j`` the energy no run held."""

    energy_j: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    idle_share_j: dict[str, float] = field(default_factory=dict)
    basis_s: dict[str, dict[str, float]] = field(default_factory=dict)
    idle_j: float = 0.0


def split_shared(
    curve: EnergyCurve,
    t0_s: float,
    t1_s: float,
    holders: Iterable[Holder],
    *,
    idle_power_w: float | None = None,
    activity: RunActivity | None = None,
    cuts: Iterable[float] = (),
    pieces: deque[SharePiece] | None = None,
) -> SharedShare:
    """Split the energy a device used in ``[t0_s, t1_s]`` among the runs holding it: the idle
    part (``idle_power_w`` watts x the piece's seconds, at most its energy) equally, the active
    part by the holders' ``activity`` where it is known (see the module docstring). The span is
    cut at every holder's start and end and at ``cuts`` (where activity readings change).
    Without idle power or activity it is the equal split of
    :func:`profiler.accounting.energy.split_interval`. Each piece several runs hold is added to
    ``pieces`` (when given) with each run's fraction of its energy, for the steps in it."""
    out = SharedShare()
    for lo, hi, held in holder_pieces(holders, t0_s, t1_s, cuts):
        piece_j = curve.energy_between(lo, hi)
        active = [h.run for h in held]
        if not active:
            out.idle_j += piece_j
            continue
        n = len(active)
        idle_j = None if idle_power_w is None else min(max(idle_power_w, 0.0) * (hi - lo), piece_j)
        busy_j = piece_j - (idle_j or 0.0)
        known = activity(lo, hi) if activity is not None else None
        if known is not None and all(run in known for run in active):
            weights, basis = activity_weights(active, known), "activity"
        else:
            weights, basis = None, "equal"
        fraction = {}
        for run in active:
            w = 1.0 / n if weights is None else weights[run]
            run_j = busy_j * w + (idle_j or 0.0) / n
            fraction[run] = run_j / piece_j if piece_j > 0 else 1.0 / n
            out.energy_j[run] = out.energy_j.get(run, 0.0) + run_j
            out.seconds[run] = out.seconds.get(run, 0.0) + (hi - lo) / n
            if idle_j is not None:
                out.idle_share_j[run] = out.idle_share_j.get(run, 0.0) + idle_j / n
            by_basis = out.basis_s.setdefault(run, {})
            by_basis[basis] = by_basis.get(basis, 0.0) + (hi - lo) / n
        if pieces is not None and n > 1:
            pieces.append(SharePiece(lo, hi, fraction))
    return out


def activity_weights(active: Sequence[str], known: dict[str, float]) -> dict[str, float] | None:
    """Each holder's fraction of the active energy by its activity in ``known`` (they add up to
    1), or None for the equal split: every holder at 0."""
    total = sum(max(0.0, known[run]) for run in active)
    if total <= 0:
        return None
    return {run: max(0.0, known[run]) / total for run in active}


def resolve_steps(runs: dict[str, Run], devices: dict[str, DeviceState], now: float) -> None:
    """Give each finished step its energy once every device curve reaches its end; a step with
    no device to measure it is dropped after :data:`STALE_PENDING_S`. ``now``: monotonic
    seconds.

    On a device several runs hold during the step, the step gets its run's share: it waits
    until the device's energy is split past its end (so on a device with per-process activity,
    for the activity reading that covers it: at most :data:`ACTIVITY_WAIT_S` behind the newest
    sample), then takes, of each piece of that split it overlaps, the run's fraction of the
    piece's energy (:func:`split_shared`, :func:`profiler.accounting.mig.split_mig`: the same
    basis as the run's energy; on a MIG GPU a run alone gets its instance's share too). Where
    the split kept no pieces for the step (pieces older than the device keeps) it gets the
    step's energy divided by the number of holders at its middle.

    Each step's figure comes with its bound (:func:`profiler.accounting.energy.step_bound_j`,
    summed over devices; ``run.step_bound_joules``), and steps are gathered into windows of
    at least 10 s whose joules per step are stated with their own, much smaller, bound
    (:mod:`profiler.accounting.step_window`, ``run.step_window``)."""
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
            parts: list[float] = []
            bounds: list[float | None] = []  # per device: how far its part may be off
            by_device: dict[str, float] = {}  # per device uuid: its part
            wholes: dict[str, float] = {}  # per device uuid: the device's energy in the step
            for dev in held:
                if dev.uuid not in shares:
                    shares[dev.uuid] = sharing(dev, runs)
                n = shares[dev.uuid].holders_at(mid)
                whole = dev.curve.energy_between(p.start_mono, p.end_mono)
                wholes[dev.uuid] = whole
                if n <= 1 and not dev.mig_instances:  # alone on a whole GPU: all of it
                    parts.append(whole)
                    bounds.append(step_bound_j(dev.curve, p.start_mono, p.end_mono, whole))
                    by_device[dev.uuid] = whole
                    continue
                if dev.attributed_to is None or dev.attributed_to < p.end_mono:
                    break  # its share is known once the device's split passes its end
                share = step_share(dev, run.id, p.start_mono, p.end_mono)
                parts.append(whole / n if share is None else share)
                bounds.append(step_bound_j(dev.curve, p.start_mono, p.end_mono, parts[-1]))
                by_device[dev.uuid] = parts[-1]
            if len(parts) < len(held):
                keep.append(p)
                continue
            joules = sum(parts)
            run.step_joules.observe(joules)
            if all(b is not None for b in bounds):  # unknown for one device: none stated
                run.step_bound_joules.observe(sum(b for b in bounds if b is not None))
            run.step_window_open.add(p.start_mono, p.end_mono, by_device, wholes)
            if run.step_window_open.full:  # its steps span STEP_WINDOW_S: state the window
                curves = {dev.uuid: dev.curve for dev in held}
                window = run.step_window_open.close(curves, run.batch_size)
                run.step_window = window or run.step_window  # unknown bound: keep the last
            run.step_energy_sum_j += joules
            run.steps_with_energy += 1
        run.pending = keep


def step_share(dev: DeviceState, run_id: str, t0_s: float, t1_s: float) -> float | None:
    """Run ``run_id``'s joules of ``dev`` in ``[t0_s, t1_s]`` from the pieces of the device's
    split (``dev.share_pieces``): the curve's energy in each overlap x the run's fraction of
    that piece (all of it where the split gave no shared piece: the run held it alone); None
    when the kept pieces do not reach back to ``t0_s``."""
    pieces = dev.share_pieces
    if not pieces or pieces[0].lo_s > t0_s:
        return None
    overlaps = []
    for piece in reversed(pieces):  # newest first: a step is recent
        if piece.hi_s <= t0_s:
            break
        lo, hi = max(piece.lo_s, t0_s), min(piece.hi_s, t1_s)
        if hi > lo:
            overlaps.append((lo, hi, piece.fraction.get(run_id, 0.0)))
    joules = sum(dev.curve.energy_between(lo, hi) * f for lo, hi, f in overlaps)
    return joules + alone_j(dev, sorted((lo, hi) for lo, hi, _f in overlaps), t0_s, t1_s)


def alone_j(dev: DeviceState, edges: list[tuple[float, float]], t0_s: float, t1_s: float) -> float:
    """The curve's energy in the parts of ``[t0_s, t1_s]`` outside ``edges`` (sorted spans)."""
    joules, at = 0.0, t0_s
    for lo, hi in edges:
        if lo > at:
            joules += dev.curve.energy_between(at, lo)
        at = max(at, hi)
    if at < t1_s:
        joules += dev.curve.energy_between(at, t1_s)
    return joules


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
