"""The CLI's process management against what goes wrong: an unusable home, a corrupt or lying
``daemon.json``, concurrent starts, a killed ``profiler run``, closed pipes, run ids the daemon
would change, a command that cannot start, and no torch for the demo. Real processes, real
daemons on private homes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, DaemonProcess, profiler_env, run_cli, sample_value, wait_for

from profiler.daemon.lifecycle import WATCHED_GRACE_S
from profiler.daemon.lock import lock_state

PROFILER = [sys.executable, "-m", "profiler"]


def one_line(stderr: str, *needles: str, prefix: str = "profiler: error: ") -> str:
    """The single line of ``stderr``, which starts with ``prefix`` and holds every needle."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def ro_tmpfs(tmp_path: Path) -> Path:
    """A read-only tmpfs (root's chmod does not stop root's writes); skip where we cannot
    mount."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)],
                          capture_output=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    return mnt


@pytest.fixture(params=["missing-under-proc", "plain-file", "read-only-mount"])
def unusable_home(request, tmp_path):
    if request.param == "missing-under-proc":
        yield Path("/proc/nope")
    elif request.param == "plain-file":
        home = tmp_path / "home"
        home.write_text("not a folder")
        yield home
    else:
        mnt = ro_tmpfs(tmp_path)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


def kill_daemon_of(home: Path) -> None:
    """Clean-up after a failing test: stop a daemon left on ``home``."""
    state = lock_state(home / "daemon.lock")
    if state.held and state.pid:
        os.kill(state.pid, signal.SIGTERM)
        wait_for(lambda: not lock_state(home / "daemon.lock").held, timeout=20, what="stop")


# ---- an unusable home (items 2, 13) ------------------------------------------------------------


def test_run_with_an_unusable_home_runs_the_command_unprofiled(unusable_home):
    env = profiler_env(unusable_home)
    out = subprocess.run([*PROFILER, "run", "--", "sh", "-c", "echo hi; exit 3"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 3 and out.stdout == "hi\n"
    one_line(out.stderr, "PROFILER_HOME", "without profiling", prefix="profiler: warning: ")


def test_start_daemon_and_demo_with_an_unusable_home_say_one_line(unusable_home):
    env = profiler_env(unusable_home)
    for command in ("start", "daemon", "demo"):
        out = run_cli(env, command, timeout=60)
        assert out.returncode == 2, out.stderr
        one_line(out.stderr, f"PROFILER_HOME={unusable_home} cannot be used")


# ---- a corrupt or lying daemon.json (items 15, 17) ---------------------------------------------


def test_corrupt_status_file_the_daemon_is_still_found_and_stopped(daemon: DaemonProcess):
    (daemon.home / "daemon.json").write_text('{"pid": 12')
    pid = daemon.proc.pid
    out = run_cli(daemon.env, "status")
    assert out.returncode == 0 and "None" not in out.stdout
    assert f"daemon running (pid {pid}), but" in out.stdout and "corrupt" in out.stdout
    out = run_cli(daemon.env, "status", "--json")
    status = json.loads(out.stdout)
    assert (
        status["running"] is True and status["pid"] == pid and "corrupt" in status["status_error"]
    )
    out = run_cli(daemon.env, "start")
    assert out.returncode == 0 and f"already running (pid {pid})" in out.stdout
    out = run_cli(daemon.env, "watch", "--once")
    assert out.returncode == 1
    one_line(out.stderr, f"the daemon runs (pid {pid})", "corrupt")
    out = run_cli(daemon.env, "stop")
    assert out.returncode == 0 and f"daemon stopped (pid {pid})" in out.stdout, out
    assert daemon.proc.wait(timeout=20) == 0


def test_stop_signals_only_the_lock_holder_not_the_pid_in_the_status_file(daemon):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        status = json.loads((daemon.home / "daemon.json").read_text())
        (daemon.home / "daemon.json").write_text(json.dumps(dict(status, pid=victim.pid)))
        out = run_cli(daemon.env, "stop")
        assert out.returncode == 0 and f"daemon stopped (pid {daemon.proc.pid})" in out.stdout
        assert daemon.proc.wait(timeout=20) == 0
        assert victim.poll() is None  # not signalled
    finally:
        victim.kill()
        victim.wait()


def test_stop_refuses_a_lock_held_by_a_process_that_is_not_a_daemon(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    holder = subprocess.Popen([
        sys.executable, "-c",
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(home / 'daemon.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n",
    ], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        (home / "daemon.json").write_text(json.dumps({"pid": holder.pid}))
        out = run_cli(profiler_env(home), "stop")
        assert out.returncode == 2
        one_line(out.stderr, "nothing was signalled", f"pid {holder.pid}")
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_stop_with_a_stale_status_file_and_no_daemon_signals_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    victim = subprocess.Popen(["sleep", "60"])
    try:
        (home / "daemon.lock").touch()
        (home / "daemon.json").write_text(json.dumps({"pid": victim.pid}))
        out = run_cli(profiler_env(home), "stop")
        assert out.returncode == 1 and "no daemon running" in out.stdout
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


# ---- concurrent starts (item 16) ----------------------------------------------------------------


def test_five_concurrent_starts_make_one_daemon_and_all_succeed(tmp_path):
    home = tmp_path / "home"
    env = profiler_env(home)
    procs = [subprocess.Popen([*PROFILER, "start"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(5)]  # fmt: skip
    try:
        outs = [p.communicate(timeout=90) for p in procs]
        assert [p.returncode for p in procs] == [0] * 5, outs
        started = [o for o, _e in outs if o.startswith("daemon started (pid ")]
        already = [o for o, _e in outs if o.startswith("daemon already running (pid ")]
        assert len(started) == 1 and len(already) == 4, outs
        pid = lock_state(home / "daemon.lock").pid
        assert all(f"(pid {pid})" in o for o, _e in outs), (pid, outs)
    finally:
        kill_daemon_of(home)


# ---- a killed `profiler run` (item 6) ------------------------------------------------------------


def test_run_whose_wrapper_is_killed_ends_with_its_child(daemon):
    life = 3.0
    wrapper = subprocess.Popen(
        [*PROFILER, "run", "--run-id", "orphan", "--quiet", "--",
         sys.executable, "-c", f"import time; time.sleep({life})"],
        env=daemon.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: any(r["id"] == "orphan" for r in daemon.runs()), timeout=30, what="run")
    wrapper.send_signal(signal.SIGKILL)
    wrapper.wait()

    def ended():
        found = [r for r in daemon.runs() if r["id"] == "orphan" and r["status"] != "running"]
        return found[0] if found else None

    run = wait_for(ended, timeout=30, what="the run to end")
    assert run["status"] == "lost"  # nobody reported the child's exit status
    # the child's life, as found by the once-a-second check; no wait for a bye that cannot come
    assert life - 1.0 <= run["duration_s"] < life + WATCHED_GRACE_S - 1.0, run
    assert run["gpu_seconds"] <= run["duration_s"] + 1e-6
    assert run["gpu_seconds"] >= run["duration_s"] - 1.0, run


# ---- closed pipes (item 12) ----------------------------------------------------------------------


def closed_stdout(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run the CLI with its stdout a pipe nobody reads (closed before it writes)."""
    proc = subprocess.Popen([*PROFILER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


@pytest.mark.parametrize("args", [
    ["runs"], ["runs", "--json", "--limit", "5000"], ["status"], ["status", "--json"],
    ["prices"], ["prices", "--list"], ["--help"], ["run", "--help"], ["--version"],
])  # fmt: skip
def test_closed_stdout_ends_quietly(daemon, args):
    # stdout is closed before the command's first write, so every one of these (argparse's
    # --help and --version included) fails to write: 141, as `yes | head -0` ends, never 0.
    out = closed_stdout(daemon.env, *args)
    assert out.stderr == "" and out.returncode == 128 + signal.SIGPIPE, out


def test_closed_stdout_without_a_daemon_ends_quietly(tmp_path):
    out = closed_stdout(profiler_env(tmp_path), "status")
    assert out.stderr == "" and out.returncode == 128 + signal.SIGPIPE


def test_run_keeps_the_childs_exit_status_when_stderr_is_closed(daemon):
    proc = subprocess.Popen([*PROFILER, "run", "--run-id", "closed-err", "--", "sh", "-c",
                             "exit 3"], env=daemon.env, stderr=subprocess.PIPE)  # fmt: skip
    proc.stderr.close()
    assert proc.wait(timeout=60) == 3


# ---- what the user gave is refused, never changed (item 20) -------------------------------------


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--run-id", "a\nb", "--", "true"], "--run-id 'a\\nb': a control character"),
    (["run", "--run-id", "x" * 10_000, "--", "true"], "10,000 characters, at most 256"),
    (["run", "--run-id", "", "--", "true"], "--run-id '': empty"),
    (["run", "--name", "a\tb", "--", "true"], "--name"),
    (["run", "--project", "p" * 300, "--", "true"], "--project"),
    (["run", "--meta", "k=" + "v" * 300, "--", "true"], "the value has 300 characters"),
    (["run", "--meta", " k=v", "--", "true"], "no spaces around it"),
    (["detach", "a\nb"], "RUN_OR_PID"),
])  # fmt: skip
def test_flags_the_daemon_would_change_are_refused(tmp_path, args, needle):
    home = tmp_path / "home"
    try:
        out = run_cli(profiler_env(home), *args)
        assert out.returncode == 2 and out.stdout == ""
        one_line(out.stderr, needle)
        assert not (home / "daemon.lock").exists()  # refused before any daemon starts
    finally:
        kill_daemon_of(home)


