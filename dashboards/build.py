"""Builds the Grafana dashboards: `python dashboards/build.py` rewrites training-run.json and
fleet-month.json in profiler/dashboards/, where the package ships them (`profiler dashboards
push` finds them there in a checkout and in an installed wheel; deploy/docker-compose.yml
mounts that folder into Grafana). Queries use only series the daemon exports
(tests/deploy/test_dashboards.py checks that, and runs every query against a real Prometheus)."""

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "profiler" / "dashboards"

DS = {"type": "prometheus", "uid": "${datasource}"}
_id = [0]


def panel(title, exprs, kind="timeseries", unit=None, w=8, h=7, legend=None, desc=""):
    _id[0] += 1
    targets = []
    for i, e in enumerate(exprs if isinstance(exprs, list) else [exprs]):
        expr, fmt = e if isinstance(e, tuple) else (e, legend)
        t = {"refId": chr(65 + i), "datasource": DS, "expr": expr}
        if fmt:
            t["legendFormat"] = fmt
        targets.append(t)
    p = {
        "id": _id[0],
        "type": kind,
        "title": title,
        "datasource": DS,
        "targets": targets,
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
        "description": desc,
        "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
        "options": {},
    }
    return p


def layout(panels):
    x = y = 0
    row_h = 0
    for p in panels:
        g = p["gridPos"]
        if x + g["w"] > 24:
            x, y = 0, y + row_h
            row_h = 0
        g["x"], g["y"] = x, y
        x += g["w"]
        row_h = max(row_h, g["h"])
    return panels


def var_ds():
    return {
        "name": "datasource",
        "type": "datasource",
        "query": "prometheus",
        "label": "Prometheus",
        "current": {},
        "hide": 0,
    }


def var_query(name, query, label, regex="", multi=True, include_all=True):
    return {
        "name": name,
        "type": "query",
        "label": label,
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "regex": regex,
        "refresh": 2,
        "multi": multi,
        "includeAll": include_all,
        "allValue": ".*",
        "current": {},
        "hide": 0,
        "sort": 1,
    }


