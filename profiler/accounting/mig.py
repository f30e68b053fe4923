"""A GPU in MIG mode: each run holds the MIG instances its processes run in, not the whole GPU.
Plain arithmetic over explicit state, no I/O (the split of a shared GPU without MIG is
:func:`profiler.accounting.attribution.split_shared`; this module is its MIG counterpart).

For each piece of an interval (cut where a run begins or ends holding the GPU, or an activity
reading begins or ends) with energy ``E`` (the parent's counter: NVML has no energy per instance)
over ``dt`` seconds, on a GPU of ``S`` slices (7) whose held instances ``I`` hold ``s_I`` slices
and are held by ``n_I`` runs:

- **device-seconds**: ``dt x s_I / S / n_I`` per run per instance it holds (a 3g.40gb instance
  held alone for an hour is 3/7 of a GPU-hour), keyed by the instance's ``MIG-`` uuid. The cost
  meter prices these as GPU-seconds, so cost follows the instance size.
- **idle part** ``idle = min(P_idle x dt, E)`` (``P_idle`` the parent's idle power; unknown:
  no idle part): each held instance gets ``idle x s_I / S``, shared equally by its runs; the
  share of the instances (and slices) no run holds stays the GPU's unattributed idle energy.
- **active part** ``E - idle``: by the runs' measured activity ``a_r`` (their processes' mean
  SM utilization, read on the parent, which reports every process whatever its instance):
  ``(E - idle) x a_r / sum(a)``; basis ``"activity"``. Where every run's activity is 0 it is
  shared by instance size instead (``s_I / sum of held s_I``, equally among each instance's
  runs), the basis staying ``"activity"`` (as on a GPU without MIG). Where activity is unknown
  (real drivers may answer NotSupported for per-process utilization in MIG mode) it is shared
  by instance size too, basis ``"slices"``.
- A piece in which some run's instance is unknown (its processes not listed with an instance,
  no ``MIG-`` device declared) is split as on a GPU without MIG (keyed by the parent's uuid).

So the runs' shares plus the unattributed energy equal the parent's counter exactly. Each piece
split by instance is kept (``pieces``) with each run's fraction of its energy, so that a step
inside it gets the same share as its run did (as :func:`split_shared` keeps its pieces).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from profiler.accounting.devices import SharePiece
from profiler.accounting.energy import EnergyCurve, Holder, holder_pieces
from profiler.sensors.base import MigInstance

RunActivity = Callable[[float, float], dict[str, float] | None]


@dataclass(frozen=True)
class MigHold:
    """A MIG instance a run held, as ``/metrics`` and ``profiler runs --json`` show it: the
    parent's index (``gpu``) and uuid, the instance's ``uuid``, ``mig_profile``,
    ``gpu_instance_id``, and its ``slices`` of the parent's ``gpu_slices``."""

    gpu: int
    parent_uuid: str
    uuid: str
    mig_profile: str
    gpu_instance_id: int
    slices: int
    gpu_slices: int

    def to_meta(self) -> dict[str, int | str]:
        return {
            "gpu": self.gpu, "parent_uuid": self.parent_uuid, "uuid": self.uuid,
            "mig_profile": self.mig_profile, "gpu_instance_id": self.gpu_instance_id,
            "slices": self.slices, "gpu_slices": self.gpu_slices,
        }  # fmt: skip

    @classmethod
    def from_meta(cls, d: dict[str, int | str]) -> MigHold:
        return cls(
            int(d["gpu"]), str(d["parent_uuid"]), str(d["uuid"]), str(d["mig_profile"]),
            int(d["gpu_instance_id"]), int(d["slices"]), int(d["gpu_slices"]),
        )  # fmt: skip

    @classmethod
    def of(cls, gpu: int, parent_uuid: str, inst: MigInstance) -> MigHold:
        return cls(gpu, parent_uuid, inst.uuid, inst.profile, inst.gpu_instance_id,
                   inst.slices, inst.gpu_slices)  # fmt: skip


@dataclass
class MigShare:
    """What one span of a MIG GPU gave each run: per run, per key (the instance's uuid, or the
    parent's for a piece split as without MIG), its joules (``energy_j``) and device-seconds
    (``seconds``); per run its idle share (``idle_share_j``, absent when idle power is unknown)
    and its device-seconds per basis (``basis_s``); ``idle_j`` the energy no run held."""

    energy_j: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    idle_share_j: dict[str, float] = field(default_factory=dict)
    basis_s: dict[str, dict[str, float]] = field(default_factory=dict)
    idle_j: float = 0.0

    def add(self, run: str, key: str, joules: float, seconds: float, basis: str) -> None:
        energy = self.energy_j.setdefault(run, {})
        energy[key] = energy.get(key, 0.0) + joules
        secs = self.seconds.setdefault(run, {})
        secs[key] = secs.get(key, 0.0) + seconds
        by_basis = self.basis_s.setdefault(run, {})
        by_basis[basis] = by_basis.get(basis, 0.0) + seconds