def test_attach_refuses_a_bad_run_id(tmp_path):
    job = subprocess.Popen(["sleep", "60"])
    try:
        out = run_cli(profiler_env(tmp_path), "attach", str(job.pid), "--run-id", "a\nb")
        assert out.returncode == 2
        one_line(out.stderr, "--run-id")
    finally:
        job.kill()
        job.wait()
        kill_daemon_of(tmp_path)


def test_a_bad_run_id_from_the_environment_is_refused_by_name(tmp_path):
    env = profiler_env(tmp_path, PROFILER_RUN_ID="job\x1b[2J")
    try:
        out = run_cli(env, "run", "--", "true")
        assert out.returncode == 2
        one_line(out.stderr, "PROFILER_RUN_ID", "control character")
    finally:
        kill_daemon_of(tmp_path)


# ---- a command that cannot start (item 21) -------------------------------------------------------


def test_run_of_a_missing_command_leaves_no_daemon_it_started(tmp_path):
    home = tmp_path / "home"
    try:
        out = run_cli(profiler_env(home), "run", "--", str(tmp_path / "nonexistent"), timeout=60)
        assert out.returncode == 127
        one_line(out.stderr, "cannot run", "No such file or directory")
        assert not lock_state(home / "daemon.lock").held
    finally:
        kill_daemon_of(home)


