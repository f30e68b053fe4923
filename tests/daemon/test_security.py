"""Who may write to the daemon, what it exposes, what it keeps: real daemons, real sockets, and a
second real user (``nobody``) where the test runs as root."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import profiler_env, run_cli, sample_value, start_daemon, wait_for

from hooks import wire

SCRIPTS = Path(__file__).parents[1] / "scripts"
NOBODY = 65534  # uid and gid of nobody/nogroup on Debian


def rejected(d, reason: str) -> float:
    return sample_value(d.metrics(), "profiler_messages_rejected_total", reason=reason) or 0


def test_files_are_owner_only_and_the_token_is_never_written(tmp_path):
    """Socket, ledger (and its WAL), status, log and lock files: 0600; the home: 0700. The
    Grafana token (here refused by an unreachable Grafana) shows up in no file and no output."""
    token = "glsa_SECRET_token_0123456789"
    home = tmp_path / "home"
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there: annotations fail and are logged
    env = profiler_env(home, PROFILER_GRAFANA_URL=f"http://127.0.0.1:{port}", GRAFANA_TOKEN=token)
    outputs = []
    start = run_cli(env, "start")
    assert start.returncode == 0, start.stderr
    try:
        train = subprocess.run(
            [sys.executable, str(SCRIPTS / "train_tiny.py"), "--steps", "20"],
            env=dict(env, PROFILER_RUN_ID="sec-files"), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert train.returncode == 0, train.stderr
        runs = lambda: json.loads(run_cli(env, "runs", "--json").stdout)  # noqa: E731
        wait_for(lambda: any(r["status"] == "finished" for r in runs()), what="run end")
        for args in (("status", "--json"), ("status",), ("runs",)):
            out = run_cli(env, *args)
            outputs.append(out.stdout + out.stderr)
        listing = {p.name: stat.S_IMODE(p.stat().st_mode) for p in home.iterdir()}
    finally:
        stop = run_cli(env, "stop")
        outputs.append(stop.stdout + stop.stderr + start.stdout + start.stderr)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert {"daemon.sock", "ledger.sqlite", "ledger.sqlite-wal", "daemon.json", "daemon.log",
            "daemon.lock"} <= set(listing), listing  # fmt: skip
    assert all(mode == 0o600 for mode in listing.values()), listing
    assert "Grafana" in (home / "daemon.log").read_text()  # the failure was logged...
    for p in home.iterdir():
        assert token.encode() not in p.read_bytes(), p  # ...without the token
    assert not any(token in text for text in outputs)


def test_metrics_listen_on_loopback_unless_configured(daemon):
    assert daemon.status["metrics_url"].startswith("http://127.0.0.1:")
    listening = [
        c.laddr
        for c in psutil.Process(daemon.proc.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_a_flood_of_run_ids_is_capped_and_finished_runs_make_room(tmp_path):
    d = start_daemon(tmp_path / "home", PROFILER_MAX_RUNS="20")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(d.home / "daemon.sock")
    pid = os.getpid()
    try:
        for i in range(300):
            msg = wire.hello(f"flood-{i}", pid, name="x" * 5000, mono=time.monotonic(),
                             wall=time.time())  # fmt: skip
            while True:
                try:
                    sock.sendto(wire.encode(msg), path)
                    break
                except BlockingIOError:
                    time.sleep(0.01)
        wait_for(lambda: rejected(d, "too_many_runs") == 280, what="280 refusals")
        text = d.metrics()
        live = {ln.split('run="')[1].split('"')[0] for ln in text.splitlines()
                if ln.startswith("profiler_run_info{")}  # fmt: skip
        assert live == {f"flood-{i}" for i in range(20)}
        name = next(ln for ln in text.splitlines() if ln.startswith("profiler_run_info{"))
        assert 'name="' + "x" * 256 + '"' in name and "x" * 257 not in name  # bounded labels
        for i in range(20):  # the first twenty end; new runs may take their place
            sock.sendto(wire.encode(wire.bye(f"flood-{i}", pid, "finished", time.monotonic())),
                        path)  # fmt: skip
        wait_for(lambda: sum(r["status"] == "finished" for r in d.runs()) == 20, what="ends")
        for i in range(300, 310):
            msg = wire.hello(f"flood-{i}", pid, mono=time.monotonic(), wall=time.time())
            sock.sendto(wire.encode(msg), path)
        wait_for(lambda: len(d.runs()) == 30, what="ten new runs in the ledger")
        assert rejected(d, "too_many_runs") == 280
        assert d.proc.poll() is None
    finally:
        d.stop()


# ---- a second user ----------------------------------------------------------------------


def _python_for_nobody() -> str | None:
    """A Python interpreter the nobody user may run (this venv's may sit under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3",
                      shutil.which("python3")):  # fmt: skip
        if not candidate or not os.path.exists(candidate):
            continue
        try:
            ok = subprocess.run([candidate, "-c", "pass"], user=NOBODY, group=NOBODY,
                                capture_output=True, timeout=30)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        if ok.returncode == 0:
            return candidate
    return None