R = 'run=~"$run"'
H = 'hostname=~"$hostname"'
run_panels = [
    panel(
        "Cost so far",
        f"sum(profiler_run_cost_total{{{R}}})",
        "stat",
        "currencyUSD",
        4,
        5,
        desc="Money in the run's currency (see the currency label of profiler_run_info).",
    ),
    panel(
        "Cost per hour now",
        f"sum(profiler_run_cost_rate_per_hour{{{R}}})",
        "stat",
        "currencyUSD",
        4,
        5,
    ),
    panel(
        "Projected cost",
        f"sum(profiler_run_projected_cost{{{R}}})",
        "stat",
        "currencyUSD",
        4,
        5,
        desc="Linear in steps: cost so far x total steps / steps done.",
    ),
    panel(
        "Projected end",
        f"max(profiler_run_projected_end_time_seconds{{{R}}}) * 1000",
        "stat",
        "dateTimeAsIso",
        4,
        5,
    ),
    panel(
        "Energy (kWh)",
        f"sum(profiler_run_energy_joules_total{{{R}}}) / 3.6e6",
        "stat",
        "kwatth",
        4,
        5,
    ),
    panel(
        "Emissions (g CO2e)",
        f"sum(profiler_run_emissions_grams_total{{{R}}})",
        "stat",
        "massg",
        4,
        5,
    ),
    panel(
        "GPU power",
        f"profiler_gpu_power_watts{{{H}}}",
        unit="watt",
        legend="GPU {{gpu}} {{model_name}}",
    ),
    panel(
        "GPU utilization",
        f"profiler_gpu_utilization_ratio{{{H}}}",
        unit="percentunit",
        legend="GPU {{gpu}}",
    ),
    panel(
        "GPU memory used",
        f"profiler_gpu_memory_used_bytes{{{H}}}",
        unit="bytes",
        legend="GPU {{gpu}}",
    ),
    panel(
        "CPU power",
        f"sum by (hostname) (rate(profiler_cpu_energy_joules_total{{{H}}}[$__rate_interval]))",
        unit="watt",
        legend="{{hostname}}",
        desc="Host CPU package power (RAPL, else estimated).",
    ),
    panel(
        "Steps and samples per second",
        [
            (
                f"sum by (run) (rate(profiler_run_steps_total{{{R}}}[$__rate_interval]))",
                "steps/s {{run}}",
            ),
            (
                f"sum by (run) (rate(profiler_run_samples_total{{{R}}}[$__rate_interval]))",
                "samples/s {{run}}",
            ),
        ],
        unit="short",
    ),
    panel(
        "Step time p50 / p95",
        [
            (
                f"histogram_quantile(0.5, sum by (le, run) (rate(profiler_step_duration_seconds_bucket{{{R}}}[$__rate_interval])))",
                "p50 {{run}}",
            ),
            (
                f"histogram_quantile(0.95, sum by (le, run) (rate(profiler_step_duration_seconds_bucket{{{R}}}[$__rate_interval])))",
                "p95 {{run}}",
            ),
        ],
        unit="s",
    ),
    panel(
        "GPU energy per sample",
        f"sum by (run) (rate(profiler_run_energy_joules_total{{{R}}}[$__rate_interval])) / sum by (run) (rate(profiler_run_samples_total{{{R}}}[$__rate_interval]))",
        unit="joule",
        legend="{{run}}",
    ),
    panel(
        "Waste",
        f"sum by (reason) (profiler_run_waste_cost_total{{{R}}})",
        "bargauge",
        "currencyUSD",
        legend="{{reason}}",
        desc="idle: GPU held doing no work; nonfinite: after the loss became NaN/inf.",
    ),
    panel(
        "Framework memory",
        f"profiler_run_framework_memory_bytes{{{R}}}",
        unit="bytes",
        legend="rank {{rank}} {{kind}}",
        desc="Reported by the hooks while CUDA is in use; empty on CPU runs.",
    ),
    panel(
        "GPU energy split",
        f"max by (run, attribution) (profiler_run_attribution_info{{{R}}})",
        "table",
        None,
        8,
        6,
        legend="{{run}}: {{attribution}}",
        desc="How each run's GPU energy is split on shared GPUs: activity (active energy by "
        "each process's measured activity, idle energy equally among the runs holding the GPU), "
        "equal (the GPU gives no per-process activity: split equally), slices (a MIG GPU with "
        "no per-process activity: by instance size), mixed (several).",
    ),
    panel(
        "Idle share of GPU energy",
        f"sum by (run) (profiler_run_gpu_idle_energy_joules_total{{{R}}}) "
        f"/ sum by (run) (profiler_run_energy_joules_total{{{R}}})",
        "bargauge",
        "percentunit",
        8,
        6,
        legend="{{run}}",
        desc="Of each run's GPU energy, its equal share of its GPUs' idle power (the rest is "
        "what it drew above idle). Absent when the idle power is unknown.",
    ),
    panel(
        "MIG instances",
        [
            (
                "max by (gpu, uuid, parent_uuid, mig_profile, gpu_instance_id, slices, "
                f"gpu_slices) (profiler_gpu_mig_instance_info{{{H}}})",
                "GPU {{gpu}} {{mig_profile}} (instance {{gpu_instance_id}}, "
                "{{slices}}/{{gpu_slices}} slices)",
            ),
            (
                "sum by (run, mig_profile, gpu_instance_id) "
                f'(profiler_run_energy_joules_total{{{R},mig_profile!=""}}) / 3.6e6',
                "{{run}} kWh on {{mig_profile}} (instance {{gpu_instance_id}})",
            ),
        ],
        "table",
        None,
        8,
        6,
        desc="GPUs in MIG mode: their instances (profile, NVML GPU instance id, compute slices "
        "of the GPU's, the parent GPU's uuid), and the runs' GPU energy (kWh) per instance. "
        "Empty when no GPU is in MIG mode.",
    ),
    panel(
        "Budget",
        [
            (
                f"max by (run, scope) (profiler_run_budget_spent{{{R}}})",
                "spent {{run}} ({{scope}})",
            ),
            (
                f"max by (run, scope, source) (profiler_run_budget_amount{{{R}}})",
                "budget {{run}} ({{scope}}: {{source}})",
            ),
        ],
        unit="currencyUSD",
        desc="Spend against each budget that applies to the run (its own: track(budget=), "
        "profiler run --budget or [budget] per_run; its project's month on this node: "
        "[budget.projects]), in the run's currency, as of the daemon's last check. Empty for "
        "runs without a budget.",
    ),
    panel(
        "Budget events",
        f"max by (run, event) (profiler_run_budget_events_total{{{R}}})",
        "table",
        None,
        legend="{{run}}: {{event}}",
        desc="Warnings (at warn_at of the budget, or when the projected cost first exceeds it) "
        "and stops (the run ends with status budget_exceeded) the daemon gave the run. Empty "
        "until one is given.",
    ),
]
training = {
    "title": "ML profiler: training run (live)",
    "uid": "ml-profiler-run",
    "schemaVersion": 39,
    "tags": ["ml-profiler"],
    "timezone": "utc",
    "refresh": "5s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {
        "list": [
            var_ds(),
            var_query("hostname", "label_values(profiler_run_info, hostname)", "Host"),
            var_query(
                "run",
                'profiler_run_info{hostname=~"$hostname"}',
                "Run",
                regex='/name="(?<text>[^"]+)".*run="(?<value>[^"]+)"/',
            ),
        ]
    },
    "annotations": {
        "list": [
            {
                "name": "Runs (posted by the daemon)",
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "iconColor": "blue",
                "target": {"type": "tags", "tags": ["ml-profiler"], "limit": 200},
            },
            {
                "name": "Run start",
                "datasource": DS,
                "enable": True,
                "iconColor": "green",
                "expr": f"max by (run) (profiler_run_start_time_seconds{{{R}}}) * 1000",
                "useValueForTime": True,
                "titleFormat": "start {{run}}",
                "step": "60s",
            },
            {
                "name": "Run end",
                "datasource": DS,
                "enable": True,
                "iconColor": "red",
                "expr": f"max by (run) (profiler_run_end_time_seconds{{{R}}}) * 1000",
                "useValueForTime": True,
                "titleFormat": "end {{run}}",
                "step": "60s",
            },
        ]
    },
    "panels": layout(run_panels),
}
_id[0] = 0