def test_run_of_a_missing_command_leaves_a_running_daemon_running(daemon):
    out = run_cli(daemon.env, "run", "--", "/nonexistent", timeout=60)
    assert out.returncode == 127
    assert daemon.proc.poll() is None and lock_state(daemon.home / "daemon.lock").held


# ---- the demo without torch (newcomer) -----------------------------------------------------------

BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name=name)
sys.meta_path.insert(0, Block())
from profiler.cli.main import main
sys.exit(main(["demo", "--seconds", "1"]))
"""


def test_demo_without_torch_says_what_to_install(tmp_path):
    env = profiler_env(tmp_path / "home")
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    try:
        assert out.returncode == 2 and out.stdout == ""
        one_line(out.stderr, "torch is not installed", "pip install torch")
        assert not (tmp_path / "home" / "daemon.lock").exists()
    finally:
        kill_daemon_of(tmp_path / "home")


def test_demo_training_without_torch_says_one_line(tmp_path):
    script = BLOCK_TORCH.replace(
        'from profiler.cli.main import main\nsys.exit(main(["demo", "--seconds", "1"]))',
        "import runpy\nrunpy.run_module('profiler.cli.demo_train', run_name='__main__')",
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1
    one_line(out.stderr, "pip install torch", prefix="profiler demo: cannot import torch")


# ---- review: one check for every label value the daemon keeps as given ---------------------------


def test_one_label_check_serves_run_ids_flags_and_the_host_name(tmp_path):
    from hooks.runid import LABEL_MAX_CHARS, label_problem, run_id_problem
    from profiler.cli.errors import CliError
    from profiler.cli.run import check_label, check_run_id
    from profiler.config import ConfigError, load_config
    from profiler.ingest.messages import MAX_TEXT, sanitize

    assert LABEL_MAX_CHARS == MAX_TEXT
    good = ["a", "job-1.2_x", "with space", "é" * 256, "x" * 256]
    bad = ["", "a\nb", "x" * 257, "tab\there", "nul\x00", "\x1b[31mred", "nb\xa0sp", "ls\u2028"]
    for text in good + bad:
        why = label_problem(text)
        assert (why is None) == (text in good) == (sanitize(text) == text and text != ""), text
        assert (run_id_problem(text) is None) == (why is None)
        refused = []
        for check in (check_run_id, lambda t: check_label("--name", t)):
            try:
                check(text)
            except CliError as e:
                refused.append(str(e))
        try:
            load_config(env={"PROFILER_HOME": str(tmp_path), "PROFILER_HOSTNAME": text})
        except ConfigError as e:
            refused.append(str(e))
        # An empty environment variable counts as unset, so the host name check sees only "good"
        # and non-empty bad values.
        assert len(refused) == (0 if why is None else 2 if text == "" else 3), (text, refused)
        assert all(why in line for line in refused[:2]) and all("\n" not in r for r in refused)
    assert label_problem("a\nb") == "a control character '\\n'"
    assert label_problem("nb\xa0sp") == "an unprintable character '\\xa0'"
    assert label_problem("x" * 300) == "300 characters, at most 256"
    assert label_problem("k" * 65, 64) == "65 characters, at most 64"


# ---- review: profiler run's clean-up after a command that cannot start ---------------------------


def _missing_command_with_a_daemon_it_started(monkeypatch, capsys, tmp_path, config, status):
    """``profiler run`` of a missing command, as if this call had started the daemon
    ``status`` names; its exit code and stderr lines."""
    from profiler.cli import run as proxy

    monkeypatch.setattr(proxy, "ensure_daemon", lambda config, required: (status, True))
    code = proxy.run_command(config, [str(tmp_path / "nonexistent")], run_id="spawn-fails")
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_failed_spawn_whose_daemon_will_not_stop_keeps_exit_127(monkeypatch, capsys, tmp_path):
    # Before: stop_daemon's error (the daemon did not stop in time) left run_command, and
    # `profiler run` exited 2 instead of the shell's 127.
    from profiler.cli import run as proxy
    from profiler.config import load_config
    from profiler.daemon.control import ControlError

    def slow_stop(config, status, timeout_s=15.0):
        raise ControlError("daemon pid 4242 did not stop within 15 s; `kill -9 4242` forces it")

    monkeypatch.setattr(proxy, "stop_daemon", slow_stop)
    monkeypatch.setattr(proxy, "_untouched", lambda status: True)
    config = load_config(env=profiler_env(tmp_path))
    code, lines = _missing_command_with_a_daemon_it_started(
        monkeypatch, capsys, tmp_path, config, {"pid": 4242, "metrics_url": ""}
    )
    assert code == 127
    assert len(lines) == 2 and "cannot run" in lines[0], lines
    assert lines[1].startswith("profiler: warning: ") and "kill -9 4242" in lines[1], lines


def test_a_failed_spawn_leaves_a_daemon_that_another_process_reached(
    monkeypatch, capsys, tmp_path, daemon
):
    # Before: run_command stopped the daemon it had started even when a hook of another
    # process had begun a run on it in the meantime.
    from profiler.cli import run as proxy
    from profiler.config import load_config

    config = load_config(env=daemon.env)
    other = subprocess.Popen(["sleep", "60"])
    try:
        hello = proxy.hello_for("other-run", other.pid, name="other", project="", meta={},
                                hook="test", watched=True)  # fmt: skip
        assert proxy.send(config, hello)
        wait_for(lambda: sample_value(daemon.metrics(), "profiler_messages_received_total"),
                 what="the daemon to receive the other run's hello")  # fmt: skip
        code, lines = _missing_command_with_a_daemon_it_started(
            monkeypatch, capsys, tmp_path, config, daemon.status
        )
        assert code == 127 and len(lines) == 1 and "cannot run" in lines[0], lines
        assert daemon.proc.poll() is None and lock_state(config.lock_file).held
    finally:
        other.kill()
        other.wait()


FAKE_DAEMON = """
import fcntl, json, os, signal, sys, time
home = sys.argv[1]
lock = open(os.path.join(home, "daemon.lock"), "w")
fcntl.flock(lock, fcntl.LOCK_EX)
status = {"pid": os.getpid(), "version": "0.0.9", "home": home}
if sys.argv[2] == "new":
    status["exit_report"] = True
with open(os.path.join(home, "daemon.json"), "w") as f:
    json.dump(status, f)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # exits 0, writes no daemon.exit.json
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("kind", ["old", "new"])
def test_stop_of_a_daemon_that_leaves_no_exit_report(tmp_path, kind):
    # Before: stop exited 1 with an error for a daemon from before exit reports (it writes
    # none), though it stopped as asked. Its final write is still never claimed.
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "old_daemon.py"  # a name that looks like a daemon's program
    script.write_text(FAKE_DAEMON)
    proc = subprocess.Popen([sys.executable, str(script), str(home), kind],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        out = run_cli(profiler_env(home), "stop")
        assert proc.wait(timeout=20) == 0
        if kind == "old":
            assert out.returncode == 0 and out.stderr == "", out
            lines = out.stdout.strip().splitlines()
            assert len(lines) == 1 and f"daemon stopped (pid {proc.pid})" in lines[0]
            assert "cannot be confirmed" in lines[0] and "worked" not in lines[0]
        else:  # it promised a report and left none: its final write is unknown
            assert out.returncode == 1 and out.stdout == ""
            one_line(out.stderr, f"daemon stopped (pid {proc.pid}) without saying whether")
    finally:
        proc.kill()
        proc.wait()
