"""Energy attribution (profiler.accounting.attribution) with numbers alone: a device interval's
energy and time split among the runs holding it, idle energy kept apart, a GPU process given to
the innermost run around it, and why a share is waste. A shared device: active energy by each
run's measured activity, idle energy shared equally, the equal split where activity is unknown."""

from __future__ import annotations

import pytest
from inprocess import pricing

from profiler.accounting.attribution import (
    ACTIVITY_WAIT_S,
    ATTRIBUTION_LAG_S,
    attribute,
    attribution_horizon,
    nearest_runs,
    split_shared,
    waste_reason,
)
from profiler.accounting.devices import DeviceState
from profiler.accounting.energy import EnergyCurve, Holder
from profiler.accounting.runs import ProcessInfo, Run, attribution_basis
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


# ---- a shared device: energy by measured per-process activity, idle kept apart (issue 16)


def flat_curve(watts: float, seconds: int) -> EnergyCurve:
    """A device drawing ``watts`` for ``seconds`` (one point a second)."""
    curve = EnergyCurve()
    for t in range(seconds + 1):
        curve.append(float(t), watts * t, watts)
    return curve


def constant(**activity: float):
    return lambda lo, hi: dict(activity)


def test_active_energy_follows_activity_and_idle_is_shared_equally():
    curve = flat_curve(300.0, 10)  # 3000 J in 10 s
    holders = [Holder("busy", 0.0), Holder("idle", 0.0)]
    share = split_shared(curve, 0.0, 10.0, holders, idle_power_w=60.0,
                         activity=constant(busy=0.9, idle=0.1))  # fmt: skip
    # idle 60 W x 10 s = 600 J, 300 J each; active 2400 J split 0.9 / 0.1
    assert share.energy_j == pytest.approx({"busy": 300 + 2160.0, "idle": 300 + 240.0})
    assert share.idle_share_j == pytest.approx({"busy": 300.0, "idle": 300.0})
    assert share.seconds == pytest.approx({"busy": 5.0, "idle": 5.0})  # device-seconds: equal
    assert share.basis_s == {"busy": {"activity": 5.0}, "idle": {"activity": 5.0}}
    assert share.idle_j == 0.0
    assert sum(share.energy_j.values()) + share.idle_j == pytest.approx(3000.0, rel=1e-12)


def test_pieces_nobody_holds_stay_the_devices_and_the_split_adds_up_to_the_curve():
    curve = flat_curve(200.0, 10)
    holders = [Holder("a", 2.0), Holder("b", 5.0, 8.0)]
    # a alone in [2, 5] and [8, 10]: all of it, whatever its activity; shared in [5, 8]
    share = split_shared(curve, 0.0, 10.0, holders, idle_power_w=50.0,
                         activity=constant(a=0.25, b=0.75), cuts=[1.0, 6.5, 12.0])  # fmt: skip
    assert share.idle_j == pytest.approx(400.0)  # [0, 2]: no run holds it
    shared_active = 3 * (200.0 - 50.0)  # 450 J in [5, 8]
    assert share.energy_j["a"] == pytest.approx(5 * 200.0 + 0.25 * shared_active + 3 * 25.0)
    assert share.energy_j["b"] == pytest.approx(0.75 * shared_active + 3 * 25.0)
    assert share.idle_share_j == pytest.approx({"a": 5 * 50.0 + 75.0, "b": 75.0})
    assert share.seconds == pytest.approx({"a": 6.5, "b": 1.5})
    assert sum(share.energy_j.values()) + share.idle_j == pytest.approx(2000.0, rel=1e-12)


@pytest.mark.parametrize(
    ("activity", "why"),
    [
        (None, "no activity reader"),
        (lambda lo, hi: None, "no reading covers the span"),
        (constant(a=0.7), "b's processes are not shown on the device (declared by a hook)"),
    ],
)
def test_without_usable_activity_the_split_is_equal_and_says_so(activity, why):
    curve = flat_curve(100.0, 4)
    share = split_shared(curve, 0.0, 4.0, [Holder("a", 0.0), Holder("b", 0.0)],
                         idle_power_w=40.0, activity=activity)  # fmt: skip
    assert share.energy_j == pytest.approx({"a": 200.0, "b": 200.0}), why
    assert share.basis_s == {"a": {"equal": 2.0}, "b": {"equal": 2.0}}, why


