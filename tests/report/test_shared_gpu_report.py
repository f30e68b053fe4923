"""The monthly report on a ledger a real (in-process) daemon wrote while two runs of two projects
shared one simulated GPU (issue 16): each run's attribution basis and idle share are shown in
every format, a line says how many GPU-hours were split by activity and how many equally, and
the cost per project is the sum of its runs' costs, as `profiler runs --json` gives them."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from conftest import profiler_env, run_cli
from inprocess import FakeClock, advance, hello, make_daemon, pricing

from profiler.cli.run_records import run_record
from profiler.config import Config
from profiler.daemon.core import Daemon
from profiler.report.model import MonthReport, RunLine, Totals
from profiler.report.monthly import build_report, to_focus
from profiler.report.render import render
from profiler.sensors.nvml import NvmlSensor
from profiler.sensors.simulated import SimulatedNVML

SECONDS = 40.0
MIG_PROFILES = ("3g.40gb", "2g.20gb", "1g.10gb")


def shared_ledger(tmp_path, pids: tuple[int, ...], supported: bool = True):
    """A daemon on one load-mode simulated GPU, priced per GPU-hour and per kWh (so the split
    of energy moves money); a busy run of project "vision" (load 0.9) and a mostly idle run of
    project "nlp" (0.05) hold it for ``SECONDS``, and with a third pid a run "half" of project
    "vision" (load 0.5) holds it too for the second half; flushed. Returns (daemon, simulator,
    month label, a unix time after the work)."""
    d, sim, clock = make_daemon(tmp_path, [None])
    d.set_pricing(pricing(kind="onprem", gph=3.6, kwh=0.25, pue=1.0))
    sim.set_process_utilization_supported(0, supported)
    busy, idle = pids[:2]
    sim.set_process_load(busy, 0.9)
    sim.set_process_load(idle, 0.05)
    d.sample()
    advance(d, clock, 1.0)

    def start(run: str, pid: int, project: str) -> None:
        message = hello(run, pid, clock.now)
        message.fields["project"] = project
        d.handle(message)

    start("busy", busy, "vision")
    start("idle", idle, "nlp")
    if len(pids) > 2:
        advance(d, clock, SECONDS / 2)
        sim.set_process_load(pids[2], 0.5)
        start("half", pids[2], "vision")
        advance(d, clock, SECONDS / 2)
    else:
        advance(d, clock, SECONDS)
    d.attribute_all()
    assert d.flush()
    now = 1.7e9 + clock.now + 60
    month = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m")
    return d, sim, month, now


def test_a_shared_gpu_report_shows_each_runs_basis_and_idle_share_and_costs_add_up(
    tmp_path, two_pids
):
    d, sim, month, now = shared_ledger(tmp_path, two_pids)
    report = build_report(d.ledger, month, ["project"], now=now)
    lines = {r.id: r for r in report.runs}
    records = {rid: run_record(d.ledger.run(rid)) for rid in ("busy", "idle")}
    for rid in ("busy", "idle"):
        run, record = lines[rid], records[rid]
        assert run.attribution == "activity" == record["attribution"]
        # its idle share: the run's equal share of the GPU's idle power over its GPU energy
        assert run.gpu_idle_share == pytest.approx(
            record["gpu_idle_energy_j"] / record["gpu_energy_j"], rel=1e-9
        )
        assert run.gpu_hours_by_basis == {"activity": pytest.approx(run.totals.gpu_hours)}
        assert run.totals.cost == pytest.approx(record["cost"], rel=1e-9)
    # the busy run drew most of the energy: a larger energy cost, a smaller idle share
    assert lines["busy"].totals.cost_energy > 3 * lines["idle"].totals.cost_energy
    assert lines["busy"].gpu_idle_share < lines["idle"].gpu_idle_share
    # cost per project = the sum of its runs' costs (here one run each), = `profiler runs`
    by_project = dict(report.by("project"))
    assert set(by_project) == {"vision", "nlp"}
    for project, rid in (("vision", "busy"), ("nlp", "idle")):
        assert by_project[project].cost == pytest.approx(records[rid]["cost"], rel=1e-9)
    assert sum(t.cost for t in by_project.values()) == pytest.approx(report.totals.cost)
    assert report.totals.cost == pytest.approx(sum(r["cost"] for r in records.values()))
    hours = report.gpu_hours_by_basis()
    assert hours == {"activity": pytest.approx(report.totals.gpu_hours)}
    assert hours["activity"] == pytest.approx(2 * SECONDS / 2 / 3600, rel=0.01)

    md = render(report, "md")
    assert "GPU energy split: 0.011 GPU-hours by measured per-process activity" in md
    assert "| split | idle share |" in md
    assert "| activity |" in md
    html = render(report, "html")
    assert "<th>split</th><th>idle share</th>" in html
    assert "by measured per-process activity" in html
    body = json.loads(render(report, "json"))
    assert body["gpu_hours_by_basis"]["activity"] == pytest.approx(hours["activity"])
    assert {r["id"]: r["attribution"] for r in body["runs"]} == {
        "busy": "activity", "idle": "activity",
    }  # fmt: skip
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(render(report, "csv")))}
    assert rows["busy"]["attribution"] == "activity"
    assert float(rows["idle"]["gpu_idle_share"]) == pytest.approx(lines["idle"].gpu_idle_share)
    focus = list(csv.DictReader(io.StringIO(to_focus(d.ledger, month, now=now))))
    assert {json.loads(r["Tags"])["mlprofiler/attribution"] for r in focus} == {"activity"}


def test_without_per_process_activity_the_report_says_the_split_was_equal(tmp_path, two_pids):
    d, sim, month, now = shared_ledger(tmp_path, two_pids, supported=False)
    report = build_report(d.ledger, month, now=now)
    assert {r.attribution for r in report.runs} == {"equal"}
    hours = report.gpu_hours_by_basis()
    assert hours == {"equal": pytest.approx(report.totals.gpu_hours)}
    md = render(report, "md")
    assert "equally among the runs holding a GPU (no per-process activity)" in md
    assert "by measured per-process activity" not in md
    costs = [run_record(d.ledger.run(rid))["cost"] for rid in ("busy", "idle")]
    assert costs[0] == pytest.approx(costs[1], rel=1e-9)  # equal split: the same bill
    assert report.totals.cost == pytest.approx(sum(costs))


@pytest.mark.parametrize("supported", [True, False])
def test_the_cost_per_project_is_the_sum_of_its_runs_costs_on_a_shared_gpu(
    tmp_path, three_pids, supported
):
    """Two runs of one project and one of another share a GPU (three holders for half the
    time): each project's cost line, and the month's total, are the sums of its runs' costs as
    `profiler runs --json` gives them, in every format."""
    d, _sim, month, now = shared_ledger(tmp_path, three_pids, supported=supported)
    records = {rid: run_record(d.ledger.run(rid)) for rid in ("busy", "idle", "half")}
    cost = {rid: r["cost"] for rid, r in records.items()}
    assert cost["half"] < cost["busy"]  # it held the GPU half as long
    if supported:  # by activity, the busy run pays more than the idle one; equally, the same
        assert cost["busy"] > cost["idle"]
    else:
        assert cost["busy"] == pytest.approx(cost["idle"], rel=1e-9)
    expected = {"vision": records["busy"]["cost"] + records["half"]["cost"],
                "nlp": records["idle"]["cost"]}  # fmt: skip
    report = build_report(d.ledger, month, ["project"], now=now)
    by_project = {k: t.cost for k, t in report.by("project")}
    assert by_project == pytest.approx(expected, rel=1e-9)
    assert report.totals.cost == pytest.approx(sum(expected.values()), rel=1e-9)
    body = json.loads(render(report, "json"))
    assert {g["value"]: g["cost"] for g in body["groups"]["project"]} == pytest.approx(expected)
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    for project, cost in expected.items():
        assert sum(float(r["cost"]) for r in rows if r["project"] == project) == pytest.approx(
            cost, rel=1e-6
        )
    basis = "activity" if supported else "equal"
    assert {r.id: r.attribution for r in report.runs} == dict.fromkeys(records, basis)


@pytest.mark.parametrize("supported", [True, False])
def test_profiler_runs_table_shows_the_split_basis(tmp_path, two_pids, supported):
    d, _sim, _month, _now = shared_ledger(tmp_path, two_pids, supported=supported)
    d.ledger.close()
    out = run_cli(profiler_env(tmp_path), "runs")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:5] == ["RUN", "NAME", "FRAMEWORK", "SPLIT", "STATUS"]
    basis = "activity" if supported else "equal"
    for rid in ("busy", "idle"):
        cells = next(ln for ln in lines if ln.startswith(rid)).split()
        assert cells[2] == basis, cells  # (no framework given: that cell is blank)
    note = [ln for ln in lines if ln.startswith("SPLIT equal:")]
    assert len(note) == (0 if supported else 1)


def run_line(rid: str, attribution: str | None, idle_share: float | None,
             by_basis: dict[str, float]) -> RunLine:  # fmt: skip
    return RunLine(
        id=rid, name=rid, project="p", user="u", framework="pytorch", host="h", gpu_model="A100",
        status="finished", simulated=False, currency="USD",
        totals=Totals(cost=1.0, cost_gpu_time=1.0, gpu_hours=sum(by_basis.values()), runs=1),
        attribution=attribution, gpu_idle_share=idle_share, gpu_hours_by_basis=by_basis,
    )  # fmt: skip


def test_an_unknown_basis_is_a_dash_and_mixed_runs_add_per_basis():
    runs = [
        run_line("m", "mixed", 0.25, {"activity": 1.5, "equal": 0.5}),
        run_line("e", "equal", None, {"equal": 1.0}),
        run_line("u", None, None, {}),  # no GPU time: no basis
    ]
    report = MonthReport(
        month="2026-11", currency="USD", totals=Totals(), previous=Totals(), groups={},
        runs=runs, daily=[], other_currency_runs=0, simulated_runs=0, budget=None, forecast=None,
    )  # fmt: skip
    assert report.gpu_hours_by_basis() == {"activity": 1.5, "equal": 1.5}
    md = render(report, "md")
    assert ("GPU energy split: 1.500 GPU-hours by measured per-process activity, 1.500 "
            "equally among the runs holding a GPU (no per-process activity).") in md  # fmt: skip
    assert "| mixed | 25.0% |" in md
    assert "| equal | - |" in md and "| - | - |" in md
    html = render(report, "html")
    assert "<td>mixed</td><td>25.0%</td>" in html and "<td>-</td><td>-</td>" in html
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(render(report, "csv")))}
    assert rows["u"]["attribution"] == "" and rows["u"]["gpu_idle_share"] == ""
    assert rows["m"]["attribution"] == "mixed"


def test_a_mig_ledger_report_shows_the_instances_and_costs_add_up(tmp_path, three_pids):
    """Three runs of two projects on three MIG instances of one simulated A100-80GB (3g.40gb,
    2g.20gb, 1g.10gb): the report lists each run's instance profile (every format, FOCUS tags
    too), and each project's cost is the sum of its runs' costs."""
    clock = FakeClock()
    sim = SimulatedNVML("A100-SXM4-80GB", 1, clock=clock, traces=None, mig=MIG_PROFILES)
    sensor = NvmlSensor(sim, clock=clock)
    d = Daemon(Config(home=tmp_path), gpu_sensor=sensor, clock=clock,
               wall=lambda: 1.7e9 + clock.now,
               pricing=pricing(kind="onprem", gph=3.6, kwh=0.25, pue=1.0))  # fmt: skip
    d.open_ledger()
    for pid, load in zip(three_pids, (0.6, 0.3, 0.05), strict=True):
        sim.set_process_load(pid, load)
    d.sample()
    advance(d, clock, 1.0)
    instances = sensor.devices[0].mig_instances
    for i, (pid, project) in enumerate(zip(three_pids, ("vision", "vision", "nlp"), strict=True)):
        message = hello(f"r{i}", pid, clock.now, devices=(instances[i].uuid,))
        message.fields["project"] = project
        d.handle(message)
    advance(d, clock, SECONDS)
    d.attribute_all()
    assert d.flush()
    now = 1.7e9 + clock.now + 60
    month = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m")
    report = build_report(d.ledger, month, ["project"], now=now)
    lines = {r.id: r for r in report.runs}
    assert {rid: r.mig_profiles for rid, r in lines.items()} == {
        f"r{i}": [p] for i, p in enumerate(MIG_PROFILES)
    }
    records = {rid: run_record(d.ledger.run(rid)) for rid in lines}
    expected = {"vision": records["r0"]["cost"] + records["r1"]["cost"],
                "nlp": records["r2"]["cost"]}  # fmt: skip
    assert {k: t.cost for k, t in report.by("project")} == pytest.approx(expected, rel=1e-9)
    assert report.totals.cost == pytest.approx(sum(expected.values()), rel=1e-9)
    # GPU-hours by the instances' slices: 3 : 2 : 1
    hours = [lines[f"r{i}"].totals.gpu_hours for i in range(3)]
    assert hours[0] / hours[2] == pytest.approx(3.0, rel=0.01)
    assert hours[1] / hours[2] == pytest.approx(2.0, rel=0.01)
    md = render(report, "md")
    assert "MIG instances held: 1g\\.10gb by 1 run, 2g\\.20gb by 1 run, 3g\\.40gb by 1 run" in md
    assert "MIG instances held: 1g.10gb by 1 run, 2g.20gb by 1 run" in render(report, "html")
    body = json.loads(render(report, "json"))
    assert {r["id"]: r["mig_profiles"] for r in body["runs"]}["r0"] == ["3g.40gb"]
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(render(report, "csv")))}
    assert rows["r1"]["mig_profiles"] == "2g.20gb"
    focus = list(csv.DictReader(io.StringIO(to_focus(d.ledger, month, now=now))))
    tags = {r["ResourceId"]: json.loads(r["Tags"]) for r in focus}
    assert tags["r2"]["mlprofiler/mig_profiles"] == "1g.10gb"
