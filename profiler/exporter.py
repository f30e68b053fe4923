"""``/metrics``: a prometheus_client custom collector that reads the daemon's state on scrape.

Names follow DESIGN.md: base units, ``_total`` on counters, prefix ``profiler_``. Device series
carry ``gpu``, ``uuid``, ``model_name``, ``hostname``: dcgm-exporter's labels in snake_case,
because ``promtool check metrics`` rejects camelCase label names (``UUID``, ``modelName``); join
with dcgm-exporter through ``label_replace(DCGM_..., "uuid", "$1", "UUID", "(.*)")``. Per-run
series carry ``run`` (plus the device labels where per device); descriptive labels live on
``profiler_run_info`` only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from profiler import __version__
from profiler.cost import projected

if TYPE_CHECKING:
    from profiler.daemon import Daemon

DEVICE_LABELS = ["gpu", "uuid", "model_name", "hostname"]


class DaemonCollector:
    """Yields every series from a consistent snapshot of the daemon (taken under its lock)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        with self.daemon.lock:
            families = list(self._families())
        yield from families

    def _families(self) -> Iterator[Metric]:
        d = self.daemon
        yield from self._devices()
        yield from self._cpu()
        yield from self._runs()
        yield from self._costs()
        build = GaugeMetricFamily(
            "profiler_build_info", "Profiler daemon version and GPU source.",
            labels=["version", "gpu_source", "hostname"],
        )  # fmt: skip
        build.add_metric([__version__, d.gpu_source, d.hostname], 1)
        yield build
        start = GaugeMetricFamily(
            "profiler_daemon_start_time_seconds", "When the daemon started (unix seconds)."
        )
        start.add_metric([], d.started_at)
        yield start
        received = CounterMetricFamily(
            "profiler_messages_received", "Datagrams the daemon received from hooks."
        )
        malformed = CounterMetricFamily(
            "profiler_messages_malformed",
            "Datagrams rejected, by reason.",
            labels=["reason"],
        )
        counts = dict(d.message_counts)
        received.add_metric([], counts.get("received", 0))
        for key, n in sorted(counts.items()):
            if key.startswith("malformed:"):
                malformed.add_metric([key.split(":", 1)[1]], n)
        rejected = CounterMetricFamily(
            "profiler_messages_rejected",
            "Well-formed messages refused, by reason: run_not_owned, pid_not_owned, "
            "pid_not_found (kernel credentials), too_many_runs (max_runs), time_in_future.",
            labels=["reason"],
        )
        for key, n in sorted(counts.items()):
            if key.startswith("rejected:"):
                rejected.add_metric([key.split(":", 1)[1]], n)
        yield received
        yield malformed
        yield rejected
        ignored = CounterMetricFamily(
            "profiler_messages_ignored",
            "Well-formed messages not applied, by reason (unknown run, run already ended).",
            labels=["reason"],
        )
        for key in ("messages_unknown_run", "messages_for_ended_run"):
            ignored.add_metric([key.removeprefix("messages_")], d.health.get(key, 0))
        yield ignored
        errors = CounterMetricFamily(
            "profiler_sensor_errors", "Sensor read errors, by sensor and reason.",
            labels=["sensor", "reason"],
        )  # fmt: skip
        for key, n in sorted(d.health.items()):
            if key.startswith("sensor_error:"):
                _, sensor, reason = key.split(":", 2)
                errors.add_metric([sensor, reason], n)
        yield errors
        ledger_errors = CounterMetricFamily(
            "profiler_ledger_write_errors", "Failed ledger flushes (data kept in memory)."
        )
        ledger_errors.add_metric([], d.health.get("ledger_write_errors", 0))
        yield ledger_errors
        handler_errors = CounterMetricFamily(
            "profiler_message_handler_errors",
            "Messages that raised inside the daemon (a bug: see the daemon log); it goes on.",
        )
        handler_errors.add_metric([], d.health.get("handler_errors", 0))
        yield handler_errors
        latency = GaugeMetricFamily(
            "profiler_sample_duration_seconds", "Time the last sampling pass took (seconds)."
        )
        latency.add_metric([], d.sample_seconds_last)
        yield latency
        interval = GaugeMetricFamily(
            "profiler_sample_interval_seconds", "Configured sensor sampling interval (seconds)."
        )
        interval.add_metric([], d.config.sample_interval_s)
        yield interval

    def _devices(self) -> Iterator[Metric]:
        d = self.daemon
        info = GaugeMetricFamily(
            "profiler_gpu_info",
            "GPUs the daemon samples; source is nvml or simulated, energy_source is counter or "
            "power_integration.",
            labels=[*DEVICE_LABELS, "source", "energy_source"],
        )
        gauges = {
            "power": GaugeMetricFamily(
                "profiler_gpu_power_watts", "GPU power draw (watts).", labels=DEVICE_LABELS
            ),
            "limit": GaugeMetricFamily(
                "profiler_gpu_power_limit_watts", "Enforced power limit (watts).",
                labels=DEVICE_LABELS,
            ),
            "mem": GaugeMetricFamily(
                "profiler_gpu_memory_used_bytes", "GPU memory in use (bytes).",
                labels=DEVICE_LABELS,
            ),
            "memtotal": GaugeMetricFamily(
                "profiler_gpu_memory_total_bytes", "GPU memory size (bytes).",
                labels=DEVICE_LABELS,
            ),
            "util": GaugeMetricFamily(
                "profiler_gpu_utilization_ratio", "GPU utilization (0-1).", labels=DEVICE_LABELS
            ),
        }  # fmt: skip
        energy = CounterMetricFamily(
            "profiler_gpu_energy_joules",
            "GPU energy since the daemon started (joules).",
            labels=DEVICE_LABELS,
        )
        idle = CounterMetricFamily(
            "profiler_gpu_idle_energy_joules",
            "GPU energy no run held (joules).",
            labels=DEVICE_LABELS,
        )
        for dev in d.devices.values():
            s = dev.latest
            if s is None:
                continue
            labels = [str(dev.index), dev.uuid, dev.model, d.hostname]
            info.add_metric([*labels, d.gpu_source, s.energy_source], 1)
            values = {
                "power": s.power_w,
                "limit": s.power_limit_w,
                "mem": s.memory_used_bytes,
                "memtotal": s.memory_total_bytes,
                "util": s.utilization_ratio,
            }
            for key, value in values.items():
                if value is not None:  # unsupported is absent, never zero
                    gauges[key].add_metric(labels, value)
            if s.energy_j is not None:
                energy.add_metric(labels, s.energy_j)
                idle.add_metric(labels, dev.idle_j)
        yield info
        yield from gauges.values()
        yield energy
        yield idle

    def _cpu(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "profiler_cpu_energy_joules",
            "CPU energy since the daemon started (joules); source rapl is measured, estimated is "
            "TDP x load.",
            labels=["zone", "source", "hostname"],
        )
        for zone, (joules, source) in sorted(self.daemon.cpu_energy_j.items()):
            cpu.add_metric([zone, source, self.daemon.hostname], joules)
        yield cpu

    def _runs(self) -> Iterator[Metric]:
        d = self.daemon
        info = GaugeMetricFamily(
            "profiler_run_info",
            "Runs and their descriptive labels (value 1).",
            labels=[
                "run", "name", "project", "user", "framework", "framework_version", "hostname",
                "status", "simulated", "clock", "currency",
            ],
        )  # fmt: skip
        families: dict[str, Any] = {
            "energy": CounterMetricFamily(
                "profiler_run_energy_joules", "GPU energy attributed to the run (joules).",
                labels=["run", *DEVICE_LABELS],
            ),
            "gpu_seconds": CounterMetricFamily(
                "profiler_run_gpu_seconds", "GPU time the run held, per device (device-seconds).",
                labels=["run", *DEVICE_LABELS],
            ),
            "steps": CounterMetricFamily(
                "profiler_run_steps", "Training steps finished.", labels=["run"]
            ),
            "samples": CounterMetricFamily(
                "profiler_run_samples", "Samples processed.", labels=["run"]
            ),
            "dropped": CounterMetricFamily(
                "profiler_run_dropped_steps", "Steps the hooks could not deliver.", labels=["run"]
            ),
            "unmeasured": GaugeMetricFamily(
                "profiler_run_unmeasured_seconds",
                "Seconds of the run no daemon measured (before it started, or across a restart).",
                labels=["run"],
            ),
            "start": GaugeMetricFamily(
                "profiler_run_start_time_seconds", "Run start (unix seconds).", labels=["run"]
            ),
            "end": GaugeMetricFamily(
                "profiler_run_end_time_seconds", "Run end (unix seconds); absent while running.",
                labels=["run"],
            ),
            "cpu": CounterMetricFamily(
                "profiler_run_cpu_energy_joules",
                "Host CPU energy attributed to the run by CPU-time share (joules).",
                labels=["run", "source"],
            ),
            "rss": GaugeMetricFamily(
                "profiler_run_host_memory_bytes",
                "Resident memory of the run's processes on this host (bytes).",
                labels=["run"],
            ),
            "total": GaugeMetricFamily(
                "profiler_run_total_steps", "Steps the run expects in all, when known.",
                labels=["run"],
            ),
            "rank_steps": CounterMetricFamily(
                "profiler_run_rank_steps", "Steps finished by each rank of the run.",
                labels=["run", "rank"],
            ),
            "memory": GaugeMetricFamily(
                "profiler_run_framework_memory_bytes",
                "The framework's own device memory per rank, latest reading (bytes): "
                "allocated, peak_allocated, reserved.",
                labels=["run", "rank", "kind"],
            ),
            "loss": GaugeMetricFamily(
                "profiler_run_loss", "Latest finite training loss the hook reported.",
                labels=["run"],
            ),
            "nonfinite": CounterMetricFamily(
                "profiler_run_nonfinite_loss_steps", "Steps whose loss was NaN or infinite.",
                labels=["run"],
            ),
        }  # fmt: skip
        step_seconds = HistogramMetricFamily(
            "profiler_step_duration_seconds", "Step duration (seconds).", labels=["run"]
        )
        step_joules = HistogramMetricFamily(
            "profiler_step_energy_joules", "GPU energy per step (joules).", labels=["run"]
        )
        simulated = "true" if d.gpu_source == "simulated" else "false"
        for run in d.runs.values():
            info.add_metric(
                [run.id, run.name, run.project, run.user, run.framework, run.framework_version,
                 d.hostname, run.status, simulated, run.clock, run.cost.currency],
                1,
            )  # fmt: skip
            for rank, n in sorted(run.rank_steps.items()):
                families["rank_steps"].add_metric([run.id, str(rank)], n)
            for proc in run.processes.values():
                if proc.memory is None or proc.said_bye or proc.gone:
                    continue
                for kind, value in zip(MEMORY_KINDS, proc.memory, strict=True):
                    if value is not None:
                        families["memory"].add_metric([run.id, str(proc.rank), kind], value)
            if run.last_loss is not None:
                families["loss"].add_metric([run.id], run.last_loss)
            families["nonfinite"].add_metric([run.id], run.nonfinite_loss_steps)
            for uuid, joules in sorted(run.gpu_energy_j.items()):
                dev = d.devices.get(uuid)
                families["energy"].add_metric(
                    [run.id, str(dev.index) if dev else "", uuid, dev.model if dev else "",
                     d.hostname],
                    joules,
                )  # fmt: skip
            for uuid, seconds in sorted(run.gpu_seconds.items()):
                dev = d.devices.get(uuid)
                families["gpu_seconds"].add_metric(
                    [run.id, str(dev.index) if dev else "", uuid, dev.model if dev else "",
                     d.hostname],
                    seconds,
                )  # fmt: skip
            families["steps"].add_metric([run.id], run.steps)
            families["samples"].add_metric([run.id], run.samples)
            families["dropped"].add_metric([run.id], run.dropped_steps)
            families["unmeasured"].add_metric([run.id], run.unmeasured_s)
            families["start"].add_metric([run.id], run.started_at)
            if run.ended_at is not None:
                families["end"].add_metric([run.id], run.ended_at)
            if run.cpu_energy_source:
                families["cpu"].add_metric([run.id, run.cpu_energy_source], run.cpu_energy_j)
            if run.host_rss_bytes is not None:
                families["rss"].add_metric([run.id], run.host_rss_bytes)
            if run.total_steps:
                families["total"].add_metric([run.id], run.total_steps)
            step_seconds.add_metric(
                [run.id], run.step_seconds.cumulative(), sum_value=run.step_seconds.total
            )
            if run.step_joules.n:
                step_joules.add_metric(
                    [run.id], run.step_joules.cumulative(), sum_value=run.step_joules.total
                )
        yield info
        yield from families.values()
        yield step_seconds
        yield step_joules

    def _costs(self) -> Iterator[Metric]:
        """Pricing in force, and per run: cost, emissions, waste, live rate and projections."""
        d = self.daemon
        p = d.cost_meter.pricing
        carbon = "" if p.carbon_g_per_kwh is None else repr(p.carbon_g_per_kwh)
        info = GaugeMetricFamily(
            "profiler_pricing_info",
            "The pricing in force (value 1); costs are in this currency.",
            labels=["currency", "profile", "kind", "gpu_hour_price", "energy_price_kwh", "pue",
                    "carbon_g_per_kwh", "carbon_source", "as_of"],
        )  # fmt: skip
        info.add_metric(
            [p.currency, p.profile, p.kind, repr(p.gpu_hour_price), repr(p.energy_price_kwh),
             repr(p.pue), carbon, p.carbon_source, p.as_of],
            1,
        )  # fmt: skip
        yield info
        prices = {
            "gpu_hour": GaugeMetricFamily(
                "profiler_pricing_gpu_hour_price", "Price of one GPU-hour (currency).", labels=[]
            ),
            "kwh": GaugeMetricFamily(
                "profiler_pricing_energy_price_per_kwh",
                "Price billed per kWh at the facility (currency; 0 for cloud instances).",
                labels=[],
            ),
            "pue": GaugeMetricFamily(
                "profiler_pricing_pue", "Power usage effectiveness.", labels=[]
            ),
        }  # fmt: skip
        prices["gpu_hour"].add_metric([], p.gpu_hour_price)
        prices["kwh"].add_metric([], p.energy_price_kwh)
        prices["pue"].add_metric([], p.pue)
        yield from prices.values()
        if p.carbon_g_per_kwh is not None:
            grid = GaugeMetricFamily(
                "profiler_pricing_carbon_grams_per_kwh", "Grid carbon intensity (gCO2e/kWh).",
                labels=[],
            )  # fmt: skip
            grid.add_metric([], p.carbon_g_per_kwh)
            yield grid
        fam = {
            "cost": CounterMetricFamily(
                "profiler_run_cost",
                "What the run cost so far, by component (the run's currency; see run_info).",
                labels=["run", "component"],
            ),
            "co2": CounterMetricFamily(
                "profiler_run_emissions_grams", "The run's emissions so far (grams CO2e).",
                labels=["run"],
            ),
            "waste": CounterMetricFamily(
                "profiler_run_waste_cost", "Cost of GPU time wasted, by reason (currency).",
                labels=["run", "reason"],
            ),
            "waste_s": CounterMetricFamily(
                "profiler_run_waste_gpu_seconds", "GPU time wasted, by reason (GPU-seconds).",
                labels=["run", "reason"],
            ),
            "waste_j": CounterMetricFamily(
                "profiler_run_waste_energy_joules", "GPU energy wasted, by reason (joules).",
                labels=["run", "reason"],
            ),
            "rate": GaugeMetricFamily(
                "profiler_run_cost_rate_per_hour",
                "What the run costs per hour now (currency/h, over the latest interval).",
                labels=["run"],
            ),
            "projected": GaugeMetricFamily(
                "profiler_run_projected_cost",
                "The run's projected total cost from its steps so far and total steps.",
                labels=["run"],
            ),
            "projected_end": GaugeMetricFamily(
                "profiler_run_projected_end_time_seconds",
                "When the run is projected to end (unix seconds), from its wall time per step.",
                labels=["run"],
            ),
        }  # fmt: skip
        now, now_mono = d.wall(), d.clock()
        for run in d.runs.values():
            c = run.cost
            if c.co2_known:
                fam["co2"].add_metric([run.id], c.co2_g)
            for reason in WASTE_REASONS:
                fam["waste_s"].add_metric([run.id, reason], c.waste_gpu_seconds.get(reason, 0.0))
                fam["waste_j"].add_metric([run.id, reason], c.waste_energy_j.get(reason, 0.0))
            if c.currency:  # priced: money in the run's currency
                fam["cost"].add_metric([run.id, "gpu_time"], c.gpu_time)
                fam["cost"].add_metric([run.id, "energy"], c.energy)
                for reason in WASTE_REASONS:
                    fam["waste"].add_metric([run.id, reason], c.waste.get(reason, 0.0))
            if not run.live:
                continue
            if c.currency:
                fam["rate"].add_metric([run.id], c.rate_per_hour(now_mono))
                total = projected(c.total, run.steps, run.total_steps)
                if total is not None:
                    fam["projected"].add_metric([run.id], total)
            if run.total_steps and run.steps and run.steps < run.total_steps:
                # wall time per step so far (data loading and host work included)
                per_step = (run.last_event_mono - run.start_mono) / run.steps
                remaining = (run.total_steps - run.steps) * per_step
                fam["projected_end"].add_metric([run.id], now + remaining)
        yield from fam.values()
        mismatches = CounterMetricFamily(
            "profiler_cost_currency_mismatches",
            "Work not billed because the pricing's currency differs from the run's.",
            labels=[],
        )
        mismatches.add_metric([], d.cost_meter.currency_mismatches)
        yield mismatches


MEMORY_KINDS = ("allocated", "peak_allocated", "reserved")
WASTE_REASONS = ("idle", "nonfinite")


def serve_metrics(daemon: Daemon, host: str, port: int) -> tuple[Any, int]:
    """Start the HTTP server for ``/metrics``; returns (server, bound port)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port
