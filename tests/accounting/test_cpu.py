"""CPU accounting (profiler.accounting.cpu) over a process table of numbers: each run's CPU time
counts every process tree once, a process started for the run counts from its start and an older
one from when it was first read, and host CPU energy is shared by CPU time."""

from __future__ import annotations

import pytest
from inprocess import pricing

from profiler.accounting.cpu import CpuAccount
from profiler.accounting.runs import ProcessInfo, Run
from profiler.cost.meter import CostMeter
from profiler.ledger.store import Rollup
from profiler.sensors.base import CpuSample
from profiler.sensors.procs import ProcessTable, ProcStat


def test_cpu_time_counts_each_tree_once_and_energy_follows_it():
    run = Run(id="r", name="r", started_at=1000.0, processes={
        10: ProcessInfo(10, create_time=1000.5),  # started for the run (profiler run's child)
        12: ProcessInfo(12, create_time=1001.0),  # a hooked process inside 10's tree
        11: ProcessInfo(11, create_time=900.0),  # attached: older than the run
    })  # fmt: skip
    runs = {"r": run}
    rollups: dict[int, Rollup] = {}

    def rollup_for(run_id: str, unix_s: float) -> Rollup:
        return rollups.setdefault(int(unix_s // 60) * 60, Rollup(run_id, int(unix_s // 60) * 60))

    meter = CostMeter(pricing(kind="flat", gph=0.0, kwh=0.36, pue=1.0, carbon=None))
    account = CpuAccount()

    def step(cpu10: float, cpu12: float, cpu11: float, total_j: float, busy: float) -> None:
        account.observe([CpuSample("package-0", 0.0, total_j, "rapl")], total_j)
        table = ProcessTable({10: ProcStat(1, cpu10, 1000), 12: ProcStat(10, cpu12, 500),
                              11: ProcStat(1, cpu11, 100)})  # fmt: skip
        account.account(runs, table, busy, rollup_for=rollup_for, cost_meter=meter,
                        minute_wall=1.7e9)  # fmt: skip

    step(4.0, 2.0, 3.0, total_j=100.0, busy=50.0)
    assert run.cpu_seconds == 6.0  # 10's tree from its start; 11 is only a baseline yet
    assert run.host_rss_bytes == 1600 and run.cpu_energy_j == 0.0  # no energy window yet
    step(5.0, 3.0, 4.0, total_j=160.0, busy=56.0)
    assert run.cpu_seconds == 9.0  # + 2 s of 10's tree (12 inside it) + 1 s of 11
    # 60 J over 6 busy CPU seconds, 3 of them the run's
    assert run.cpu_energy_j == pytest.approx(30.0) and run.cpu_energy_source == "rapl"
    (rollup,) = rollups.values()
    assert rollup.cpu_energy_j == pytest.approx(30.0)
    assert rollup.cost_energy == pytest.approx(30.0 / 3.6e6 * 0.36)
    assert account.energy_j == {"package-0": (160.0, "rapl")}
