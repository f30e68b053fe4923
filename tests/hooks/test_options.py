"""The arguments every hook takes (hooks.options.RunOptions): the run id they make and the hello
fields they announce, the same way for every hook."""

from __future__ import annotations

import os
import socket

import pytest

from hooks.options import RunOptions
from hooks.runid import default_name, user_name


@pytest.fixture
def plain_env(monkeypatch):
    """No launcher or scheduler around this process."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "POD_", "TORCHELASTIC_", "PROFILER_RUN_ID")) or key in (
            "RANK", "LOCAL_RANK", "WORLD_SIZE"):  # fmt: skip
            monkeypatch.delenv(key)


def test_hello_fields_carry_the_options_and_what_the_hook_measures(plain_env):
    options = RunOptions(name="resnet", project="vision", batch_size=32, total_steps=100,
                         user="ann")  # fmt: skip
    fields = options.hello_fields(framework="pytorch", framework_version="2.13",
                                  hook="pytorch.track", samples_source="batch_size",
                                  ranks=(1, 1, 2), devices=["0"])  # fmt: skip
    assert fields == {
        "name": "resnet",
        "project": "vision",
        "user": "ann",
        "framework": "pytorch",
        "framework_version": "2.13",
        "hook": "pytorch.track",
        "rank": 1,
        "local_rank": 1,
        "world_size": 2,
        "devices": ["0"],
        "host": socket.gethostname(),
        "batch_size": 32,
        "total_steps": 100,
        "clock": "host_monotonic",
        "samples_source": "batch_size",
        "memory_source": "",
    }  # fmt: skip  (no "meta": no scheduler)
    plain = RunOptions(batch_size=0).hello_fields(framework="keras", framework_version="3",
                                                  hook="keras.fit", samples_source="")  # fmt: skip
    assert plain["name"] == default_name() and plain["user"] == user_name()
    assert plain["batch_size"] is None and plain["total_steps"] is None  # 0: not counted
    assert (plain["rank"], plain["world_size"]) == (0, 1)


def test_the_run_id_is_the_one_given_else_one_made_from_the_name(plain_env):
    assert RunOptions(name="resnet", run_id="fixed").job_run_id() == "fixed"
    made = RunOptions(name="my model").job_run_id()
    assert made.startswith("my-model-") and os.environ["PROFILER_RUN_ID"] == made
