"""``profiler watch``: a live terminal view of the daemon, read from its own ``/metrics``.

Three layers: :func:`build_snapshot` turns parsed exposition (plus the previous snapshot, for
steps/s) into a :class:`Snapshot`; :func:`render` turns that into a rich renderable (and
:func:`render_text` into plain text); :func:`watch` is the loop. Unknown figures show "-",
never 0. The view redraws at most once per interval, and not at all when nothing changed, so it
stays light over a slow SSH link.
"""

from __future__ import annotations

import argparse
import http.client
import io
import math
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from profiler.cli.errors import CliError
from profiler.config import Config
from profiler.daemon.control import daemon_status
from profiler.report.text import display_text
from profiler.units import JOULES_PER_KWH

DASH = "-"
FETCH_ERRORS = (OSError, http.client.HTTPException, ValueError)
DEVICE_SERIES = {
    "power_w": "profiler_gpu_power_watts",
    "power_limit_w": "profiler_gpu_power_limit_watts",
    "utilization": "profiler_gpu_utilization_ratio",
    "memory_used_bytes": "profiler_gpu_memory_used_bytes",
    "memory_total_bytes": "profiler_gpu_memory_total_bytes",
}
Series = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class DeviceView:
    gpu: str
    uuid: str
    model: str
    hostname: str
    simulated: bool
    power_w: float | None = None
    power_limit_w: float | None = None
    utilization: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None


@dataclass(frozen=True)
class RunView:
    id: str
    name: str
    project: str
    user: str
    framework: str
    hostname: str
    currency: str  # "" when unpriced
    simulated: bool
    steps: float | None = None
    steps_per_s: float | None = None  # None without a previous snapshot
    step_time_mean_s: float | None = None
    energy_j: float | None = None
    cost: float | None = None
    cost_rate_per_hour: float | None = None
    projected_cost: float | None = None
    waste_cost: float | None = None
    total_steps: float | None = None
    projected_end: float | None = None  # unix seconds
    # how its GPU energy is split on shared GPUs: "activity", "equal", "mixed"; None: no GPU time
    attribution: str | None = None
    # its budget (the run's own, else its project's month; None: none) and the spend against
    # it at the daemon's last check, in ``currency``; warned: a warning was given, stopped: a stop
    budget: float | None = None
    budget_spent: float | None = None
    budget_warned: bool = False
    budget_stopped: bool = False


@dataclass(frozen=True)
class Snapshot:
    devices: tuple[DeviceView, ...]
    runs: tuple[RunView, ...]  # running runs only
    hostname: str = ""
    taken_at: float = field(default=0.0, compare=False)  # monotonic seconds, for rates
    wall: float = field(default=0.0, compare=False)  # unix seconds


