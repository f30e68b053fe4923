"""A GPU in MIG mode with numbers alone (profiler.accounting.mig): device-seconds by the
instance's slices shared among its runs only, the idle part by slices with the unheld slices'
share unattributed, the active part by activity (or by slices without it), a holder whose
instance is unknown splitting its piece as without MIG; runs + unattributed = the curve."""

from __future__ import annotations

import pytest

from profiler.accounting.energy import EnergyCurve, Holder
from profiler.accounting.mig import MigHold, split_mig
from profiler.sensors.base import MigInstance

A = MigInstance("MIG-a", 1, "3g.40gb", 3, 7)
B = MigInstance("MIG-b", 2, "2g.20gb", 2, 7)


def curve(watts: float = 200.0, seconds: int = 14) -> EnergyCurve:
    c = EnergyCurve()
    for t in range(seconds + 1):
        c.append(float(t), watts * t, watts)
    return c


def totals(share, run):
    return sum(share.energy_j[run].values()), sum(share.seconds[run].values())


def test_seconds_follow_slices_idle_by_slices_active_by_activity():
    # 200 W for 14 s (2800 J), idle 60 W (840 J); x and y on A, z on B; activity x 0.5, y 0, z 0.3
    share = split_mig(
        curve(), 0.0, 14.0, [Holder("x", 0.0), Holder("y", 0.0), Holder("z", 0.0)],
        {"x": (A,), "y": (A,), "z": (B,)}, parent_uuid="GPU-0", idle_power_w=60.0,
        activity=lambda lo, hi: {"x": 0.5, "y": 0.0, "z": 0.3},
    )  # fmt: skip
    busy = 2800.0 - 840.0
    idle_a, idle_b = 840.0 * 3 / 7, 840.0 * 2 / 7
    assert totals(share, "x") == pytest.approx((busy * 0.5 / 0.8 + idle_a / 2, 14.0 * 3 / 7 / 2))
    assert totals(share, "y") == pytest.approx((idle_a / 2, 14.0 * 3 / 7 / 2))
    assert totals(share, "z") == pytest.approx((busy * 0.3 / 0.8 + idle_b, 14.0 * 2 / 7))
    assert set(share.energy_j["z"]) == {"MIG-b"}
    assert share.idle_share_j["z"] == pytest.approx(idle_b)
    assert share.idle_j == pytest.approx(840.0 * 2 / 7)  # the two slices no instance holds
    assert share.basis_s["x"] == {"activity": pytest.approx(3.0)}
    runs_j = sum(totals(share, r)[0] for r in "xyz")
    assert runs_j + share.idle_j == pytest.approx(2800.0, rel=1e-12)


def test_without_activity_the_active_part_goes_by_instance_size_basis_slices():
    share = split_mig(
        curve(), 0.0, 14.0, [Holder("x", 0.0), Holder("z", 0.0)], {"x": (A,), "z": (B,)},
        parent_uuid="GPU-0", idle_power_w=60.0, activity=lambda lo, hi: None,
    )  # fmt: skip
    busy = 2800.0 - 840.0
    assert totals(share, "x")[0] == pytest.approx(busy * 3 / 5 + 840.0 * 3 / 7)
    assert totals(share, "z")[0] == pytest.approx(busy * 2 / 5 + 840.0 * 2 / 7)
    assert share.basis_s["z"] == {"slices": pytest.approx(4.0)}
    assert totals(share, "x")[0] + totals(share, "z")[0] + share.idle_j == pytest.approx(2800.0)


def test_a_piece_with_an_unknown_instance_splits_as_without_mig_and_one_nobody_holds_is_idle():
    # x on A from 0 s; w (instance unknown) from 7 s to 10 s; nobody after 12 s
    share = split_mig(
        curve(), 0.0, 14.0, [Holder("x", 0.0, 12.0), Holder("w", 7.0, 10.0)], {"x": (A,)},
        parent_uuid="GPU-0", idle_power_w=None,
    )  # fmt: skip
    assert share.energy_j["w"] == {"GPU-0": pytest.approx(300.0)}  # 3 s x 200 W / 2
    assert share.seconds["w"] == {"GPU-0": pytest.approx(1.5)}
    assert share.energy_j["x"]["GPU-0"] == pytest.approx(300.0)
    assert share.energy_j["x"]["MIG-a"] == pytest.approx(9 * 200.0)  # alone: all of it
    assert share.seconds["x"]["MIG-a"] == pytest.approx(9 * 3 / 7)
    assert share.idle_j == pytest.approx(400.0)  # 12 s to 14 s
    assert share.basis_s["w"] == {"equal": pytest.approx(1.5)}
    assert "x" not in share.idle_share_j  # idle power unknown: no idle part, not 0


def test_a_mig_hold_survives_its_meta():
    hold = MigHold.of(0, "GPU-0", A)
    assert MigHold.from_meta(hold.to_meta()) == hold
    assert hold.to_meta()["mig_profile"] == "3g.40gb"
