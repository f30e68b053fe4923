"""Run <-> ledger row, in one place: :func:`run_to_row` writes every field of a :class:`Run`
that the ledger keeps (columns, and ``meta`` for what a restarted daemon continues from),
:func:`run_from_row` reads them back, :func:`rows_of` gives the run rows a recovery file holds.
Pure functions: no I/O.

Energy in joules, time in seconds (``_mono``: CLOCK_MONOTONIC; ``_at``: unix), money in the
run's currency.
"""

from __future__ import annotations

from typing import Any

from profiler.accounting.energy import CounterMark
from profiler.accounting.mig import MigHold
from profiler.accounting.runs import Run
from profiler.cost.records import RunCost
from profiler.ledger.recovery import Held


def run_to_row(
    run: Run,
    *,
    marks: dict[str, CounterMark],
    gpu_source: str,
    energy_source: str,
    flushed_mono: float,
) -> dict[str, Any]:
    """The ledger row of ``run`` (:meth:`Ledger.write`'s run rows): its columns, and under
    ``meta`` what a restarted daemon needs to continue it. ``marks``: the devices' counter
    marks (:func:`profiler.accounting.attribution.counter_marks`; the run's own are kept);
    ``gpu_source``/``energy_source``: the daemon's sensor and the devices' energy sources
    (comma-separated); ``flushed_mono``: now, monotonic seconds. Steps and samples that no hook
    timed are NULL, never 0. :func:`run_from_row` reads it back."""
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
    row["gpu_source"] = gpu_source
    row["simulated"] = gpu_source == "simulated"
    row["energy_source"] = energy_source
    row["currency"] = run.cost.currency
    row["cost_gpu_time"] = run.cost.gpu_time_cost
    row["cost_energy"] = run.cost.energy_cost
    row["co2_g"] = run.cost.co2_g
    row["waste_cost"] = run.cost.waste_total
    row["meta"] = {
        "cost": run.cost.to_meta(),
        "nonfinite_since_mono": run.nonfinite_since_mono,
        "pids": {str(p.pid): p.create_time for p in run.processes.values()},
        "ranks": {str(p.pid): [p.rank, p.local_rank, p.world_size] for p in run.processes.values()},
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
        "gpu_idle_energy_j": run.gpu_idle_energy_j,
        "attribution_s": dict(run.attribution_s),
        "mig_instances": [m.to_meta() for m in run.mig_instances.values()],
        "unrecorded_steps": run.unrecorded_steps,
        "process_counts": {
            **{str(pid): list(c) for pid, c in run.process_counts.items()},
            **{str(p.pid): [p.steps, p.samples] for p in run.processes.values()},
        },
        "flushed_mono": flushed_mono,
        "gpu_counters": {
            uuid: mark.to_meta() for uuid, mark in marks.items() if run.id in mark.holders
        },
        "run_meta": dict(run.meta),
        "budgets": [dict(b) for b in run.budgets],
        "cpu_seconds": run.cpu_seconds,
        # processes that said bye or are gone (`profiler run` waits on its child's)
        "done_pids": sorted(p.pid for p in run.processes.values() if p.said_bye or p.gone),
        "step_time_max_s": run.step_time_max_s,
        "durations": run.reservoir[:512],
        # the latest window of steps: joules per step and its bound (accounting.step_window)
        "step_window": run.step_window.to_meta() if run.step_window else None,
    }
    return row


def run_from_row(row: dict[str, Any]) -> Run:
    """The :class:`Run` a ledger row (as :meth:`Ledger.runs` gives it, with ``devices``)
    stores: the inverse of :func:`run_to_row` for everything a daemon continues from."""
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
    run.gpu_idle_energy_j = meta.get("gpu_idle_energy_j")
    run.attribution_s = dict(meta.get("attribution_s", {}))
    run.mig_instances = {
        m["uuid"]: MigHold.from_meta(m) for m in meta.get("mig_instances", []) if "uuid" in m
    }
    run.unrecorded_steps = meta.get("unrecorded_steps", 0)
    run.process_counts = {
        int(pid): (int(c[0]), int(c[1])) for pid, c in meta.get("process_counts", {}).items()
    }
    run.meta = dict(meta.get("run_meta", {}))
    run.budgets = [b for b in meta.get("budgets", []) if isinstance(b, dict)]
    run.cpu_seconds = meta.get("cpu_seconds", 0.0)
    run.dirty = False
    return run


def rows_of(held: Held) -> dict[str, dict[str, Any]]:
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