def parse(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


def _index(families: Iterable[Metric]) -> Series:
    out: Series = {}
    for family in families:
        for s in family.samples:
            if not math.isnan(s.value):
                out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _values(idx: Series, name: str, **labels: str) -> list[float]:
    return [v for lab, v in idx.get(name, ()) if all(lab.get(k) == x for k, x in labels.items())]


def _one(idx: Series, name: str, **labels: str) -> float | None:
    values = _values(idx, name, **labels)
    return values[0] if values else None


def _sum(idx: Series, name: str, **labels: str) -> float | None:
    values = _values(idx, name, **labels)
    return sum(values) if values else None


def _label(idx: Series, name: str, label: str, **labels: str) -> str | None:
    """The value of ``label`` on the first ``name`` series with ``labels``; None if none."""
    for lab, _value in idx.get(name, ()):
        if all(lab.get(k) == x for k, x in labels.items()):
            return lab.get(label)
    return None


def _gpu_order(d: DeviceView) -> tuple:
    return (d.hostname, int(d.gpu) if d.gpu.isdigit() else 1 << 30, d.gpu, d.uuid)


def build_snapshot(
    families: Iterable[Metric], taken_at: float, wall: float, previous: Snapshot | None = None
) -> Snapshot:
    """The view of one scrape; ``previous`` (an earlier scrape) gives each run's steps/s."""
    idx = _index(families)
    where: dict[tuple[str, str], dict[str, str]] = {}
    for name in ("profiler_gpu_info", *DEVICE_SERIES.values()):
        for labels, _ in idx.get(name, ()):
            where.setdefault((labels.get("hostname", ""), labels.get("uuid", "")), labels)
    devices = []
    for (host, uuid), labels in where.items():
        info = _values(idx, "profiler_gpu_info", uuid=uuid, hostname=host, source="simulated")
        figures = {k: _one(idx, n, uuid=uuid, hostname=host) for k, n in DEVICE_SERIES.items()}
        devices.append(DeviceView(labels.get("gpu", ""), uuid, labels.get("model_name", ""),
                                  host, bool(info), **figures))  # fmt: skip
    before = {r.id: r for r in previous.runs} if previous else {}
    runs = []
    for labels, _ in idx.get("profiler_run_info", ()):
        if labels.get("status") != "running":
            continue
        rid = labels.get("run", "")
        steps = _one(idx, "profiler_run_steps_total", run=rid)
        count = _one(idx, "profiler_step_duration_seconds_count", run=rid)
        total = _one(idx, "profiler_step_duration_seconds_sum", run=rid)
        rate = None
        old = before.get(rid)
        if old and old.steps is not None and steps is not None and steps >= old.steps:
            dt = taken_at - previous.taken_at
            rate = (steps - old.steps) / dt if dt > 0 else None
        runs.append(RunView(
            id=rid, name=labels.get("name", ""), project=labels.get("project", ""),
            user=labels.get("user", ""), framework=labels.get("framework", ""),
            hostname=labels.get("hostname", ""), currency=labels.get("currency", ""),
            simulated=labels.get("simulated") == "true", steps=steps, steps_per_s=rate,
            step_time_mean_s=total / count if count and total is not None else None,
            energy_j=_sum(idx, "profiler_run_energy_joules_total", run=rid),
            cost=_sum(idx, "profiler_run_cost_total", run=rid),
            cost_rate_per_hour=_one(idx, "profiler_run_cost_rate_per_hour", run=rid),
            projected_cost=_one(idx, "profiler_run_projected_cost", run=rid),
            waste_cost=_sum(idx, "profiler_run_waste_cost_total", run=rid),
            total_steps=_one(idx, "profiler_run_total_steps", run=rid),
            projected_end=_one(idx, "profiler_run_projected_end_time_seconds", run=rid),
            attribution=_label(idx, "profiler_run_attribution_info", "attribution", run=rid),
            **_budget(idx, rid),
        ))  # fmt: skip
    build = idx.get("profiler_build_info", [({}, 0.0)])[0][0]
    return Snapshot(tuple(sorted(devices, key=_gpu_order)), tuple(sorted(runs, key=lambda r: r.id)),
                    build.get("hostname", ""), taken_at, wall)  # fmt: skip


def _budget(idx: Series, rid: str) -> dict[str, float | bool | None]:
    """A run's budget figures from ``profiler_run_budget_*`` (the run's own budget first)."""
    for scope in ("run", "project"):
        amount = _one(idx, "profiler_run_budget_amount", run=rid, scope=scope)
        if amount is not None:
            return {
                "budget": amount,
                "budget_spent": _one(idx, "profiler_run_budget_spent", run=rid, scope=scope),
                "budget_warned": bool(_one(idx, "profiler_run_budget_events_total", run=rid,
                                           event="warn")),
                "budget_stopped": bool(_one(idx, "profiler_run_budget_events_total", run=rid,
                                            event="stop")),
            }  # fmt: skip
    return {}


def budget_text(r: RunView) -> str:
    """A run's spend against its budget, "spent/budget (share)", then "!" once warned or
    "stop" once stopped; "-" without a budget."""
    if r.budget is None:
        return DASH
    if r.budget_spent is None:
        text = f"-/{r.budget:.2f}"
    else:
        text = f"{r.budget_spent:.2f}/{r.budget:.2f} ({r.budget_spent / r.budget:.0%})"
    return text + (" stop" if r.budget_stopped else " !" if r.budget_warned else "")


# ---- rendering -------------------------------------------------------------------------------

# bases marked "=" on a run's energy: not (or, for "mixed", not only) by measured activity
EQUAL_SPLIT = ("equal", "slices", "mixed")


def _f(value: float | None, fmt: str, suffix: str = "", scale: float = 1.0) -> str:
    return DASH if value is None else format(value * scale, fmt) + suffix


def _energy(j: float | None) -> str:
    if j is None:
        return DASH
    if j < 1e3:
        return f"{j:.0f} J"
    return f"{j / 3600:.2f} Wh" if j < JOULES_PER_KWH else f"{j / JOULES_PER_KWH:.3f} kWh"


def _money(v: float | None, currency: str, suffix: str = "") -> str:
    if v is None or not currency:
        return DASH
    return f"{v:{',.2f' if abs(v) >= 100 else '.4f'}} {currency}{suffix}"


def _seconds(s: float | None) -> str:
    if s is None:
        return DASH
    return f"{s * 1e3:.1f} ms" if s < 0.01 else f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def _memory(used: float | None, total: float | None) -> str:
    if used is None and total is None:
        return DASH
    return f"{_f(used, '.1f', scale=2**-30)}/{_f(total, '.1f', scale=2**-30)} GiB"


def _when(end: float | None, wall: float) -> str:
    if end is None:
        return DASH
    same_day = time.localtime(end)[:3] == time.localtime(wall)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(end))


def _plain(text: str, style: str = "") -> Text:
    """Text from the daemon (names, ids, models, host) as it reads: never rich markup (a name
    like ``[/]`` is text, not a tag), control characters and bidirectional overrides cleaned
    (:func:`profiler.report.text.display_text`), so nothing reaches the terminal raw."""
    return Text(display_text(text), style=style)