SELF = 2147483000  # stands for the sending process's own pid in messages sent as nobody
SEND_AS_NOBODY = """
import json, os, socket, sys
path, datagrams, me = sys.argv[1], json.loads(sys.stdin.read()), str(os.getpid())
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
out = []
for text in datagrams:
    try:
        s.sendto(text.replace(sys.argv[2], me).encode(), path)
        out.append("sent")
    except OSError as e:
        out.append(type(e).__name__)
print(json.dumps({"pid": os.getpid(), "results": out}))
"""


def send_as_nobody(python: str, path: Path, messages: list[dict]) -> dict:
    """Send ``messages`` (wire-encoded here, in the hooks' format) from a process of user
    nobody; report what each send did and that process's pid."""
    datagrams = [wire.encode(m).decode() for m in messages]
    out = subprocess.run(
        [python, "-c", SEND_AS_NOBODY, str(path), str(SELF)], input=json.dumps(datagrams),
        user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def shared_home():
    """A home under a directory other users may pass through (pytest's tmp dirs are 0700)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user (nobody)")
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter the nobody user can run")
    top = Path(tempfile.mkdtemp(prefix="profiler-sec-"))
    top.chmod(0o711)
    yield top / "home", python
    shutil.rmtree(top, ignore_errors=True)


def test_another_user_cannot_reach_an_owner_only_socket(shared_home):
    home, python = shared_home
    d = start_daemon(home)
    try:
        assert stat.S_IMODE((home / "daemon.sock").stat().st_mode) == 0o600
        hello = wire.hello("intruder", SELF, name="x", mono=1.0, wall=time.time())
        result = send_as_nobody(python, home / "daemon.sock", [hello])
        assert result["results"] == ["PermissionError"]
        assert d.runs() == []
    finally:
        d.stop()


def test_with_a_socket_group_users_write_only_their_own_runs_and_processes(shared_home):
    """socket_group lets nobody's group in. The daemon takes each sender's uid and pid from the
    kernel: nobody may open and feed its own run, but not add steps to root's run, not speak
    for root's process, and not pass off its steps as another pid's."""
    home, python = shared_home
    d = start_daemon(home, PROFILER_SOCKET_GROUP="nogroup")
    path = home / "daemon.sock"
    me = os.getpid()  # root's "training process"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660 and path.stat().st_gid == NOBODY
        assert stat.S_IMODE(home.stat().st_mode) == 0o710
        now = time.monotonic()
        sock.sendto(wire.encode(wire.hello("root-run", me, name="r", mono=now,
                                           wall=time.time())), str(path))  # fmt: skip
        sock.sendto(wire.encode(wire.steps("root-run", me, [[1, now, now + 0.1, 4]])), str(path))
        wait_for(lambda: [r["steps"] for r in d.runs()] == [1], what="root's step")

        row = [[1, now, now + 0.1, 4]]
        proxy_hello = dict(wire.hello("nobody-proxy", me, name="p", mono=now, wall=time.time()),
                           proxy=True)  # fmt: skip
        result = send_as_nobody(python, path, [
            # its own run, claiming to be pid 1: the kernel's pid is recorded instead
            wire.hello("nobody-run", 1, name="n", mono=now, wall=time.time()),
            wire.steps("nobody-run", 1, row + [[2, now + 0.1, now + 0.2, 4]]),
            # root's run: refused
            wire.steps("root-run", SELF, row * 5),
            wire.bye("root-run", SELF, "failed", now + 1),
            # speaking for root's process: refused
            proxy_hello,
        ])  # fmt: skip
        assert result["results"] == ["sent"] * 5
        wait_for(lambda: rejected(d, "pid_not_owned") == 1, what="the proxy refused")
        assert rejected(d, "run_not_owned") == 2
        runs = wait_for(lambda: len(rs := d.runs()) == 2 and {r["id"]: r for r in rs},
                        what="nobody's run in the ledger")  # fmt: skip
        assert set(runs) == {"root-run", "nobody-run"}
        assert runs["root-run"]["steps"] == 1 and runs["root-run"]["status"] == "running"
        assert runs["nobody-run"]["steps"] == 2
        assert [r["pids"] for r in runs["nobody-run"]["ranks"]] == [[result["pid"]]]
    finally:
        d.stop()
