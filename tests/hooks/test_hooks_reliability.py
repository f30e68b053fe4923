"""The in-training hooks under unusual but legal use: a second ``track()``, a forked child, run
ids the daemon would refuse or rewrite, ``stop()`` twice or from another thread, a handle used
after ``stop()``, an unusable ``PROFILER_HOME``. Each case trains a tiny real torch model in a
subprocess (a real daemon where the promise concerns what the daemon records): training must
finish with its own exit code, no traceback, and the runs must hold exactly the steps made."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, profiler_env, run_cli, wait_for

pytestmark = pytest.mark.slow

PRELUDE = """
import os, sys, threading, time
import torch
from torch import nn
from hooks.pytorch import StepTimer, track

model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)

def train(n, pause=0.0):
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        time.sleep(pause)
"""


def run_py(code: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    """Run PRELUDE + ``code`` in a fresh interpreter from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def ok(out: subprocess.CompletedProcess) -> dict[str, str]:
    """Assert the script exited 0 without a traceback; its ``key=value`` stdout words."""
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return dict(w.split("=", 1) for w in out.stdout.split() if "=" in w)


def ended(env: dict[str, str], run_id: str) -> dict:
    def done():
        runs = json.loads(run_cli(env, "runs", "--json").stdout)
        found = [r for r in runs if r["id"] == run_id]
        return found[0] if found and found[0]["status"] != "running" else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


def all_runs(env: dict[str, str]) -> list[dict]:
    return json.loads(run_cli(env, "runs", "--json").stdout)


# ---- item 1: a second track() ----------------------------------------------------------------


def test_a_second_track_replaces_the_first_and_training_goes_on(daemon):
    out = run_py(
        """
        h = track(name="a", batch_size=8)
        train(10)
        h2 = track(name="b", batch_size=8)
        train(20)
        h2.stop()
        print(f"a={h.run_id} b={h2.run_id} sa={h.steps} sb={h2.steps} e={h.errors + h2.errors}")
        """,
        daemon.env,
    )
    got = ok(out)
    assert got["a"] != got["b"]
    assert (got["sa"], got["sb"], got["e"]) == ("10", "20", "0")
    first, second = ended(daemon.env, got["a"]), ended(daemon.env, got["b"])
    assert (first["status"], first["steps"], first["samples"]) == ("finished", 10, 80)
    assert (second["status"], second["steps"], second["samples"]) == ("finished", 20, 160)


def test_a_second_track_in_the_same_run_carries_on_in_it(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="same-run")
    out = run_py(
        """
        h = track(name="a", batch_size=8)
        train(10)
        h2 = track(name="b", batch_size=8)
        train(20)
        print(f"a={h.run_id} b={h2.run_id} e={h.errors + h2.errors}")
        """,
        env,
    )
    got = ok(out)
    assert got == {"a": "same-run", "b": "same-run", "e": "0"}
    run = ended(env, "same-run")
    assert (run["status"], run["steps"], run["samples"]) == ("finished", 30, 240)


def test_a_global_hook_registered_after_track_does_not_break_the_step(daemon):
    # Before: the hook left torch's global hooks on its first step while torch iterated them,
    # so a later hook in that dict made optimizer.step() raise.
    out = run_py(
        """
        from torch.optim.optimizer import register_optimizer_step_post_hook
        seen = []
        h = track(name="other-hook", batch_size=8)
        register_optimizer_step_post_hook(lambda o, a, k: seen.append(1))
        train(25)
        h.stop()
        print(f"id={h.run_id} steps={h.steps} seen={len(seen)} errors={h.errors}")
        """,
        daemon.env,
    )
    got = ok(out)
    assert (got["steps"], got["seen"], got["errors"]) == ("25", "25", "0")
    run = ended(daemon.env, got["id"])
    assert (run["status"], run["steps"]) == ("finished", 25)


# ---- item 5: fork ----------------------------------------------------------------------------


def test_a_forked_child_with_its_own_track_never_writes_into_the_parents_run(daemon):
    out = run_py(
        """
        h = track(name="parent", batch_size=8)
        train(5)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            h2 = track(name="child", batch_size=8)
            train(50)
            h2.stop()
            os.write(w, f"child={h2.run_id} cs={h2.steps} ce={h2.errors}".encode())
            sys.exit(0)
        train(25)
        _, status = os.waitpid(pid, 0)
        h.stop()
        print(os.read(r, 1000).decode(), f"parent={h.run_id} ps={h.steps} st={status}")
        """,
        daemon.env,
    )
    got = ok(out)
    assert (got["cs"], got["ce"], got["ps"], got["st"]) == ("50", "0", "30", "0")
    parent, child = ended(daemon.env, got["parent"]), ended(daemon.env, got["child"])
    assert (parent["status"], parent["steps"], parent["samples"]) == ("finished", 30, 240)
    assert [len(r["pids"]) for r in parent["ranks"]] == [1]
    assert (child["status"], child["steps"], child["samples"]) == ("finished", 50, 400)


