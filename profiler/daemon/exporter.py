"""``/metrics``: the daemon's state in the Prometheus text format (0.0.4), rendered on scrape.

The text is written directly rather than through prometheus_client's generic writer, which
validates and escapes every label of every sample one by one: with 200 live runs on 8 GPUs
(about 13,000 series) that took over 100 ms of the daemon's lock and CPU per scrape; writing
each run's and device's label set once per scrape takes a fraction of it. ``promtool check
metrics`` checks the result in the tests.

Names follow DESIGN.md: base units, ``_total`` on counters, prefix ``profiler_``. Device series
carry ``gpu``, ``uuid``, ``model_name``, ``hostname``: dcgm-exporter's labels in snake_case,
because ``promtool check metrics`` rejects camelCase label names (``UUID``, ``modelName``); join
with dcgm-exporter through ``label_replace(DCGM_..., "uuid", "$1", "UUID", "(.*)")``. Per-run
series carry ``run`` (plus the device labels where per device); descriptive labels live on
``profiler_run_info`` only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from profiler import __version__
from profiler.cost.meter import projected
from profiler.daemon.exposition import (
    Family,
    HistogramText,
    label_value,
    labels,
    number,
    page,
    single,
)
from profiler.daemon.view import MetricsView

if TYPE_CHECKING:
    from profiler.accounting.runs import Histogram, Run

DEVICE_LABELS = ["gpu", "uuid", "model_name", "hostname"]
MIG_LABELS = [*DEVICE_LABELS, "parent_uuid", "mig_profile", "gpu_instance_id"]
"""A MIG instance's series: ``gpu`` the parent's index, ``uuid`` the instance's (``MIG-...``),
the parent's uuid, the profile and GPU instance id (dcgm-exporter's GPU_I_PROFILE, GPU_I_ID)."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
__all__ = ["labels", "label_value", "number", "render_metrics", "render_unless"]
_HISTOGRAMS = HistogramText()  # the step histograms' lines, kept while their counts stay


def render_metrics(daemon: MetricsView) -> bytes:
    """The whole ``/metrics`` page from one consistent snapshot (taken under the daemon's
    lock), UTF-8 encoded."""
    body = render_unless(daemon, give_up=lambda: False)
    assert body is not None  # never gives up
    return body


def render_unless(daemon: MetricsView, give_up: Callable[[], bool]) -> bytes | None:
    """The page, or None where ``give_up()`` turned true while waiting for the lock."""
    with daemon.lock.reading(give_up) as held:
        if not held:
            return None
        _HISTOGRAMS.next_page()
        families = list(_families(daemon))
    return page(families)


def _histogram(family: Family, label_text: str, hist: Histogram) -> None:
    """``hist``'s lines for ``label_text`` into ``family`` (kept while its counts stay)."""
    family.lines.append(
        _HISTOGRAMS.text(family.name, label_text, hist.bounds, hist.counts, hist.n, hist.total)
    )


