"""The reply path daemon -> hook over real sockets: the hook takes replies only from the
daemon's user, and a restarted daemon learns the hook's address again from its ``hello``."""

from __future__ import annotations

import os
import socket
import time

import pytest
from conftest import start_daemon, wait_for

from hooks import wire
from hooks.client import Client
from hooks.options import RunOptions

NOBODY = 65534
PRICED_STOP = """
[cost]
pricing = "flat"
gpu_hour_price = 3600
energy_price_kwh = 0
[budget]
per_run = 0.5
on_exceed = "stop"
"""


def client_for(home, run_id: str) -> Client:
    fields = RunOptions(name=run_id, batch_size=1).hello_fields(
        framework="test", framework_version="0", hook="test.reply", samples_source="argument"
    )
    client = Client(run_id, fields, home=home, autostart=False, flush_interval_s=0.02)
    wait_for(lambda: client._reading, timeout=20, what="the client to reach the daemon")
    return client


def forged_stop(run_id: str) -> bytes:
    return wire.encode(wire.budget_reply(
        run_id, "stop", spent=9.0, projected=None, budget=1.0, currency="USD", at_step=0,
        text="forged stop",
    ))  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (nobody)")
def test_a_reply_from_another_user_is_not_taken(tmp_path):
    d = start_daemon(tmp_path / "home")
    client = client_for(tmp_path / "home", "sec-run")
    try:
        address = client._sock.getsockname()
        assert isinstance(address, bytes) and address[:1] == b"\0"  # abstract, kernel-chosen
        child = os.fork()
        if child == 0:  # pragma: no cover - the child of the fork
            code = 1
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.sendto(forged_stop("sec-run"), address)
                code = 0
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0  # it was sent
        wait_for(lambda: client.budget.rejected == 1, what="the forged reply to be refused")
        assert not client.budget.pending and client.budget.stop is None
        # the same datagram from the daemon's user (this test's, here) is taken
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(forged_stop("sec-run"), address)
        s.close()
        wait_for(lambda: client.budget.pending, what="the reply to be taken")
        assert client.budget.rejected == 1
    finally:
        client.close()
        d.stop()


@pytest.mark.slow
def test_a_restarted_daemon_learns_the_reply_address_again_and_stops_the_run(tmp_path):
    home = tmp_path / "home"
    first = start_daemon(home)
    client = client_for(home, "restart-run")
    try:
        n = 0
        start = time.monotonic()
        for _ in range(10):  # a few steps to the first daemon
            n += 1
            client.step(n, time.monotonic() - 0.01, time.monotonic(), 1)
            time.sleep(0.02)
        assert first.stop() == 0
        (home / "profiler.toml").write_text(PRICED_STOP)
        second = start_daemon(home)
        try:
            deadline = time.monotonic() + 30
            while not client.budget.pending and time.monotonic() < deadline:
                n += 1
                client.step(n, time.monotonic() - 0.01, time.monotonic(), 1)
                time.sleep(0.02)
            assert client.budget.pending, "the restarted daemon's stop never arrived"
            assert client.budget.stop.event == "stop" and client.budget.stop.budget == 0.5
            assert client.budget.stop.spent >= 0.5
            assert time.monotonic() - start < 30
        finally:
            client.close()
            second.stop()
    finally:
        if first.proc.poll() is None:
            first.stop()
