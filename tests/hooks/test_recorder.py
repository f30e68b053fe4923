"""The shared step recorder: splitting, loss flags, device-clock timing and memory sampling.

The recorder feeds a real :class:`hooks.client.Client` with no daemon (autostart off), whose
queue then holds exactly the rows that would be sent."""

from __future__ import annotations

import math

import pytest

from hooks import recorder as recorder_module
from hooks.client import Client
from hooks.recorder import StepRecorder


@pytest.fixture
def client(tmp_path):
    c = Client("r", {"name": "r"}, home=tmp_path, autostart=False, flush_every=10**9)
    c._thread.join(5)
    assert not c.ready.is_set()
    yield c
    c.closed = True


class ScriptedDeviceClock:
    """Marks the test completes by hand; times in seconds."""

    def __init__(self) -> None:
        self.marks: list[dict] = []
        self.waited = 0

    def mark(self):
        token = {"done": False, "t": None}
        self.marks.append(token)
        return token

    def done(self, token) -> bool:
        return token["done"]

    def elapsed_s(self, earlier, later) -> float:
        return later["t"] - earlier["t"]

    def wait(self, token) -> None:
        self.waited += 1
        for i, mark in enumerate(self.marks):
            if not mark["done"]:
                mark.update(done=True, t=100.0 + i)


def test_steps_run_end_to_end_and_count_samples(client):
    rec = StepRecorder(client, batch_size=8)
    rec.begin(now=1.0)
    rec.end(now=1.5)
    rec.end(now=2.25)  # no begin: starts where the previous ended
    assert client.queue == [[1, 1.0, 1.5, 8], [2, 1.5, 2.25, 8]]
    assert rec.steps == 2


def test_one_event_covering_n_batches_is_split_evenly(client):
    rec = StepRecorder(client, batch_size=10)
    rec.begin(now=0.0)
    rec.end(count=4, samples=38, now=2.0, loss=0.5)
    assert [r[:4] for r in client.queue] == [
        [1, 0.0, 0.5, 10],
        [2, 0.5, 1.0, 10],
        [3, 1.0, 1.5, 9],
        [4, 1.5, 2.0, 9],
    ]
    assert client.queue[-1][4] == {"loss": 0.5}
    assert all(len(r) == 4 for r in client.queue[:-1])
    assert rec.steps == 4


def test_nonfinite_and_unreadable_losses_never_raise(client):
    rec = StepRecorder(client)
    rec.end(loss=float("nan"), now=1.0)
    rec.end(loss=math.inf, now=2.0)
    rec.end(loss="not a number", now=3.0)
    rec.end(loss=1.25, now=4.0)
    extras = [r[4] if len(r) == 5 else None for r in client.queue]
    assert extras == [{"nonfinite": 1}, {"nonfinite": 1}, None, {"loss": 1.25}]
    assert rec.nonfinite_losses == 2 and rec.hook_errors == 1


def test_rows_wait_for_the_device_and_carry_its_duration(client):
    clock = ScriptedDeviceClock()
    rec = StepRecorder(client, batch_size=4, device_clock=clock)
    rec.begin(now=0.0)  # the first step starts with a mark too
    rec.end(now=1.0, loss=3.0)
    rec.end(now=2.0)
    assert client.queue == []  # the device has not finished either step
    clock.marks[0].update(done=True, t=10.0)
    clock.marks[1].update(done=True, t=10.25)
    rec.poll()
    assert client.queue == [[1, 0.0, 1.0, 4, {"dev_s": 0.25, "loss": 3.0}]]
    clock.marks[2].update(done=True, t=10.75)
    rec.poll()
    assert client.queue[1] == [2, 1.0, 2.0, 4, {"dev_s": 0.5}]
    rec.end(now=3.0)
    rec.finish()  # the run ends: waits for the device once, then sends
    assert clock.waited == 1 and len(client.queue) == 3
    assert client.queue[2][4]["dev_s"] == pytest.approx(100.0 + 3 - 10.75)


def test_a_device_that_never_finishes_does_not_grow_memory(client, monkeypatch):
    monkeypatch.setattr(recorder_module, "MAX_PENDING_DEVICE_STEPS", 3)
    rec = StepRecorder(client, device_clock=ScriptedDeviceClock())
    for i in range(10):
        rec.end(now=float(i))
    assert len(rec._waiting) == 3 and rec.device_timing_missed == 7
    assert [r[0] for r in client.queue] == list(range(1, 8))
    assert all(len(r) == 4 for r in client.queue)  # host timing only


def test_memory_is_read_at_most_every_interval(client):
    reads = []

    def probe():
        reads.append(1)
        return (100 * len(reads), 500, None)

    rec = StepRecorder(client, memory_probe=probe, memory_every_s=0.1)
    for i in range(10):
        rec.end(now=i * 0.04)  # 0.00, 0.04, ... 0.36 s
    with_memory = [r for r in client.queue if len(r) == 5]
    assert [r[0] for r in with_memory] == [1, 4, 7, 10]
    assert with_memory[1][4] == {"mem": [200, 500, None]}


def test_fast_lane_steps_keep_their_numbers_and_order_with_regular_steps(client):
    rec = StepRecorder(client, batch_size=8)
    rec.begin(now=1.0)
    rec.end(now=2.0)  # step 1, a regular row
    rec.ends.extend([3.0, 4.5])  # steps 2-3 as a hook's fast lane appends them
    assert rec.steps_seen == 3 and rec.steps == 1
    rec.end(loss=0.5, now=5.0)  # a regular step drains the lane first
    rec.ends.append(6.0)
    rec.finish()
    assert client.queue == [[1, 1.0, 2.0, 8], [4, 4.5, 5.0, 8, {"loss": 0.5}]]
    assert [(f, s, list(e), n) for f, s, e, n in client._in_a_row] == [
        (2, 2.0, [3.0, 4.5], 8),
        (5, 5.0, [6.0], 8),
    ]
    assert rec.steps == 5 and rec.steps_seen == 5