def _families(d: MetricsView) -> Iterator[Family]:
    device_labels = _device_labels(d)  # rendered once, for the device and the run series
    yield from _devices(d, device_labels)
    yield from _cpu(d)
    yield from _runs(d, device_labels)
    yield from _costs(d)
    yield from _budgets(d)
    build = Family("profiler_build_info", "gauge", "Profiler daemon version and GPU source.")
    build.add(labels(("version", "gpu_source", "hostname"),
                     (__version__, d.gpu_source, d.hostname)), 1)  # fmt: skip
    yield build
    yield single(
        "profiler_daemon_start_time_seconds",
        "gauge",
        "When the daemon started (unix seconds).",
        d.started_at,
    )
    counts = dict(d.message_counts)
    received = single(
        "profiler_messages_received",
        "counter",
        "Datagrams the daemon received from hooks.",
        counts.get("received", 0),
    )
    malformed = Family("profiler_messages_malformed", "counter", "Datagrams rejected, by reason.")
    rejected = Family(
        "profiler_messages_rejected",
        "counter",
        "Well-formed messages refused, by reason: run_not_owned, pid_not_owned, "
        "pid_not_found (kernel credentials), too_many_runs (max_runs), time_in_future.",
    )
    for key, n in sorted(counts.items()):
        kind, _, reason = key.partition(":")
        if kind == "malformed":
            malformed.add(labels(("reason",), (reason,)), n)
        elif kind == "rejected":
            rejected.add(labels(("reason",), (reason,)), n)
    yield received
    yield malformed
    yield rejected
    ignored = Family(
        "profiler_messages_ignored",
        "counter",
        "Well-formed messages not applied, by reason (unknown run, run already ended).",
    )
    for key in ("messages_unknown_run", "messages_for_ended_run"):
        ignored.add(labels(("reason",), (key.removeprefix("messages_"),)), d.health.get(key, 0))
    yield ignored
    errors = Family(
        "profiler_sensor_errors", "counter", "Sensor read errors, by sensor and reason."
    )
    for key, n in sorted(d.health.items()):
        if key.startswith("sensor_error:"):
            _, sensor, reason = key.split(":", 2)
            errors.add(labels(("sensor", "reason"), (sensor, reason)), n)
    yield errors
    yield single(
        "profiler_ledger_write_errors",
        "counter",
        "Failed ledger flushes (data kept in memory).",
        d.health.get("ledger_write_errors", 0),
    )
    yield single(
        "profiler_message_handler_errors",
        "counter",
        "Messages that raised inside the daemon (a bug: see the daemon log); it goes on.",
        d.health.get("handler_errors", 0),
    )
    yield single(
        "profiler_sample_duration_seconds",
        "gauge",
        "Time the last sampling pass took (seconds).",
        d.sample_seconds_last,
    )
    yield single(
        "profiler_sample_interval_seconds",
        "gauge",
        "Configured sensor sampling interval (seconds).",
        d.config.sample_interval_s,
    )


def _device_labels(d: MetricsView) -> dict[str, str]:
    """Each device's rendered ``gpu, uuid, model_name, hostname`` labels, by UUID; and each
    MIG instance's (:data:`MIG_LABELS`), by the instance's UUID."""
    out = {
        uuid: labels(DEVICE_LABELS, (str(dev.index), dev.uuid, dev.model, d.hostname))
        for uuid, dev in d.devices.items()
    }
    for dev in d.devices.values():
        for m in dev.mig_instances:
            out[m.uuid] = labels(MIG_LABELS, (
                str(dev.index), m.uuid, dev.model, d.hostname, dev.uuid, m.profile,
                str(m.gpu_instance_id),
            ))  # fmt: skip
    return out


def _mig_instances(d: MetricsView) -> Family:
    """``profiler_gpu_mig_instance_info``: each MIG instance of a GPU in MIG mode (value 1)."""
    info = Family(
        "profiler_gpu_mig_instance_info", "gauge",
        "MIG instances of GPUs in MIG mode (value 1): gpu is the parent's index, uuid the "
        "instance's, slices its compute slices of gpu_slices.",
    )  # fmt: skip
    for dev in d.devices.values():
        for m in dev.mig_instances:
            info.add(labels((*MIG_LABELS, "slices", "gpu_slices"), (
                str(dev.index), m.uuid, dev.model, d.hostname, dev.uuid, m.profile,
                str(m.gpu_instance_id), str(m.slices), str(m.gpu_slices),
            )), 1)  # fmt: skip
    return info


