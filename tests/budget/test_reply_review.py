"""Review of the reply path (issue 18): a hook takes a budget reply only for its own run.

An abstract address is the kernel's choice and may later name another process (one that
exited and whose name was handed out again, or, with the daemon in another network namespace,
a different process of that namespace): a reply sent there by the daemon carries the daemon's
uid, so the uid check alone would let a stop for one run end another run."""

from __future__ import annotations

import socket

from conftest import start_daemon, wait_for
from test_reply_path import client_for, forged_stop


def test_a_stop_for_another_run_is_not_taken(tmp_path):
    d = start_daemon(tmp_path / "home")
    client = client_for(tmp_path / "home", "mine")
    try:
        address = client._sock.getsockname()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.sendto(forged_stop("someone-else"), address)  # the daemon's uid, another run
            wait_for(lambda: client.budget.rejected == 1, what="the reply to be refused")
            assert not client.budget.pending and client.budget.stop is None
            s.sendto(forged_stop("mine"), address)  # the same, for this run: taken
            wait_for(lambda: client.budget.pending, what="the reply to be taken")
            assert client.budget.stop is not None and client.budget.stop.run == "mine"
            assert client.budget.rejected == 1
        finally:
            s.close()
    finally:
        client.close()
        d.stop()


def test_a_stop_that_reaches_no_process_is_said_in_the_log(tmp_path, caplog):
    """A stop the daemon could not deliver (the hook's abstract address is not in the daemon's
    network namespace: a container with its own, the daemon's socket mounted in) is not done:
    the daemon says so in one log line per process, naming the pid and the likely cause."""
    import dataclasses
    import logging
    import os

    from inprocess import advance, hello, make_daemon, pricing

    from profiler.budget.settings import budget_settings
    from profiler.ingest.messages import Sender

    d, _sim, clock = make_daemon(tmp_path, [[(100000.0, 300.0)]])
    d.set_pricing(pricing(kind="flat", gph=3600.0, kwh=0.0))
    d.budgets.settings = budget_settings({"per_run": 0.5, "on_exceed": "stop"})
    pid = os.getpid()
    nowhere = b"\0profiler-test-nobody-binds-this-" + str(pid).encode()
    msg = dataclasses.replace(
        hello("far", pid, clock.now), sender=Sender(pid, os.getuid(), os.getgid()),
        reply_to=nowhere,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="profiler.budget.enforcer"):
        d.handle(msg)
        advance(d, clock, 5.0)
        advance(d, clock, 5.0)  # a second stop check: still one line
    assert [r.event for r in d.budgets.records] == ["warn", "stop"]
    lines = [r.getMessage() for r in caplog.records if "could not reach" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert f"pid {pid}" in lines[0] and "far" in lines[0] and "network namespace" in lines[0]
