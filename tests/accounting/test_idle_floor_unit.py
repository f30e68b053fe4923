"""The measured idle floor (profiler.accounting.idle_floor): unknown until a block of idle
readings exists, robust to a glitchy reading, blind to busy readings."""

from __future__ import annotations

from profiler.accounting.idle_floor import IDLE_BLOCK_READINGS, IdleFloor, device_held
from profiler.accounting.runs import ProcessInfo, Run


def feed(floor: IdleFloor, watts: list[float], idle: bool = True) -> None:
    for w in watts:
        floor.observe(w, idle)


def test_the_floor_is_unknown_until_a_block_of_idle_readings_has_filled():
    floor = IdleFloor()
    feed(floor, [60.0] * (IDLE_BLOCK_READINGS - 1))
    assert floor.watts is None  # unknown, never 0
    feed(floor, [60.0])
    assert floor.watts == 60.0


def test_one_glitchy_low_reading_does_not_set_the_floor_and_the_lowest_block_does():
    floor = IdleFloor()
    feed(floor, [90.0, 88.0, 0.0, 86.0, 85.0])  # a 0 W glitch inside a decaying stretch
    assert floor.watts == 86.0  # the block's median
    feed(floor, [61.0, 60.0, 60.0, 2.0, 60.0])
    assert floor.watts == 60.0  # the lowest block median
    feed(floor, [70.0] * IDLE_BLOCK_READINGS)
    assert floor.watts == 60.0


def test_busy_readings_never_count_and_break_an_unfinished_block():
    floor = IdleFloor()
    feed(floor, [50.0] * (IDLE_BLOCK_READINGS - 1))
    feed(floor, [300.0], idle=False)  # a job began: the partial block is dropped
    feed(floor, [50.0])
    assert floor.watts is None
    feed(floor, [40.0] * 3, idle=False)
    assert floor.watts is None
    floor.observe(None, True)  # power not read: ignored
    assert floor.watts is None


def test_a_device_is_held_by_a_live_run_seen_on_it_or_declared_by_its_hook():
    run = Run(id="r", name="r")
    assert not device_held("GPU-a", 0, (), [run], 5.0)
    run.processes[1] = ProcessInfo(pid=1, devices=("0",))
    assert device_held("GPU-a", 0, (), [run], 5.0)
    assert not device_held("GPU-b", 1, (), [run], 5.0)
    other = Run(id="o", name="o")
    other.device_since["GPU-b"] = 1.0
    assert device_held("GPU-b", 1, (), [other], 5.0)
    other.end_mono = 4.0
    assert not device_held("GPU-b", 1, (), [other], 5.0)  # ended before: no longer held