def _devices(d: MetricsView, device_labels: dict[str, str]) -> Iterator[Family]:
    info = Family(
        "profiler_gpu_info",
        "gauge",
        "GPUs the daemon samples; source is nvml, amdsmi or simulated, energy_source is counter "
        "or power_integration, vendor is nvidia or amd.",
    )
    gauges = {
        "power": Family("profiler_gpu_power_watts", "gauge", "GPU power draw (watts)."),
        "limit": Family("profiler_gpu_power_limit_watts", "gauge", "Enforced power limit (watts)."),
        "mem": Family("profiler_gpu_memory_used_bytes", "gauge", "GPU memory in use (bytes)."),
        "memtotal": Family("profiler_gpu_memory_total_bytes", "gauge", "GPU memory size (bytes)."),
        "util": Family("profiler_gpu_utilization_ratio", "gauge", "GPU utilization (0-1)."),
    }  # fmt: skip
    energy = Family(
        "profiler_gpu_energy_joules", "counter", "GPU energy since the daemon started (joules)."
    )
    idle = Family("profiler_gpu_idle_energy_joules", "counter", "GPU energy no run held (joules).")
    idle_power = Family(
        "profiler_gpu_idle_power_watts", "gauge",
        "GPU idle power (watts) used to split off shared GPUs' idle energy; source is model "
        "(the sensor's figure) or measured_floor (lowest idle power the daemon measured).",
    )  # fmt: skip
    for dev in d.devices.values():
        s = dev.latest
        if s is None:
            continue
        dl = device_labels[dev.uuid]
        info_labels = labels(
            ("source", "energy_source", "vendor"), (d.gpu_source, s.energy_source, s.vendor)
        )
        info.add(f"{dl},{info_labels}", 1)
        values = {
            "power": s.power_w,
            "limit": s.power_limit_w,
            "mem": s.memory_used_bytes,
            "memtotal": s.memory_total_bytes,
            "util": s.utilization_ratio,
        }
        for key, value in values.items():
            if value is not None:  # unsupported is absent, never zero
                gauges[key].add(dl, value)
        if s.energy_j is not None:
            energy.add(dl, s.energy_j)
            idle.add(dl, dev.idle_j)
        if dev.idle_power_w is not None and dev.idle_power_source is not None:  # unknown: absent
            source = labels(("source",), (dev.idle_power_source,))
            idle_power.add(f"{dl},{source}", dev.idle_power_w)
    yield info
    yield from gauges.values()
    if idle_power.lines:  # only where some GPU's idle power is known
        yield idle_power
    mig = _mig_instances(d)
    if mig.lines:  # only where a GPU is in MIG mode: other pages stay as they were
        yield mig
    yield energy
    yield idle


def _cpu(d: MetricsView) -> Iterator[Family]:
    cpu = Family(
        "profiler_cpu_energy_joules",
        "counter",
        "CPU energy since the daemon started (joules); source rapl is measured, estimated is "
        "TDP x load.",
    )
    for zone, (joules, source) in sorted(d.cpu_energy_j.items()):
        cpu.add(labels(("zone", "source", "hostname"), (zone, source, d.hostname)), joules)
    yield cpu


def _held_labels(run: Run, uuid: str, hostname: str) -> str:
    """Labels of a device the daemon no longer has (a restored run's): a MIG instance the run
    held keeps its MIG labels; any other device its uuid only."""
    m = run.mig_instances.get(uuid)
    if m is None:
        return labels(DEVICE_LABELS, ("", uuid, "", hostname))
    return labels(MIG_LABELS, (
        str(m.gpu), uuid, "", hostname, m.parent_uuid, m.mig_profile, str(m.gpu_instance_id),
    ))  # fmt: skip


RUN_INFO_LABELS = (
    "run", "name", "project", "user", "framework", "framework_version", "hostname", "status",
    "simulated", "clock", "currency",
)  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _run_info_labels(values: tuple[str, ...]) -> str:
    """``profiler_run_info``'s label text for ``values`` (:data:`RUN_INFO_LABELS`), kept: a
    run's descriptive labels rarely change."""
    return labels(RUN_INFO_LABELS, values)