def test_idle_power_is_capped_at_the_energy_and_unknown_idle_power_splits_nothing_apart():
    curve = flat_curve(50.0, 2)
    share = split_shared(curve, 0.0, 2.0, [Holder("a", 0.0), Holder("b", 0.0)],
                         idle_power_w=80.0, activity=constant(a=1.0, b=0.0))  # fmt: skip
    assert share.energy_j == pytest.approx({"a": 50.0, "b": 50.0})  # all idle, shared
    assert share.idle_share_j == pytest.approx({"a": 50.0, "b": 50.0})
    share = split_shared(curve, 0.0, 2.0, [Holder("a", 0.0), Holder("b", 0.0)],
                         activity=constant(a=1.0, b=0.0))  # fmt: skip
    assert share.energy_j == pytest.approx({"a": 100.0, "b": 0.0}) and share.idle_share_j == {}
    # every holder at 0: the active part is shared equally, on the activity basis (measured)
    share = split_shared(curve, 0.0, 2.0, [Holder("a", 0.0), Holder("b", 0.0)],
                         idle_power_w=20.0, activity=constant(a=0.0, b=0.0))  # fmt: skip
    assert share.energy_j == pytest.approx({"a": 50.0, "b": 50.0})
    assert share.basis_s == {"a": {"activity": 1.0}, "b": {"activity": 1.0}}
    # one holder with known activity (even 0) takes it all, on the activity basis
    share = split_shared(curve, 0.0, 2.0, [Holder("a", 0.0)], activity=constant(a=0.0))
    assert share.energy_j == pytest.approx({"a": 100.0}) and share.basis_s == {
        "a": {"activity": 2.0}
    }


def test_activity_readings_are_weighted_by_overlap_lag_by_a_reading_and_never_drift():
    dev = DeviceState("GPU-0", 0, "A100-SXM4-40GB")
    dev.curve.append(0.0, 0.0, 100.0)
    dev.observe_activity(1.0, {1: 1.0, 2: 0.2})  # covers (0, 1]
    dev.observe_activity(2.0, {1: 0.0})  # (1, 2]: pid 2 left out = no activity
    dev.observe_activity(1.5, {1: 0.5})  # out of order: ignored
    assert dev.activity_to == 2.0
    assert dev.activity_between(0.5, 1.5) == pytest.approx({1: 0.5, 2: 0.1})
    assert dev.activity_cuts(0.5, 3.0) == [1.0, 2.0]
    assert dev.activity_between(2.0, 2.8) == pytest.approx({1: 0.0})  # newest stands in
    assert dev.activity_between(1.0, 3.0) == pytest.approx({1: 0.0})
    assert dev.activity_between(7.5, 8.0) is None  # 5.5 s past the newest: unknown


def test_attribution_waits_for_the_activity_reading_that_covers_it_a_bounded_time():
    dev = DeviceState("GPU-0", 0, "A100-SXM4-40GB")
    assert attribution_horizon(dev, 10.0) == 10.0 - ATTRIBUTION_LAG_S  # no activity: as before
    dev.activity_source = "simulated"
    assert attribution_horizon(dev, 9.0) == 9.0 - ACTIVITY_WAIT_S  # waits for a first reading
    dev.observe_activity(9.0, {1: 0.5})
    assert attribution_horizon(dev, 10.0) == 9.0  # up to what the newest reading covers
    assert attribution_horizon(dev, 9.2) == 9.2 - ATTRIBUTION_LAG_S
    assert attribution_horizon(dev, 20.0) == 20.0 - ACTIVITY_WAIT_S  # never further behind


