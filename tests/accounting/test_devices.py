"""Per-device state (profiler.accounting.devices): how many runs hold a device at a time, and a
device's utilization over an interval."""

import pytest

from profiler.accounting.devices import DeviceState


def test_sharing_counts_the_runs_holding_a_device_at_a_time():
    from profiler.accounting.devices import Sharing

    # a: 0..10, b: 5.. (running), c: 2..4; a run that ended before it was seen is left out
    # by attribution.sharing, and never counts as holding
    share = Sharing([(0.0, 10.0), (5.0, None), (2.0, 4.0)])
    assert [share.holders_at(t) for t in (1.0, 3.0, 4.0, 4.5, 6.0, 10.0, 11.0)] == [
        1,
        2,
        2,
        1,
        2,
        2,
        1,
    ]
    assert Sharing([]).holders_at(1.0) == 1  # never a division by zero


def test_utilization_is_the_mean_inside_the_interval_else_the_next_sample():
    dev = DeviceState("GPU-0", 0, "A100-SXM4-40GB")
    assert dev.utilization_between(0.0, 10.0) is None  # the sensor gives none
    dev.utilization.extend([(1.0, 0.2), (2.0, 0.4), (3.0, 0.9)])
    assert dev.utilization_between(0.5, 2.0) == pytest.approx(0.3)  # (0.2 + 0.4) / 2
    assert dev.utilization_between(1.0, 2.0) == pytest.approx(0.4)  # the start is excluded
    assert dev.utilization_between(2.0, 2.5) == pytest.approx(0.9)  # none inside: the next one
    assert dev.utilization_between(3.0, 4.0) is None  # nothing inside or after