def by(label):
    return (
        f"sum by ({label}) (increase(profiler_run_cost_total[$__range]) * on (run) group_left ({label}) "
        f"max by (run, {label}) (profiler_run_info))"
    )


fleet_panels = [
    panel("Cost by project", by("project"), "bargauge", "currencyUSD", 6, 8, legend="{{project}}"),
    panel("Cost by user", by("user"), "bargauge", "currencyUSD", 6, 8, legend="{{user}}"),
    panel(
        "Cost by framework",
        by("framework"),
        "bargauge",
        "currencyUSD",
        6,
        8,
        legend="{{framework}}",
    ),
    panel("Cost by host", by("hostname"), "bargauge", "currencyUSD", 6, 8, legend="{{hostname}}"),
    panel(
        "Top runs by cost",
        "topk(10, sum by (run) (increase(profiler_run_cost_total[$__range])))",
        "table",
        "currencyUSD",
        12,
        8,
        legend="{{run}}",
    ),
    panel(
        "Idle waste",
        'sum by (run) (increase(profiler_run_waste_cost_total{reason="idle"}[$__range]))',
        "bargauge",
        "currencyUSD",
        6,
        8,
        legend="{{run}}",
    ),
    panel(
        "GPU-hours by GPU model",
        "sum by (model_name) (increase(profiler_run_gpu_seconds_total[$__range])) / 3600",
        "bargauge",
        "h",
        6,
        8,
        legend="{{model_name}}",
        desc="GPU time held by runs.",
    ),
    panel(
        "Price and PUE in force",
        [
            ("profiler_pricing_gpu_hour_price", "per GPU-hour {{instance}}"),
            ("profiler_pricing_pue", "PUE {{instance}}"),
            ("profiler_pricing_info", "{{profile}} {{currency}} as of {{as_of}}"),
        ],
        "table",
        None,
        12,
        6,
    ),
    panel(
        "Fleet cost per hour now",
        "sum(profiler_run_cost_rate_per_hour)",
        "stat",
        "currencyUSD",
        12,
        6,
    ),
]
fleet = {
    "title": "ML profiler: fleet and month",
    "uid": "ml-profiler-fleet",
    "schemaVersion": 39,
    "tags": ["ml-profiler"],
    "timezone": "utc",
    "refresh": "1m",
    "time": {"from": "now-30d", "to": "now"},
    "templating": {"list": [var_ds()]},
    "annotations": {"list": []},
    "panels": layout(fleet_panels),
}
json.dump(training, open(OUT / "training-run.json", "w"), indent=2)
json.dump(fleet, open(OUT / "fleet-month.json", "w"), indent=2)