def render(snap: Snapshot, url: str = "", note: str = "") -> RenderableType:
    """One frame: a header line, the devices, the running runs (and ``note``, if any)."""
    parts: list[RenderableType] = [_plain(f"profiler watch  {snap.hostname}  {url}".rstrip())]
    gpus = Table(box=None, pad_edge=False, header_style="")
    for col in ("GPU", "MODEL", "POWER", "LIMIT", "UTIL", "MEMORY", "UUID"):
        gpus.add_column(col, justify="left" if col in ("GPU", "MODEL", "UUID") else "right")
    for d in snap.devices:
        gpus.add_row(
            _plain(d.gpu + ("*" if d.simulated else "")),
            _plain(d.model),
            _f(d.power_w, ".0f", " W"),
            _f(d.power_limit_w, ".0f", " W"),
            _f(d.utilization, ".0f", "%", scale=100),
            _memory(d.memory_used_bytes, d.memory_total_bytes),
            _plain(d.uuid),
        )
    parts.append(gpus if snap.devices else Text("no GPUs sampled"))
    runs = Table(box=None, pad_edge=False, header_style="")
    for col in ("RUN", "NAME", "STEPS", "STEPS/S", "STEP", "ENERGY", "COST", "NOW", "PROJECTED",
                "WASTE", "ENDS", "BUDGET"):  # fmt: skip
        runs.add_column(col, justify="left" if col in ("RUN", "NAME") else "right")
    for r in snap.runs:
        steps = _f(r.steps, ".0f") + ("" if r.total_steps is None else f"/{r.total_steps:.0f}")
        runs.add_row(
            _plain(r.id),
            _plain(r.name),
            steps,
            _f(r.steps_per_s, ".2f"),
            _seconds(r.step_time_mean_s),
            _energy(r.energy_j)
            + ("*" if r.simulated and r.energy_j is not None else "")
            + ("=" if r.attribution in EQUAL_SPLIT and r.energy_j is not None else ""),
            _plain(_money(r.cost, r.currency)),
            _plain(_money(r.cost_rate_per_hour, r.currency, "/h")),
            _plain(_money(r.projected_cost, r.currency)),
            _plain(_money(r.waste_cost, r.currency)),
            _when(r.projected_end, snap.wall),
            budget_text(r),
        )
    parts.append(runs if snap.runs else Text("no running runs"))
    if any(d.simulated for d in snap.devices) or any(r.simulated for r in snap.runs):
        parts.append(Text("* simulated GPU, not hardware", style="dim"))
    if any(r.attribution in EQUAL_SPLIT for r in snap.runs):
        parts.append(Text("= GPU energy split equally among the runs holding the GPU, or by MIG "
                          "instance size (it gives no per-process activity)",
                          style="dim"))  # fmt: skip
    if any(r.budget is not None for r in snap.runs):
        parts.append(Text("BUDGET spent/budget in the run's currency (its own, else its "
                          "project's month); ! warned, stop: stopped for its budget",
                          style="dim"))  # fmt: skip
    if note:
        parts.append(_plain(note, style="yellow"))
    return Group(*parts)


def render_text(snap: Snapshot, url: str = "", width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False).print(render(snap, url))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


# ---- the loop --------------------------------------------------------------------------------


def fetch(url: str, timeout: float = 5.0) -> list[Metric]:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the daemon's own URL
        return parse(r.read().decode())


def _take(url: str, previous: Snapshot | None) -> Snapshot:
    return build_snapshot(fetch(url), time.monotonic(), time.time(), previous)


def watch(config: Config, interval: float = 1.0, once: bool = False, console=None) -> int:
    """Show the daemon until Ctrl-C (0) or until it stops (1); ``once``: one plain frame."""
    status = daemon_status(config)
    if status and status.get("status_error"):
        print(f"profiler: error: the daemon runs (pid {status.get('pid') or 'unknown'}), but "
              f"{status['status_error']}; `profiler stop` and `profiler start` write it again",
              file=sys.stderr)  # fmt: skip
        return 1
    if not status or not status.get("metrics_url"):
        print(f"no daemon running for {config.home}; start one with `profiler start`")
        return 1
    url = status["metrics_url"]
    if once:
        try:
            print(render_text(_take(url, None), url))
        except FETCH_ERRORS as e:
            print(f"profiler: error: cannot read {url}: {e}", file=sys.stderr)
            return 1
        return 0
    previous: Snapshot | None = None
    shown: tuple | None = None
    try:
        with Live(console=console or Console(highlight=False), auto_refresh=False) as live:
            while True:
                started, note = time.monotonic(), ""
                try:
                    previous = _take(url, previous)
                except FETCH_ERRORS as e:
                    status = daemon_status(config)
                    if not status:
                        break
                    url, note = status.get("metrics_url") or url, f"cannot read {url}: {e}"
                if (previous, url, note) != shown:  # unchanged: no redraw at all
                    frame = render(previous, url, note) if previous else Text(note)
                    live.update(frame, refresh=True)
                    shown = (previous, url, note)
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
    print(f"the daemon for {config.home} stopped; start one with `profiler start`")
    return 1


def cmd_watch(config: Config, args: argparse.Namespace) -> int:
    """``profiler watch [--interval S] [--once]``."""
    if not 0.1 <= args.interval <= 3600:
        raise CliError(f"--interval {args.interval:g}: seconds from 0.1 to 3600")
    return watch(config, interval=args.interval, once=args.once)