@pytest.mark.parametrize("child_exit", ["os._exit(0)", "sys.exit(0)", "os.kill(os.getpid(), 9)"])
def test_a_plain_forked_child_neither_writes_into_nor_ends_the_parents_run(daemon, child_exit):
    # The child steps the same optimizer for longer than a flush interval, then leaves the way
    # a multiprocessing worker (os._exit), a script (sys.exit) or a crash (SIGKILL) does.
    out = run_py(
        f"""
        h = track(name="parent", batch_size=8)
        train(7, pause=0.02)
        pid = os.fork()
        if pid == 0:
            train(20, pause=0.02)
            {child_exit}
        os.waitpid(pid, 0)
        train(3)
        h.stop()
        print(f"parent={{h.run_id}} ps={{h.steps}} e={{h.errors}}")
        """,
        daemon.env,
    )
    got = ok(out)
    assert (got["ps"], got["e"]) == ("10", "0")
    run = ended(daemon.env, got["parent"])
    assert (run["status"], run["steps"], run["samples"]) == ("finished", 10, 80)
    assert [len(r["pids"]) for r in run["ranks"]] == [1]
    assert [r["id"] for r in all_runs(daemon.env)] == [got["parent"]]


# ---- item 20 (hook side): run ids the daemon would refuse or rewrite --------------------------


@pytest.mark.parametrize("where", ["argument", "env"])
@pytest.mark.parametrize("bad", ["a\nb", "x" * 10_000, "tab\there"])
def test_an_invalid_run_id_is_replaced_with_one_warning_line(daemon, where, bad):
    env = dict(daemon.env)
    if where == "env":
        env["PROFILER_RUN_ID"] = bad
        call = 'track(name="bad-id", batch_size=8)'
    else:
        call = f'track(name="bad-id", batch_size=8, run_id={bad!r})'
    out = run_py(
        f"""
        h = {call}
        train(12)
        h.stop()
        print(f"id={{h.run_id}} steps={{h.steps}} errors={{h.errors}}")
        """,
        env,
    )
    got = ok(out)
    assert got["id"] != bad and got["id"].isprintable() and 0 < len(got["id"]) <= 256
    warnings = [line for line in out.stderr.splitlines() if "run id" in line]
    assert len(warnings) == 1, out.stderr
    assert got["id"] in warnings[0] and "printable" in warnings[0]
    run = ended(env, got["id"])
    assert (run["status"], run["steps"]) == ("finished", 12)
    assert [r["id"] for r in all_runs(env)] == [got["id"]]


def test_the_same_invalid_run_id_gives_every_rank_the_same_replacement(tmp_path):
    # Ranks launched together inherit the same PROFILER_RUN_ID: they must still agree.
    env = profiler_env(tmp_path / "home", PROFILER_AUTOSTART="0", PROFILER_RUN_ID="bad\x01id")
    code = 'h = track(name="r"); print(f"id={h.run_id}"); h.stop()'
    ids = {ok(run_py(code, env))["id"] for _ in range(2)}
    assert len(ids) == 1 and "bad" in next(iter(ids)) and next(iter(ids)).isprintable()


def test_two_tracks_before_the_first_step_as_in_the_report(daemon):
    out = run_py(
        """
        h = track(name="a")
        h2 = track(name="b")
        train(30)
        print(f"a={h.run_id} b={h2.run_id} sa={h.steps} sb={h2.steps} e={h.errors + h2.errors}")
        """,
        daemon.env,
    )
    got = ok(out)
    assert (got["sa"], got["sb"], got["e"]) == ("0", "30", "0")
    assert (ended(daemon.env, got["b"])["status"], ended(daemon.env, got["b"])["steps"]) == (
        "finished",
        30,
    )
    assert ended(daemon.env, got["a"])["status"] == "finished"


# ---- class sweep: stop() twice, from another thread, a handle used after stop() ---------------