def test_attribute_splits_a_shared_device_by_its_processes_activity():
    dev = DeviceState("GPU-0", 0, "A100-SXM4-40GB", idle_power_w=50.0)
    dev.activity_source = "simulated"
    for t in range(11):  # 250 W for 10 s
        dev.curve.append(float(t), 250.0 * t, 250.0)
    for t in range(1, 11):  # the busy run's CUDA process (a child, pid 11) at 80 %, pid 20 at 0
        dev.observe_activity(float(t), {11: 0.8})
    dev.pids_seen.update({11, 20})  # both listed by the driver
    runs = {
        "busy": Run(id="busy", name="busy", processes={10: ProcessInfo(10)}),
        "idle": Run(id="idle", name="idle", processes={20: ProcessInfo(20)}),
        "hook": Run(id="hook", name="hook", start_mono=6.0,  # declared only, not shown
                    processes={30: ProcessInfo(30, devices=("0",))}),
    }  # fmt: skip
    rollups: dict[tuple[str, int], Rollup] = {}
    idle: dict[tuple[str, int], float] = {}
    meter = CostMeter(pricing(kind="flat", gph=3.6, kwh=0.0, pue=1.0, carbon=360.0))
    attribute(dev, 10.0, runs=runs, cost_meter=meter, idle=idle, wall_at=lambda t: WALL + t,
              rollup_for=lambda r, u: rollups.setdefault((r, int(u)), Rollup(r, int(u))),
              ancestors=lambda pid: [10] if pid == 11 else [])  # fmt: skip
    busy, quiet, hook = runs["busy"], runs["idle"], runs["hook"]
    # [0, 6]: busy and idle, 200 W active all to busy, 50 W idle shared: 6 x (200 + 25) J
    assert busy.gpu_energy_j["GPU-0"] == pytest.approx(6 * 225.0 + 4 * 250.0 / 3)
    assert quiet.gpu_energy_j["GPU-0"] == pytest.approx(6 * 25.0 + 4 * 250.0 / 3)
    assert hook.gpu_energy_j["GPU-0"] == pytest.approx(4 * 250.0 / 3)  # [6, 10]: equal
    assert busy.gpu_idle_energy_j == pytest.approx(6 * 25.0 + 4 * 50.0 / 3)
    assert busy.attribution_s == pytest.approx({"activity": 3.0, "equal": 4 / 3})
    assert (busy.attribution, hook.attribution) == ("mixed", "equal")
    total = sum(r.gpu_energy_j["GPU-0"] for r in runs.values()) + dev.idle_j
    assert total == pytest.approx(2500.0, rel=1e-12)  # the counter, nothing counted twice
    assert sum(r.gpu_seconds["GPU-0"] for r in runs.values()) == pytest.approx(10.0)


def test_a_runs_basis_is_activity_equal_or_mixed():
    assert attribution_basis({}) is None
    assert attribution_basis({"activity": 3.0}) == "activity"
    assert attribution_basis({"equal": 3.0, "activity": 0.0}) == "equal"
    assert attribution_basis({"equal": 0.5, "activity": 3.0}) == "mixed"


def test_a_run_whose_process_left_the_device_counts_as_idle_not_unknown():
    """The idle run's process exits at 5 s, before its run ends (its bye comes later): the
    driver no longer lists it. Having been listed in the previous split, it has left the
    device: activity 0, so the busy run keeps the whole active part and both keep the
    "activity" basis; a run the driver never listed stays unknown."""
    dev = DeviceState("GPU-0", 0, "A100-SXM4-40GB", idle_power_w=50.0)
    dev.activity_source = "simulated"
    for t in range(11):  # 250 W for 10 s
        dev.curve.append(float(t), 250.0 * t, 250.0)
    for t in range(1, 11):
        dev.observe_activity(float(t), {10: 0.8})
    runs = {
        "busy": Run(id="busy", name="busy", processes={10: ProcessInfo(10)}),
        "idle": Run(id="idle", name="idle", processes={20: ProcessInfo(20)}),
    }
    meter = CostMeter(pricing(kind="flat", gph=3.6, kwh=0.0, pue=1.0, carbon=360.0))

    def split(upto: float) -> None:
        attribute(dev, upto, runs=runs, cost_meter=meter, idle={}, wall_at=lambda t: WALL + t,
                  rollup_for=lambda r, u: Rollup(r, int(u)), ancestors=lambda pid: [])  # fmt: skip

    dev.pids_seen.update({10, 20})
    split(5.0)
    dev.pids_seen.update({10})  # 20 has exited: no longer listed
    split(10.0)
    busy, quiet = runs["busy"], runs["idle"]
    assert busy.gpu_energy_j["GPU-0"] == pytest.approx(10 * 225.0)  # all the active part
    assert quiet.gpu_energy_j["GPU-0"] == pytest.approx(10 * 25.0)  # half the idle part
    assert (busy.attribution, quiet.attribution) == ("activity", "activity")
