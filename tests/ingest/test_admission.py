"""Message admission (profiler.ingest.admission): root speaks for anyone, other users only for
their own runs and their own processes, nobody from the future; the run's owner is the target
process's for a proxy. Kernel credentials as the receiver gives them, real pids."""

from __future__ import annotations

import os
import subprocess

from profiler.accounting.runs import ProcessInfo, Run
from profiler.ingest.admission import FUTURE_SLACK_S, latest_mono, owner_of, refusal
from profiler.ingest.messages import Bye, Hello, Sender, StepBatch

# The user who sends: this one, or "nobody" when the tests run as root (root may do anything).
USER = os.getuid() or 65534
OTHER = USER + 4242  # no process runs as this uid


def spawn() -> subprocess.Popen:
    """A process of USER's."""
    return subprocess.Popen(["sleep", "30"], **({"user": USER} if os.getuid() == 0 else {}))


def hello(pid: int, sender: Sender | None, *, mono: float = 10.0, proxy: bool = False) -> Hello:
    return Hello("r", pid, {"mono": mono}, proxy=proxy, sender=sender)


def test_latest_time_of_each_message():
    assert latest_mono(hello(1, None, mono=5.0)) == 5.0
    rows = ((1, 1.0, 2.0, 8, None), (2, 2.0, 7.5, 8, None))
    assert latest_mono(StepBatch("r", 1, rows, 0)) == 7.5
    assert latest_mono(StepBatch("r", 1, (), 0)) == float("-inf")
    assert latest_mono(Bye("r", 1, "finished", None)) == float("-inf")


def test_who_may_speak_for_which_run():
    me = Sender(os.getpid(), USER, USER)
    theirs = Run(id="r", name="r", owner_uid=OTHER)
    mine = Run(id="r", name="r", owner_uid=USER)

    def ask(msg, run, now=10.0):
        return refusal(msg, now_mono=now, find_run=lambda run_id: run)

    assert ask(hello(os.getpid(), None), theirs) is None  # in-process: no credentials
    assert ask(hello(os.getpid(), Sender(1, 0, 0)), theirs) is None  # root
    assert ask(hello(os.getpid(), me), None) is None  # a new run
    assert ask(hello(os.getpid(), me), mine) is None
    assert ask(hello(os.getpid(), me), theirs) == "run_not_owned"
    late = hello(os.getpid(), Sender(1, 0, 0), mono=10.0 + FUTURE_SLACK_S + 1)
    assert ask(late, None) == "time_in_future"  # even for root


def test_a_proxy_speaks_only_for_its_users_processes():
    me = Sender(os.getpid(), USER, USER)
    child = spawn()
    try:
        ok = hello(child.pid, me, proxy=True)
        assert refusal(ok, now_mono=10.0, find_run=lambda run_id: None) is None
        assert owner_of(ok) == USER
        root = hello(child.pid, Sender(os.getpid(), 0, 0), proxy=True)  # root's attach
        assert owner_of(root) == USER  # the target's owner gets the run
        init = hello(1, me, proxy=True)  # root's process: not the user's to speak for
        assert refusal(init, now_mono=10.0, find_run=lambda run_id: None) == "pid_not_owned"
    finally:
        child.kill()
        child.wait()
    gone = hello(child.pid, me, proxy=True)  # reaped: no owner to read
    assert refusal(gone, now_mono=10.0, find_run=lambda run_id: None) == "pid_not_found"
    known = Run(id="r", name="r", owner_uid=USER, processes={child.pid: ProcessInfo(child.pid)})
    assert refusal(gone, now_mono=10.0, find_run=lambda run_id: known) is None  # its own run's
    assert owner_of(hello(child.pid, None)) is None  # no credentials, no owner