def test_stop_twice_from_another_thread_and_steps_after_stop(daemon):
    out = run_py(
        """
        h = track(name="threads", batch_size=8)
        train(15, pause=0.01)
        stopper = threading.Thread(target=h.stop)
        stopper.start()
        train(40)  # the optimizer keeps stepping while another thread stops the run
        stopper.join()
        h.stop(); h.stop("failed")  # later calls do nothing
        after = h.steps
        train(10)
        with h:
            train(5)
        t = StepTimer(name="timer", batch_size=4)
        with t.step():
            pass
        t.stop()
        with t.step():
            pass
        t.stop()
        print(f"id={h.run_id} tid={t.run_id} after={after} steps={h.steps} ts={t.steps}",
              f"e={h.errors + t.errors}")
        """,
        daemon.env,
    )
    got = ok(out)
    assert got["after"] == got["steps"] and 15 <= int(got["steps"]) <= 55
    assert (got["ts"], got["e"]) == ("1", "0")
    run = ended(daemon.env, got["id"])
    assert (run["status"], run["steps"]) == ("finished", int(got["steps"]))
    timer = ended(daemon.env, got["tid"])
    assert (timer["status"], timer["steps"], timer["samples"]) == ("finished", 1, 4)
    assert "cannot reach" not in out.stderr, out.stderr


# ---- class sweep: an unusable PROFILER_HOME or socket path --------------------------------------


@pytest.mark.parametrize("kind", ["plain-file", "proc", "socket-is-a-directory", "too-long"])
def test_an_unusable_home_warns_once_and_training_goes_on(tmp_path, kind):
    home = tmp_path / "home"
    if kind == "plain-file":
        home.write_text("not a directory")
    elif kind == "proc":
        home = Path("/proc/nope")
    elif kind == "socket-is-a-directory":
        (home / "daemon.sock").mkdir(parents=True)
    else:
        home = tmp_path / ("d" * 120)
    env = profiler_env(home, PROFILER_AUTOSTART="1" if kind != "socket-is-a-directory" else "0")
    out = run_py(
        """
        h = track(name="nohome", batch_size=8)
        train(30)
        h.stop()
        t = StepTimer(name="nohome-timer")
        with t.step():
            pass
        t.stop()
        print(f"steps={h.steps} ts={t.steps}")
        """,
        env,
    )
    got = ok(out)
    assert (got["steps"], got["ts"]) == ("30", "1")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("profiler: ") for line in lines), out.stderr
    assert sum("training goes on" in line for line in lines) <= 2, out.stderr  # once per run
    if kind in ("plain-file", "proc"):
        assert "set PROFILER_HOME to a writable directory" in out.stderr, out.stderr


def test_run_id_rules_match_the_daemons(caplog):
    from hooks.runid import RUN_ID_MAX_CHARS, checked_run_id, run_id_problem
    from profiler.ingest.messages import MAX_TEXT, sanitize

    assert RUN_ID_MAX_CHARS == MAX_TEXT
    for good in ["a", "job-1.2_x", "with space", "é" * 256, "x" * 256]:
        assert run_id_problem(good) is None and sanitize(good) == good
        assert checked_run_id(good) == good
    assert checked_run_id(1234) == "1234"
    for bad in ["a\nb", "x" * 257, "tab\there", "nul\x00", "\x1b[31mred"]:
        assert run_id_problem(bad) is not None and sanitize(bad) != bad
        caplog.clear()
        fixed = checked_run_id(bad, "name")
        assert run_id_problem(fixed) is None and sanitize(fixed) == fixed
        assert fixed == checked_run_id(bad, "name")  # the same for every rank
        assert len(caplog.records) == 2 and "\n" not in caplog.records[0].getMessage()
    assert run_id_problem("") == "is empty"


# ---- review: the global step hooks are inside the hook boundary --------------------------------


@pytest.mark.parametrize("broken", ["is_last", "remove"])
def test_an_error_in_the_global_step_hooks_never_reaches_optimizer_step(daemon, broken):
    # Before: _GlobalHooks._on_pre/_on_post called _is_last (torch's private hooks_dict_ref)
    # and RemovableHandle.remove with no try, so their errors went straight out of
    # optimizer.step().
    out = run_py(
        f"""
        import hooks.pytorch as hp
        from torch.utils.hooks import RemovableHandle
        def boom(*a, **k):
            raise RuntimeError("private torch API changed")
        if {broken!r} == "is_last":
            hp._is_last = boom
        else:
            RemovableHandle.remove = boom
        h = track(name="broken-global", batch_size=8)
        train(5)  # the handle moves to its optimizer's own hook: the global pair goes idle
        h.stop()
        train(3)  # the idle global hooks try to remove themselves
        print(f"id={{h.run_id}} steps={{h.steps}} errors={{h.errors}}")
        """,
        daemon.env,
    )
    got = ok(out)
    assert got["steps"] == "5"
    assert int(got["errors"]) >= 1  # counted in the handle, not raised
    run = ended(daemon.env, got["id"])
    assert (run["status"], run["steps"]) == ("finished", 5)
