"""Decoding hook messages: valid ones exactly, bad ones rejected with a counted reason."""

import json
import math
from array import array

import pytest

from hooks import wire
from profiler.ingest.messages import Bye, Hello, Malformed, StepBatch, StepExtras, decode


def test_round_trip_of_each_message_type():
    h = decode(
        wire.encode(wire.hello("r1", 42, name="n", rank=1, world_size=2, mono=1.5, wall=9.0))
    )
    assert isinstance(h, Hello) and h.run == "r1" and h.pid == 42
    assert h.fields["rank"] == 1 and h.fields["world_size"] == 2 and h.fields["mono"] == 1.5
    s = decode(wire.encode(wire.steps("r1", 42, [[1, 1.0, 1.5, 64], [2, 1.5, 2.0, 64]], 3)))
    assert isinstance(s, StepBatch) and s.rows == ((1, 1.0, 1.5, 64, None), (2, 1.5, 2.0, 64, None))
    assert s.dropped == 3
    b = decode(wire.encode(wire.bye("r1", 42, "failed", 3.0)))
    assert isinstance(b, Bye) and b.status == "failed"


def test_step_extras_round_trip_and_unknown_keys_are_ignored():
    extras = {"dev_s": 0.25, "loss": 1.5, "mem": [10, 20, None], "future": "x"}
    rows = [[1, 1.0, 1.5, 64, extras], [2, 1.5, 2.0, 64, {"nonfinite": 1}]]
    s = decode(wire.encode(wire.steps("r1", 42, rows)))
    assert s.rows[0][4] == StepExtras(dev_s=0.25, loss=1.5, nonfinite=False, memory=(10, 20, None))
    assert s.rows[1][4] == StepExtras(nonfinite=True)


def test_packed_rows_round_trip_exactly_with_their_extras():
    values = array("d", [1, 1.0000001, 1.5, 64, 2, 1.5, 2.123456789012, 0])
    message = wire.packed_steps("r1", 42, values, {1: {"loss": 0.25}}, dropped=2)
    s = decode(wire.encode(message))
    assert s.rows == (
        (1, 1.0000001, 1.5, 64, None),
        (2, 1.5, 2.123456789012, 0, StepExtras(loss=0.25)),
    )
    assert s.dropped == 2


def test_steps_in_a_row_expand_to_rows_each_starting_where_the_last_ended():
    message = wire.steps_in_a_row("r1", 42, 7, 10.0, array("d", [10.5, 11.0, 11.25]), 16)
    s = decode(wire.encode(message))
    assert s.rows == (
        (7, 10.0, 10.5, 16, None),
        (8, 10.5, 11.0, 16, None),
        (9, 11.0, 11.25, 16, None),
    )


@pytest.mark.parametrize(
    "change",
    [{"ends": "%%"}, {"ends": wire.pack(array("d", [9.0]))}, {"first": -1}, {"samples": "8"},
     {"start": None}],
)  # fmt: skip
def test_bad_steps_in_a_row_are_refused(change):
    body = wire.steps_in_a_row("r", 1, 1, 10.0, array("d", [10.5]), 8)
    body.update(change)
    with pytest.raises(Malformed) as e:
        decode(wire.encode(body))
    assert e.value.reason == "bad_field"


@pytest.mark.parametrize(
    "packed",
    ["!!not base64!!", wire.pack(array("d", [1, 2, 3])), wire.pack(array("d", [1.5, 1, 2, 8])),
     wire.pack(array("d", [1, 2, 1, 8])), wire.pack(array("d", [1, 1, math.nan, 8])), 12],
)  # fmt: skip
def test_bad_packed_rows_are_refused(packed):
    body = {"v": 1, "type": "step", "run": "r", "pid": 1, "packed": packed}
    with pytest.raises(Malformed) as e:
        decode(json.dumps(body).encode())
    assert e.value.reason == "bad_field"


@pytest.mark.parametrize(
    "extras",
    [[1], {"dev_s": -1}, {"dev_s": "x"}, {"loss": "nan"}, {"mem": [1, 2]}, {"mem": [1, -2, 3]}],
)
def test_bad_step_extras_are_refused(extras):
    with pytest.raises(Malformed) as e:
        decode(wire.encode(wire.steps("r", 1, [[1, 1.0, 2.0, 8, extras]])))
    assert e.value.reason == "bad_field"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x00\xff", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"v": 2, "type": "step", "run": "r", "pid": 1}', "bad_version"),
        (b'{"v": 1, "type": "ping", "run": "r", "pid": 1}', "bad_type"),
        (b'{"v": 1, "type": "bye", "run": "", "pid": 1, "status": "finished"}', "bad_field"),
        (b'{"v": 1, "type": "bye", "run": "r", "pid": -5, "status": "finished"}', "bad_field"),
        (b'{"v": 1, "type": "bye", "run": "r", "pid": 1, "status": "meh"}', "bad_field"),
        (b'{"v": 1, "type": "step", "run": "r", "pid": 1, "steps": [[1, 2, 1, 8]]}', "bad_field"),
        (b'{"v": 1, "type": "step", "run": "r", "pid": 1, "steps": [[1, 1, 2, -8]]}', "bad_field"),
        (
            b'{"v": 1, "type": "step", "run": "r", "pid": 1, "steps": [[1, 1, 1e999, 8]]}',
            "bad_field",
        ),
        (b'{"v": 1, "type": "step", "run": "r", "pid": 1, "steps": "many"}', "bad_field"),
        (b'{"v": 1, "type": "hello", "run": "r", "pid": 1, "mono": "x", "wall": 1}', "bad_field"),
        (b"[" * 100_000, "oversize"),
    ],
)
def test_malformed_reasons(data, reason):
    with pytest.raises(Malformed) as e:
        decode(data)
    assert e.value.reason == reason


def test_labels_are_bounded_and_stripped_of_control_characters():
    h = decode(wire.encode(wire.hello("r", 1, name="a\nb\x00c" + "z" * 1000, mono=1, wall=1)))
    assert h.fields["name"].startswith("abc") and len(h.fields["name"]) <= 256


def test_hello_meta_and_marks_are_decoded_with_bounds():
    def hello(**extra):
        body = {"v": 1, "type": "hello", "run": "r", "pid": 5, "mono": 1.0, "wall": 2.0, **extra}
        return decode(json.dumps(body).encode())

    msg = hello(meta={"slurm_job_id": "42", "team": "vi\x00sion"}, attach=True)
    assert msg.fields["meta"] == {"slurm_job_id": "42", "team": "vision"}
    assert msg.fields["attach"] is True and msg.fields["watched"] is False
    assert hello().fields["meta"] == {}
    for bad in ({"meta": {"k": 1}}, {"meta": ["k"]}, {"meta": {str(i): "v" for i in range(33)}},
                {"meta": {"k" * 65: "v"}}, {"attach": "yes"}, {"watched": 1}):  # fmt: skip
        with pytest.raises(Malformed):
            hello(**bad)
