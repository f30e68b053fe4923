"""The public run object: a ledger row as ``profiler runs --json`` (and the demo's summary,
``profiler run``, ``detach`` and ``compare``) show it. Units are in the keys' names (``_s``,
``_j``, ``_kwh``, ``_w``, ``_g``, ``_bytes``); money (``cost``, ``cost_gpu_time``,
``cost_energy``, ``waste_cost``) is in ``currency``; null means unknown, never zero.
"""

from __future__ import annotations

from typing import Any

from profiler.accounting.energy import percentile
from profiler.accounting.runs import attribution_basis
from profiler.config import Config
from profiler.ledger.store import Ledger
from profiler.units import JOULES_PER_KWH


def run_record(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row as the public run object (``profiler runs --json``)."""
    steps = row["steps"]
    ended = row["ended_at"]
    duration = (ended - row["started_at"]) if ended else None
    energy = row["gpu_energy_j"]
    meta = row["meta"]
    timed = meta.get("timed_steps", steps)
    cost_meta = meta.get("cost", {})
    currency = row.get("currency") or None  # absent in a schema-1 ledger
    # Unknown = no source could measure it: with no GPU sensor (``PROFILER_GPU=none``) GPU time,
    # and the money and waste priced from it, are unknown (null); with a sensor, 0 GPU-seconds
    # for a run that held no device is a measured zero.
    gpu_known = row["gpu_source"] != "none"
    priced = currency is not None and gpu_known
    return {
        "id": row["id"],
        "name": row["name"],
        "project": row["project"],
        "user": row["user"],
        "framework": row["framework"],
        "framework_version": row["framework_version"],
        "host": row["host"],
        "status": row["status"],
        "started_at": row["started_at"],
        "ended_at": ended,
        "duration_s": duration,
        "steps": steps,
        "samples": row["samples"],
        "dropped_steps": row["dropped_steps"],
        # steps a hook sent that a daemon killed before its flush did not record (no timing)
        "unrecorded_steps": meta.get("unrecorded_steps", 0),
        # seconds no daemon measured (run began before it, or it restarted): energy missing
        "unmeasured_s": meta.get("unmeasured_s", 0.0),
        # GPU joules of restart gaps, read from the GPU's own energy counter (in gpu_energy_j)
        "gap_gpu_energy_j": meta.get("gap_gpu_energy_j", 0.0),
        "step_time_mean_s": row["step_time_sum_s"] / timed if timed else None,
        "step_time_p50_s": percentile(sorted(meta.get("durations", [])), 0.5),
        "step_time_p95_s": row["step_time_p95_s"],
        # GPU joules per step (and per sample) over the latest window of >= 10 s of steps, and
        # how far that mean may be from the truth; null before the first window closes
        "step_energy_window": meta.get("step_window"),
        "gpu_energy_j": energy,
        "gpu_energy_kwh": energy / JOULES_PER_KWH if energy is not None else None,
        # how gpu_energy_j was split on shared GPUs: "activity" (by each process's measured
        # activity), "equal" (equally among the runs holding the GPU), "mixed"; null: no GPU
        # time. attribution_s: the device-seconds split on each basis.
        "attribution": attribution_basis(meta.get("attribution_s", {})),
        "attribution_s": meta.get("attribution_s") or None,
        # of gpu_energy_j, the run's equal share of its GPUs' idle power (null: idle unknown)
        "gpu_idle_energy_j": meta.get("gpu_idle_energy_j"),
        "gpu_seconds": row["gpu_seconds"] if gpu_known else None,
        # the MIG instances the run held (gpu: the parent's index; slices of gpu_slices): its
        # gpu_seconds there are the time x slices / gpu_slices; [] on GPUs without MIG
        "mig_instances": meta.get("mig_instances", []),
        "gpu_power_mean_w": energy / duration if energy is not None and duration else None,
        "gpu_power_peak_w": row["gpu_power_peak_w"],
        "cpu_energy_j": row["cpu_energy_j"] if row["meta"].get("cpu_energy_source") else None,
        "cpu_energy_source": row["meta"].get("cpu_energy_source") or None,
        "gpu_source": row["gpu_source"],
        "energy_source": row["energy_source"],
        "simulated": bool(row["simulated"]),
        "devices": row["devices"],
        "clock": meta.get("clock"),
        "samples_source": meta.get("samples_source") or None,
        "memory_source": meta.get("memory_source") or None,
        "ranks": _ranks(meta),
        # money is null for runs never priced; CO2 null where no grid intensity was known
        "currency": currency,
        "cost": (row["cost_gpu_time"] + row["cost_energy"]) if priced else None,
        "cost_gpu_time": row["cost_gpu_time"] if priced else None,
        "cost_energy": row["cost_energy"] if currency else None,
        "co2_g": row["co2_g"] if cost_meta.get("co2_known") else None,
        "waste_cost": row["waste_cost"] if priced else None,
        "waste": cost_meta.get("waste", {}) if gpu_known else None,
        "waste_gpu_seconds": cost_meta.get("waste_gpu_seconds", {}) if gpu_known else None,
        "pricing_profiles": cost_meta.get("pricing_profiles", []),
        "last_loss": meta.get("last_loss"),
        # null when the hook never reported a loss (nothing counted NaN steps)
        "nonfinite_loss_steps": meta.get("nonfinite_loss_steps")
        or (None if meta.get("last_loss") is None else 0),
        "first_nonfinite_step": meta.get("first_nonfinite_step"),
        "cpu_seconds": meta.get("cpu_seconds"),
        # run metadata: Slurm job, Kubernetes pod, `profiler run --meta`
        "meta": meta.get("run_meta", {}),
        **_budget_fields(
            meta,
            row.get("budget_events", []),
            (row["cost_gpu_time"] + row["cost_energy"]) if priced else None,
        ),
    }


def _budget_fields(
    meta: dict[str, Any], events: list[dict[str, Any]], cost: float | None
) -> dict[str, Any]:
    """The run's budget (profiler.budget), money in ``currency``: ``budget`` the run's own
    (else its project's month; null: none applied), ``budgets`` every one that applied,
    ``budget_spent`` spent against ``budget`` (the run's cost for a run budget, the project's
    month at the last event for a project budget; null: unknown), ``budget_events`` the
    warnings and stops given (``at`` unix s, ``at_step``: 0 = the step after the decision)."""
    budgets = [
        {k: b.get(k) for k in ("amount", "scope", "source", "on_exceed", "warn_at")}
        for b in meta.get("budgets", [])
    ]
    for e in events:  # a budget known only from its events (a run of an older daemon)
        if not any(b["scope"] == e["scope"] for b in budgets):
            budgets.append({"amount": e["budget"], "scope": e["scope"], "source": e["source"],
                            "on_exceed": "stop" if e["event"] == "stop" else None,
                            "warn_at": None})  # fmt: skip
    budget = next((b for b in budgets if b["scope"] == "run"), budgets[0] if budgets else None)
    spent = None
    if budget is not None:
        if budget["scope"] == "run":
            spent = cost
        else:
            spent = max((e["spent"] for e in events if e["scope"] == budget["scope"]),
                        default=None)  # fmt: skip
    return {
        "budget": budget,
        "budgets": budgets,
        "budget_spent": spent,
        "budget_events": [{k: e[k] for k in EVENT_KEYS} for e in events],
    }


EVENT_KEYS = (
    "event", "reason", "at", "at_step", "scope", "source", "spent", "projected", "budget",
    "currency",
)  # fmt: skip


def _ranks(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Per rank: where it ran (local rank, world size, declared devices, pids), its steps and
    samples, and its peak framework memory (bytes)."""
    pids: dict[int, list[int]] = {}
    where: dict[int, tuple[int, int]] = {}
    devices: dict[int, set[str]] = {}
    for pid, (rank, local, world) in meta.get("ranks", {}).items():
        pids.setdefault(rank, []).append(int(pid))
        where[rank] = (local, world)
        devices.setdefault(rank, set()).update(meta.get("process_devices", {}).get(pid, []))
    peaks = meta.get("rank_memory_peak", {})
    samples_unknown = meta.get("samples_source") == "none"
    out = []
    for key, n in sorted(meta.get("rank_steps", {}).items(), key=lambda kv: int(kv[0])):
        peak = peaks.get(key)
        out.append({
            "rank": int(key),
            "local_rank": where.get(int(key), (None, None))[0],
            "world_size": where.get(int(key), (None, None))[1],
            "devices": sorted(devices.get(int(key), ())),
            "steps": n,
            # null when the run's samples are unknown (no batch size: not counted)
            "samples": None if samples_unknown else meta.get("rank_samples", {}).get(key, 0),
            "pids": sorted(pids.get(int(key), [])),
            "memory_peak_allocated_bytes": peak[0] if peak else None,
            "memory_peak_reserved_bytes": peak[1] if peak else None,
        })  # fmt: skip
    return out


def read_runs(config: Config, limit: int | None = None) -> list[dict[str, Any]]:
    """The ledger's runs as public run objects, newest first (at most ``limit``); [] when there
    is no ledger yet."""
    if not config.ledger.exists():
        return []
    ledger = Ledger(config.ledger, readonly=True)
    try:
        return [run_record(r) for r in ledger.runs(limit=limit)]
    finally:
        ledger.close()