def split_mig(
    curve: EnergyCurve,
    t0_s: float,
    t1_s: float,
    holders: Iterable[Holder],
    instances: dict[str, tuple[MigInstance, ...]],
    *,
    parent_uuid: str,
    idle_power_w: float | None = None,
    activity: RunActivity | None = None,
    cuts: Iterable[float] = (),
    split_whole: Callable[[float, float, list[Holder]], MigShare] | None = None,
    pieces: deque[SharePiece] | None = None,
) -> MigShare:
    """Split a MIG GPU's energy in ``[t0_s, t1_s]`` among the runs holding its instances
    (``instances``: run id -> the instances it holds; see the module docstring). A piece where
    a holder's instance is unknown is given to ``split_whole`` (the split without MIG, over that
    piece and its holders), else split equally among its holders keyed by ``parent_uuid``.
    Each piece split by instance is added to ``pieces`` (when given) with each run's fraction
    of its energy, for the steps in it (``split_whole`` keeps its own pieces)."""
    out = MigShare()
    for lo, hi, active in holder_pieces(holders, t0_s, t1_s, cuts):
        piece_j = curve.energy_between(lo, hi)
        if not active:
            out.idle_j += piece_j
            continue
        if any(not instances.get(h.run) for h in active):
            _merge(out, _whole(lo, hi, active, piece_j, parent_uuid, split_whole))
            continue
        runs = [h.run for h in active]
        run_j = _split_piece(out, lo, hi, piece_j, runs, instances, idle_power_w, activity)
        if pieces is not None:
            fraction = {r: j / piece_j if piece_j > 0 else 0.0 for r, j in run_j.items()}
            pieces.append(SharePiece(lo, hi, fraction))
    return out


def _split_piece(
    out: MigShare,
    lo: float,
    hi: float,
    piece_j: float,
    runs: Sequence[str],
    instances: dict[str, tuple[MigInstance, ...]],
    idle_power_w: float | None,
    activity: RunActivity | None,
) -> dict[str, float]:
    """One piece whose every holder's instances are known (see the module docstring); returns
    each run's joules of it."""
    dt = hi - lo
    held: dict[str, tuple[MigInstance, list[str]]] = {}  # instance uuid -> (it, its runs)
    for run in runs:
        for inst in instances[run]:
            held.setdefault(inst.uuid, (inst, []))[1].append(run)
    gpu_slices = next(iter(held.values()))[0].gpu_slices
    held_slices = sum(inst.slices for inst, _ in held.values())
    idle_j = None if idle_power_w is None else min(max(idle_power_w, 0.0) * dt, piece_j)
    busy_j = piece_j - (idle_j or 0.0)
    known = activity(lo, hi) if activity is not None else None
    weights = None
    basis = "slices"
    if known is not None and all(run in known for run in runs):
        basis = "activity"
        total = sum(max(0.0, known[run]) for run in runs)
        if total > 0:
            weights = {run: max(0.0, known[run]) / total for run in runs}
    unheld_idle = 0.0 if idle_j is None else idle_j * (1 - held_slices / gpu_slices)
    out.idle_j += unheld_idle
    run_j: dict[str, float] = {}
    for inst, on_it in held.values():
        n = len(on_it)
        frac = inst.slices / gpu_slices
        for run in on_it:
            run_slices = sum(i.slices for i in instances[run])
            if weights is None:  # by instance size
                active_j = busy_j * inst.slices / held_slices / n
            else:  # the run's activity share, over its instances by their size
                active_j = busy_j * weights[run] * inst.slices / run_slices
            idle_part = 0.0 if idle_j is None else idle_j * frac / n
            out.add(run, inst.uuid, active_j + idle_part, dt * frac / n, basis)
            run_j[run] = run_j.get(run, 0.0) + active_j + idle_part
            if idle_j is not None:
                out.idle_share_j[run] = out.idle_share_j.get(run, 0.0) + idle_part
    return run_j


def _whole(
    lo: float,
    hi: float,
    active: list[Holder],
    piece_j: float,
    parent_uuid: str,
    split_whole: Callable[[float, float, list[Holder]], MigShare] | None,
) -> MigShare:
    """A piece split as without MIG: by ``split_whole``, else equally."""
    if split_whole is not None:
        return split_whole(lo, hi, active)
    share = MigShare()
    for h in active:
        share.add(h.run, parent_uuid, piece_j / len(active), (hi - lo) / len(active), "equal")
    return share


def _merge(out: MigShare, share: MigShare) -> None:
    for run, by_key in share.energy_j.items():
        for key, joules in by_key.items():
            secs = share.seconds[run][key]
            energy = out.energy_j.setdefault(run, {})
            energy[key] = energy.get(key, 0.0) + joules
            seconds = out.seconds.setdefault(run, {})
            seconds[key] = seconds.get(key, 0.0) + secs
    for run, by_basis in share.basis_s.items():
        mine = out.basis_s.setdefault(run, {})
        for basis, secs in by_basis.items():
            mine[basis] = mine.get(basis, 0.0) + secs
    for run, joules in share.idle_share_j.items():
        out.idle_share_j[run] = out.idle_share_j.get(run, 0.0) + joules
    out.idle_j += share.idle_j
