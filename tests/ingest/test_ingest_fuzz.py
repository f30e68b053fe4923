"""Hostile input at the ingest path: random bytes, truncated and oversize datagrams, wrong types,
huge numbers, NaN, negative durations, unknown versions and run ids. The daemon never dies, counts
each rejection by reason, and records the valid traffic mixed in exactly."""

from __future__ import annotations

import json
import os
import random
import socket
import time
from array import array
from collections import Counter

import pytest
from conftest import sample_value, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hooks import wire
from profiler.config import Config
from profiler.daemon.core import Daemon
from profiler.ingest.messages import Malformed, decode

REASONS = {"oversize", "not_json", "not_object", "bad_version", "bad_field", "bad_type"}
KEYS = ["v", "type", "run", "pid", "steps", "packed", "extras", "ends", "first", "start",
        "samples", "dropped", "status", "mono", "wall", "since", "name", "rank", "local_rank",
        "world_size", "devices", "batch_size", "total_steps", "proxy", "project"]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                         max_size=4),
    max_leaves=8,
)  # fmt: skip


def templates(pid: int, now: float = 1000.0) -> list[dict]:
    """One valid message of each kind (fixed numbers: hypothesis replays must draw alike)."""
    return [
        wire.hello("fz", pid, name="n", mono=now, wall=1.7e9, devices=["0"]),
        wire.steps("fz", pid, [[1, now, now + 0.1, 4], [2, now + 0.1, now + 0.2, 4, {"loss": 1}]]),
        wire.packed_steps("fz", pid, array("d", [1, now, now + 0.1, 4]), {}, 0),
        wire.steps_in_a_row("fz", pid, 5, now, array("d", [now + 1]), 2, 0),
        wire.bye("fz", pid, "finished", now),
    ]  # fmt: skip


@st.composite
def datagrams(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "object", "mutated", "truncated", "oversize"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "object":
        body = draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=12))
        return json.dumps(body).encode()
    base = draw(st.sampled_from(templates(os.getpid())))
    encoded = wire.encode(base)
    if kind == "truncated":
        return encoded[: draw(st.integers(0, max(0, len(encoded) - 1)))]
    if kind == "oversize":
        return encoded + b" " * (wire.MAX_DATAGRAM_BYTES + 1 - len(encoded))
    body = json.loads(encoded)
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3)):
        body[key] = draw(values)
    return json.dumps(body).encode()


def good_traffic(pid: int, n: int) -> list[bytes]:
    """A valid run ``good``: hello, then ``n`` steps of 0.5 ms and 4 samples, one a message."""
    now = time.monotonic()
    out = [wire.encode(wire.hello("good", pid, name="good", mono=now, wall=time.time()))]
    out += [wire.encode(wire.steps("good", pid, [[i, now + i / 1000, now + i / 1000 + 5e-4, 4]]))
            for i in range(n)]  # fmt: skip
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(datagrams(), max_size=25))
def test_random_datagrams_never_break_the_daemon_and_valid_traffic_is_exact(tmp_path_factory, junk):
    d = Daemon(Config(home=tmp_path_factory.mktemp("fuzz")), clock=time.monotonic)
    d.open_ledger()
    pid = os.getpid()
    good = good_traffic(pid, len(junk) + 1)
    reasons: Counter[str] = Counter()
    for i, data in enumerate([good[0], *junk]):
        for datagram in (data, good[i + 1]) if i else (data,):
            try:
                message = decode(datagram)
            except Malformed as e:
                reasons[e.reason] += 1
                continue
            if message.run == "good" and datagram not in good:
                continue  # a random message for the valid run itself: not ours to count
            d.handle(message)  # must not raise
    d.handle(decode(good[-1]))
    assert set(reasons) <= REASONS
    d.flush()  # whatever got through must also fit the ledger
    assert d.persist.flush_failures == 0 and d.health["ledger_write_errors"] == 0
    d.ledger.close()
    run = d.runs["good"]
    assert run.steps == len(junk) + 1 and run.samples == 4 * (len(junk) + 1)
    assert run.step_time_sum_s == pytest.approx((len(junk) + 1) * 5e-4)


def test_a_real_daemon_counts_a_random_barrage_by_reason_and_keeps_valid_runs_exact(daemon):
    rng = random.Random(20261124)
    pid = os.getpid()
    barrage = []
    for _ in range(1500):
        choice = rng.random()
        if choice < 0.3:
            barrage.append(rng.randbytes(rng.randrange(200)))
        elif choice < 0.5:
            barrage.append(json.dumps({k: rng.choice([None, -1, 2**80, "x", [], {}, 1.5, True])
                                       for k in rng.sample(KEYS, 5)}).encode())  # fmt: skip
        elif choice < 0.7:
            body = wire.encode(rng.choice(templates(pid)))
            barrage.append(body[: rng.randrange(len(body))])
        elif choice < 0.75:
            barrage.append(b"{" + b" " * wire.MAX_DATAGRAM_BYTES + b"}")
        else:
            body = json.loads(wire.encode(rng.choice(templates(pid))))
            body[rng.choice(KEYS)] = rng.choice([float("nan"), -5, 2**70, "", [1, 2], {"a": 1}])
            barrage.append(json.dumps(body).encode())
    expected: Counter[str] = Counter()
    for data in barrage:
        try:
            decode(data)
        except Malformed as e:
            expected[e.reason] += 1
    good = good_traffic(pid, 100)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(daemon.home / "daemon.sock")
    mixed = [good[0]]
    for i, data in enumerate(barrage):  # a valid step after every 15th bad datagram
        mixed.append(data)
        if i % 15 == 0:
            mixed.append(good[1 + i // 15])
    for data in mixed:
        while True:
            try:
                sock.sendto(data, path)
                break
            except BlockingIOError:
                time.sleep(0.005)
            except OSError as e:  # EMSGSIZE for the oversize ones: the kernel refuses them
                assert e.errno == 90, e
                expected["oversize"] -= 1
                break
    sock.sendto(wire.encode(wire.bye("good", pid, "finished", time.monotonic())), path)
    wait_for(lambda: any(r["id"] == "good" and r["status"] == "finished" for r in daemon.runs()),
             what="the valid run to end")  # fmt: skip
    text = daemon.metrics()
    assert daemon.proc.poll() is None
    for reason, n in (+expected).items():
        assert sample_value(text, "profiler_messages_malformed_total", reason=reason) == n, reason
    assert sample_value(text, "profiler_message_handler_errors_total") == 0
    assert sample_value(text, "profiler_ledger_write_errors_total") == 0
    good_run = next(r for r in daemon.runs() if r["id"] == "good")
    assert good_run["steps"] == 100 and good_run["samples"] == 400
