"""Energy attribution (profiler.accounting.attribution) with numbers alone: a device interval's
energy and time split among the runs holding it, idle energy kept apart, a GPU process given to
the innermost run around it, and why a share is waste."""

from __future__ import annotations

import pytest
from inprocess import pricing

from profiler.accounting.attribution import attribute, nearest_runs, waste_reason
from profiler.accounting.devices import DeviceState
from profiler.accounting.runs import ProcessInfo, Run
from profiler.cost.meter import CostMeter
from profiler.ledger.store import Rollup

WALL = 1.7e9  # unix seconds at monotonic 0


def test_a_device_interval_is_split_among_its_holders_and_the_rest_is_idle():
    dev = DeviceState("GPU-0", 0, "A100-SXM4-40GB")
    for t in range(11):  # 200 W for 10 s
        dev.curve.append(float(t), 200.0 * t, 200.0)
    runs = {  # a holds the device from 2 s (named by UUID), b from 5 s (by index)
        "a": Run(id="a", name="a", start_mono=2.0,
                 processes={10: ProcessInfo(10, devices=("GPU-0",))}),
        "b": Run(id="b", name="b", start_mono=5.0, processes={20: ProcessInfo(20, devices=("0",))}),
    }  # fmt: skip
    rollups: dict[tuple[str, int], Rollup] = {}

    def rollup_for(run_id: str, unix_s: float) -> Rollup:
        key = (run_id, int(unix_s // 60) * 60)
        return rollups.setdefault(key, Rollup(*key))

    idle: dict[tuple[str, int], float] = {}
    meter = CostMeter(pricing(kind="flat", gph=3.6, kwh=0.0, pue=1.0, carbon=360.0))
    for _ in range(2):  # the second call has nothing left to split
        attribute(dev, 10.0, runs=runs, cost_meter=meter, rollup_for=rollup_for, idle=idle,
                  wall_at=lambda t: WALL + t, ancestors=lambda pid: [])  # fmt: skip
    a, b = runs["a"], runs["b"]
    # [0, 2] nobody: 400 J idle; [2, 5] a alone: 600 J; [5, 10] shared: 1000 J, half each
    assert a.gpu_energy_j == pytest.approx({"GPU-0": 1100.0})
    assert b.gpu_energy_j == pytest.approx({"GPU-0": 500.0})
    assert dev.idle_j == pytest.approx(400.0) and dev.attributed_to == 10.0
    assert list(idle.values()) == pytest.approx([400.0])
    # device-seconds are shared the same way, so the device is never counted twice
    assert a.gpu_seconds["GPU-0"] == pytest.approx(5.5) and b.gpu_seconds["GPU-0"] == 2.5
    assert a.gpu_power_peak_w == 200.0
    (ra,) = [r for (run_id, _), r in rollups.items() if run_id == "a"]
    assert ra.gpu_energy_j == pytest.approx(1100.0) and ra.gpu_seconds == pytest.approx(5.5)
    assert ra.cost_gpu_time == pytest.approx(0.0055)  # 5.5 s at 3.6 per GPU-hour
    assert ra.co2_g == pytest.approx(1100.0 / 3.6e6 * 360.0)
    assert a.cost.gpu_time_cost == pytest.approx(0.0055)


def test_a_gpu_process_belongs_to_the_innermost_run_around_it():
    runs = {
        "outer": Run(id="outer", name="outer", processes={10: ProcessInfo(10)}),
        "inner": Run(id="inner", name="inner", processes={20: ProcessInfo(20)}),
        "ended": Run(id="ended", name="ended", status="finished", processes={30: ProcessInfo(30)}),
    }
    lineage = {40: [20, 10], 41: [10], 42: [30, 10], 20: [10]}

    def ancestors(pid: int) -> list[int]:
        return lineage.get(pid, [])

    assert nearest_runs({40}, runs, ancestors) == {"inner"}  # not every run above it
    assert nearest_runs({41}, runs, ancestors) == {"outer"}
    assert nearest_runs({42}, runs, ancestors) == {"outer"}  # an ended run holds nothing
    assert nearest_runs({43}, runs, ancestors) == set()
    assert nearest_runs({20, 41}, runs, ancestors) == {"inner", "outer"}


def test_a_share_is_waste_after_a_nonfinite_loss_or_on_an_idle_device():
    run = Run(id="r", name="r", last_event_mono=4.0)
    assert waste_reason(run, 5.0, 0.01) == "idle"  # no step ended since 4 s, device idle
    assert waste_reason(run, 3.0, 0.01) is None  # a step ended inside the interval
    assert waste_reason(run, 5.0, 0.9) is None  # busy
    assert waste_reason(run, 5.0, None) is None  # utilization unknown: not judged
    run.nonfinite_since_mono = 4.5
    assert waste_reason(run, 5.0, 0.9) == "nonfinite"
    assert waste_reason(run, 4.0, 0.9) is None  # before the first NaN loss