def _runs(d: MetricsView, device_labels: dict[str, str]) -> Iterator[Family]:
    info = Family("profiler_run_info", "gauge", "Runs and their descriptive labels (value 1).")
    f = {
        "energy": Family("profiler_run_energy_joules", "counter",
                         "GPU energy attributed to the run (joules)."),
        "gpu_seconds": Family("profiler_run_gpu_seconds", "counter",
                              "GPU time the run held, per device (device-seconds)."),
        "steps": Family("profiler_run_steps", "counter", "Training steps finished."),
        "samples": Family("profiler_run_samples", "counter", "Samples processed."),
        "dropped": Family("profiler_run_dropped_steps", "counter",
                          "Steps the hooks could not deliver."),
        "unmeasured": Family(
            "profiler_run_unmeasured_seconds", "gauge",
            "Seconds of the run no daemon measured (before it started, or across a restart).",
        ),
        "start": Family("profiler_run_start_time_seconds", "gauge", "Run start (unix seconds)."),
        "end": Family("profiler_run_end_time_seconds", "gauge",
                      "Run end (unix seconds); absent while running."),
        "cpu": Family("profiler_run_cpu_energy_joules", "counter",
                      "Host CPU energy attributed to the run by CPU-time share (joules)."),
        "rss": Family("profiler_run_host_memory_bytes", "gauge",
                      "Resident memory of the run's processes on this host (bytes)."),
        "total": Family("profiler_run_total_steps", "gauge",
                        "Steps the run expects in all, when known."),
        "rank_steps": Family("profiler_run_rank_steps", "counter",
                             "Steps finished by each rank of the run."),
        "memory": Family(
            "profiler_run_framework_memory_bytes", "gauge",
            "The framework's own device memory per rank, latest reading (bytes): "
            "allocated, peak_allocated, reserved.",
        ),
        "loss": Family("profiler_run_loss", "gauge",
                       "Latest finite training loss the hook reported."),
        "nonfinite": Family("profiler_run_nonfinite_loss_steps", "counter",
                            "Steps whose loss was NaN or infinite."),
        "attribution": Family(
            "profiler_run_attribution_info", "gauge",
            "How the run's GPU energy is split on shared GPUs (value 1): activity (by each "
            "process's measured activity), equal (equally among the runs holding it), mixed.",
        ),
        "idle_energy": Family(
            "profiler_run_gpu_idle_energy_joules", "counter",
            "Of the run's GPU energy, its equal share of the GPUs' idle power (joules).",
        ),
    }  # fmt: skip
    step_seconds = Family("profiler_step_duration_seconds", "histogram", "Step duration (seconds).")
    step_joules = Family(
        "profiler_step_energy_joules", "histogram", "GPU energy per step (joules)."
    )
    step_bound = Family(
        "profiler_step_energy_bound_joules", "histogram",
        "Per step, how far its GPU energy figure may be from the truth (joules): a step "
        "shorter than the sampling interval is interpolated.",
    )  # fmt: skip
    simulated = "true" if d.gpu_source == "simulated" else "false"
    for run in d.runs.values():
        r = f'run="{label_value(run.id)}"'
        info.add(
            _run_info_labels((
                run.id, run.name, run.project, run.user, run.framework, run.framework_version,
                d.hostname, run.status, simulated, run.clock, run.cost.currency,
            )),
            1,
        )  # fmt: skip
        for rank, n in sorted(run.rank_steps.items()):
            f["rank_steps"].add(f'{r},rank="{rank}"', n)
        for proc in run.processes.values():
            if proc.memory is None or proc.said_bye or proc.gone:
                continue
            for kind, value in zip(MEMORY_KINDS, proc.memory, strict=True):
                if value is not None:
                    f["memory"].add(f'{r},rank="{proc.rank}",kind="{kind}"', value)
        if run.last_loss is not None:
            f["loss"].add(r, run.last_loss)
        if run.last_loss is not None or run.nonfinite_loss_steps:  # no loss reported: unknown
            f["nonfinite"].add(r, run.nonfinite_loss_steps)
        for key, per_device in (("energy", run.gpu_energy_j), ("gpu_seconds", run.gpu_seconds)):
            name, lines = f[key].name, f[key].lines  # the page's most numerous series
            for uuid, value in sorted(per_device.items()):
                dl = device_labels.get(uuid) or _held_labels(run, uuid, d.hostname)
                text = repr(value) if type(value) is float and value - value == 0.0 else None
                lines.append(f"{name}{{{r},{dl}}} {text or number(value)}\n")
        # Unknown is left out, never 0: no hook timed steps, or the hook counts no samples.
        if run.known_steps is not None:
            f["steps"].add(r, run.known_steps)
        if run.known_samples is not None:
            f["samples"].add(r, run.known_samples)
        f["dropped"].add(r, run.dropped_steps)
        if run.attribution is not None:  # no GPU time yet: no basis
            f["attribution"].add(f'{r},attribution="{run.attribution}"', 1)
        if run.gpu_idle_energy_j is not None:  # idle power unknown: absent, never 0
            f["idle_energy"].add(r, run.gpu_idle_energy_j)
        f["unmeasured"].add(r, run.unmeasured_s)
        f["start"].add(r, run.started_at)
        if run.ended_at is not None:
            f["end"].add(r, run.ended_at)
        if run.cpu_energy_source:
            f["cpu"].add(f'{r},source="{label_value(run.cpu_energy_source)}"', run.cpu_energy_j)
        if run.host_rss_bytes is not None:
            f["rss"].add(r, run.host_rss_bytes)
        if run.total_steps:
            f["total"].add(r, run.total_steps)
        if run.steps_known:  # no hook times its steps: no step durations, not a count of 0
            _histogram(step_seconds, r, run.step_seconds)
        if run.step_joules.n:
            _histogram(step_joules, r, run.step_joules)
        if run.step_bound_joules.n:
            _histogram(step_bound, r, run.step_bound_joules)
    yield info
    yield from f.values()
    yield step_seconds
    yield step_joules
    yield step_bound


def _budgets(d: MetricsView) -> Iterator[Family]:
    """Per run in memory with a budget (profiler.budget): the budget, what was spent against
    it (a project's: its month on this node), and the warnings and stops given."""
    amount = Family("profiler_run_budget_amount", "gauge",
                    "The run's budget by scope (run, project) and source (currency).")  # fmt: skip
    spent = Family("profiler_run_budget_spent", "gauge",
                   "Spent against the budget at the daemon's last check (currency).")  # fmt: skip
    events = Family("profiler_run_budget_events", "counter",
                    "Budget events given to the run: warn, stop.")  # fmt: skip
    b = d.budgets
    for (run_id, scope), (budget, value) in sorted(b.latest.items()):
        if run_id in d.runs:
            text = labels(("run", "scope", "source"), (run_id, scope, budget.source))
            amount.add(text, budget.amount)
            spent.add(labels(("run", "scope"), (run_id, scope)), value)
    for (run_id, event), n in sorted(b.counts.items()):
        if run_id in d.runs:
            events.add(labels(("run", "event"), (run_id, event)), n)
    yield amount
    yield spent
    yield events


def _costs(d: MetricsView) -> Iterator[Family]:
    """Pricing in force, and per run: cost, emissions, waste, live rate and projections."""
    p = d.cost_meter.pricing
    carbon = "" if p.carbon_g_per_kwh is None else repr(p.carbon_g_per_kwh)
    info = Family(
        "profiler_pricing_info",
        "gauge",
        "The pricing in force (value 1); costs are in this currency.",
    )
    info.add(
        labels(
            ("currency", "profile", "kind", "gpu_hour_price", "energy_price_kwh", "pue",
             "carbon_g_per_kwh", "carbon_source", "as_of"),
            (p.currency, p.profile, p.kind, repr(p.gpu_hour_price), repr(p.energy_price_kwh),
             repr(p.pue), carbon, p.carbon_source, p.as_of),
        ),
        1,
    )  # fmt: skip
    yield info
    prices = (
        ("profiler_pricing_gpu_hour_price", "Price of one GPU-hour (currency).", p.gpu_hour_price),
        ("profiler_pricing_energy_price_per_kwh",
         "Price billed per kWh at the facility (currency; 0 for cloud instances).",
         p.energy_price_kwh),
        ("profiler_pricing_pue", "Power usage effectiveness.", p.pue),
        ("profiler_pricing_carbon_grams_per_kwh", "Grid carbon intensity (gCO2e/kWh).",
         p.carbon_g_per_kwh),
    )  # fmt: skip
    for name, help_text, value in prices:
        if value is not None:
            yield single(name, "gauge", help_text, value)
    fam = {
        "cost": Family(
            "profiler_run_cost", "counter",
            "What the run cost so far, by component (the run's currency; see run_info).",
        ),
        "co2": Family("profiler_run_emissions_grams", "counter",
                      "The run's emissions so far (grams CO2e)."),
        "waste": Family("profiler_run_waste_cost", "counter",
                        "Cost of GPU time wasted, by reason (currency)."),
        "waste_s": Family("profiler_run_waste_gpu_seconds", "counter",
                          "GPU time wasted, by reason (GPU-seconds)."),
        "waste_j": Family("profiler_run_waste_energy_joules", "counter",
                          "GPU energy wasted, by reason (joules)."),
        "rate": Family("profiler_run_cost_rate_per_hour", "gauge",
                       "What the run costs per hour now (currency/h, over the latest interval)."),
        "projected": Family(
            "profiler_run_projected_cost", "gauge",
            "The run's projected total cost from its steps so far and total steps.",
        ),
        "projected_end": Family(
            "profiler_run_projected_end_time_seconds", "gauge",
            "When the run is projected to end (unix seconds), from its wall time per step.",
        ),
    }  # fmt: skip
    now, now_mono = d.wall(), d.clock()
    # With no GPU sensor, GPU time is unknown: so are waste (GPU time held idle) and the money
    # priced from GPU time (the gpu_time component, the rate, the projection); left out.
    gpu_known = d.gpu_source != "none"
    for run in d.runs.values():
        r = f'run="{label_value(run.id)}"'
        c = run.cost
        if c.co2_known:
            fam["co2"].add(r, c.co2_g)
        if gpu_known:
            for reason in WASTE_REASONS:
                fam["waste_s"].add(f'{r},reason="{reason}"', c.waste_gpu_seconds.get(reason, 0.0))
                fam["waste_j"].add(f'{r},reason="{reason}"', c.waste_energy_j.get(reason, 0.0))
        if c.currency:  # priced: money in the run's currency
            if gpu_known:
                fam["cost"].add(f'{r},component="gpu_time"', c.gpu_time_cost)
            fam["cost"].add(f'{r},component="energy"', c.energy_cost)
            for reason in WASTE_REASONS if gpu_known else ():
                fam["waste"].add(f'{r},reason="{reason}"', c.waste_cost.get(reason, 0.0))
        if not run.live:
            continue
        if c.currency and gpu_known:
            fam["rate"].add(r, c.rate_per_hour(now_mono))
            total = projected(c.total, run.steps, run.total_steps)
            if total is not None:
                fam["projected"].add(r, total)
        if run.total_steps and run.steps and run.steps < run.total_steps:
            # wall time per step so far (data loading and host work included)
            per_step = (run.last_event_mono - run.start_mono) / run.steps
            remaining = (run.total_steps - run.steps) * per_step
            fam["projected_end"].add(r, now + remaining)
    yield from fam.values()
    yield single(
        "profiler_cost_currency_mismatches",
        "counter",
        "Work not billed because the pricing's currency differs from the run's.",
        d.cost_meter.currency_mismatches,
    )


MEMORY_KINDS = ("allocated", "peak_allocated", "reserved")
WASTE_REASONS = ("idle", "nonfinite")
