"""Zero-code profiling: ``profiler run``, ``attach`` and ``detach`` against a real daemon, with
real torch (and Keras) training subprocesses that have no profiler line in them, real signals
(``kill`` and a terminal's Ctrl-C through a pty), a DataLoader's worker processes, ``--hooks``
step timing, and the Slurm scripts in a fake Slurm environment; plus the pieces they rest on
(process trees, the ``hello`` metadata, the autoload ``sitecustomize``) in-process."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, DaemonProcess, run_cli, start_daemon, wait_for

from hooks.client import proxied
from hooks.runid import env_meta
from profiler.cli.run import AUTOLOAD_DIR, command_name, exit_status
from profiler.sensors.procs import process_tree_cpu_seconds

SCRIPTS = REPO / "tests" / "scripts"
PLAIN = str(SCRIPTS / "train_plain.py")
WAIT_SIGNAL = str(SCRIPTS / "wait_signal.py")
SLURM = REPO / "deploy" / "slurm"
PROFILER_BIN = str(Path(sys.executable).parent / "profiler")
slow = pytest.mark.slow
FAKE_SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_USER": "ada",
    "SLURM_JOB_ACCOUNT": "vision",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_PROCID": "0",
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    d = start_daemon(tmp_path_factory.mktemp("run-command") / "home")
    yield d
    if d.proc.poll() is None:
        d.stop()


def profiler_run(
    d: DaemonProcess, *args: str, stdin: str | None = None, timeout: float = 90, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "profiler", "run", *args],
        env=dict(d.env, **env), input=stdin, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def run_of(d: DaemonProcess, run_id: str, *, ended: bool = True) -> dict:
    def found():
        runs = [r for r in d.runs() if r["id"] == run_id]
        assert len(runs) <= 1
        return runs[0] if runs and (runs[0]["status"] != "running" or not ended) else None

    return wait_for(found, timeout=30, what=f"run {run_id}")


def read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    """Read a pty or pipe until ``marker`` appears (or EOF); AssertionError on timeout."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {marker!r}; got {out!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the pty's other side closed
                break
            if not chunk:
                break
            out += chunk
    return out


def busy_process(seconds: float) -> subprocess.Popen:
    """A process without hooks that keeps a CPU busy for ``seconds``."""
    code = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


# ---- profiler run -----------------------------------------------------------------------------


@slow
def test_run_records_a_torch_training_without_hooks(daemon):
    out = profiler_run(daemon, "--run-id", "zc-torch", "--name", "zero-code", "--",
                       sys.executable, PLAIN, "--steps", "150", "--step-sleep", "0.01")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "plain: steps=150\n"  # the child's output, untouched
    assert "Run zc-torch  (zero-code, no step hook)  finished" in out.stderr
    assert "steps          not timed" in out.stderr and "GPU energy" in out.stderr
    run = run_of(daemon, "zc-torch")  # ended before the command returned (summary printed)
    assert run["status"] == "finished" and run["name"] == "zero-code"
    assert run["gpu_energy_j"] > 0 and run["gpu_seconds"] > 0 and run["simulated"] is True
    assert run["steps"] is None and run["samples"] is None  # not timed: unknown, never 0
    assert run["framework"] == ""
    assert run["cpu_seconds"] > 0.5 and run["cpu_energy_j"] > 0
    assert 0 < run["gpu_seconds"] <= run["duration_s"] + 1e-6


@slow
def test_failing_child_exit_code_stdin_and_output_pass_through(daemon):
    code = (
        "import sys\ndata = sys.stdin.read()\nprint('got', data.strip())\n"
        "print('oops', file=sys.stderr)\nsys.exit(3)\n"
    )
    out = profiler_run(daemon, "--run-id", "zc-fail", "--", sys.executable, "-c", code,
                       stdin="hello\n")  # fmt: skip
    assert out.returncode == 3
    assert out.stdout == "got hello\n"
    assert out.stderr.startswith("oops\n")  # the child's stderr first, then the summary
    assert run_of(daemon, "zc-fail")["status"] == "failed"


@slow
def test_a_command_that_cannot_run_is_one_line_and_exit_127(daemon):
    out = profiler_run(daemon, "--", "no-such-command-zc")
    assert out.returncode == 127
    assert out.stderr.strip().splitlines() == [
        "profiler: error: cannot run 'no-such-command-zc': No such file or directory; "
        "check the name and PATH"
    ]
    out = profiler_run(daemon)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "give the command to run after --" in out.stderr


@slow
def test_dataloader_workers_are_one_run_and_hooks_count_exact_steps(daemon):
    before = {r["id"] for r in daemon.runs()}
    out = profiler_run(daemon, "--hooks", "--quiet", "--run-id", "zc-workers", "--",
                       sys.executable, PLAIN, "--steps", "120", "--workers", "2")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "plain: steps=120\n" and "Traceback" not in out.stderr
    run = run_of(daemon, "zc-workers")
    assert {r["id"] for r in daemon.runs()} - before == {"zc-workers"}  # one run, no other
    assert run["status"] == "finished" and run["framework"] == "pytorch"
    assert run["steps"] == 120  # every optimizer step once, timed by the automatic hook
    assert run["samples"] is None and run["samples_source"] == "none"  # no batch size known
    assert run["gpu_energy_j"] > 0 and run["cpu_seconds"] > 0


@slow
def test_the_config_switch_turns_hooks_on_without_the_flag(daemon):
    out = profiler_run(daemon, "--quiet", "--run-id", "zc-switch", "--",
                       sys.executable, PLAIN, "--steps", "40", PROFILER_RUN_HOOKS="1")  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = run_of(daemon, "zc-switch")
    assert run["steps"] == 40 and run["framework"] == "pytorch"
    out = profiler_run(daemon, "--quiet", "--", "true", PROFILER_RUN_HOOKS="perhaps")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "PROFILER_RUN_HOOKS" in out.stderr and "true or false" in out.stderr


@slow
def test_explicit_track_and_hooks_never_count_a_step_twice(daemon):
    out = profiler_run(daemon, "--hooks", "--quiet", "--run-id", "zc-explicit", "--",
                       sys.executable, PLAIN, "--steps", "90", "--explicit")  # fmt: skip
    assert out.returncode == 0, out.stderr
    # track() inside the script joined the run of `profiler run` (PROFILER_RUN_ID)
    assert "explicit: run_id=zc-explicit steps=90 errors=0" in out.stdout
    run = run_of(daemon, "zc-explicit")
    assert run["steps"] == 90
    assert run["samples"] == 90 * 8 and run["samples_source"] == "argument"  # track()'s


@slow
def test_keras_fit_gets_the_callback_under_hooks(daemon):
    script = str(SCRIPTS / "fit_plain_keras.py")
    out = profiler_run(daemon, "--hooks", "--quiet", "--run-id", "zc-keras", "--",
                       sys.executable, script, "--fits", "2",
                       KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="2")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "fits=2 batches=32" in out.stdout
    run = run_of(daemon, "zc-keras")
    # both fit() calls in the one run (the child leaves the run's end to `profiler run`)
    assert run["steps"] == 32 and run["samples"] == 32 * 32
    assert run["framework"] == "keras-torch" and run["status"] == "finished"


@slow
def test_sigint_to_profiler_run_reaches_the_child_once(daemon):
    proc = subprocess.Popen(
        [sys.executable, "-m", "profiler", "run", "--run-id", "zc-sigint", "--", sys.executable,
         WAIT_SIGNAL],
        env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert b"ready" in read_until(proc.stdout.fileno(), b"ready")
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, stderr.decode()
    assert b"sigint from=parent\n" in stdout  # forwarded, once
    assert run_of(daemon, "zc-sigint")["status"] == "interrupted"


@slow
def test_terminal_ctrl_c_reaches_the_child_once(daemon):
    """Ctrl-C on a terminal signals the whole foreground process group: the child has it
    already, so `profiler run` must not send it a second one."""
    argv = [sys.executable, "-m", "profiler", "run", "--quiet", "--run-id", "zc-tty", "--",
            sys.executable, WAIT_SIGNAL]  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session with the pty as its terminal
        try:
            os.execve(argv[0], argv, daemon.env)
        finally:
            os._exit(127)
    try:
        out = read_until(fd, b"ready")
        os.write(fd, b"\x03")  # the terminal's interrupt character
        out += read_until(fd, b"sigint from=")
        out += read_until(fd, b"\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert b"sigint from=tty\r\n" in out, out  # the terminal's, and no second from the parent
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGINT
    assert run_of(daemon, "zc-tty")["status"] == "interrupted"


# ---- profiler attach / detach -------------------------------------------------------------------


@slow
def test_attach_records_a_running_process_from_that_moment_until_detach(daemon):
    busy = busy_process(30)
    try:
        born = psutil.Process(busy.pid).create_time()
        time.sleep(1.0)  # the process has been running for a while
        attached_at = time.time()
        out = run_cli(daemon.env, "attach", str(busy.pid), "--name", "attached",
                      "--meta", "team=vision")  # fmt: skip
        assert out.returncode == 0, out.stderr
        run_id = out.stdout.strip()
        assert f"profiler detach {run_id}" in out.stderr
        time.sleep(1.5)
        out = run_cli(daemon.env, "detach", run_id)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"run {run_id} (attached): finished"
        assert busy.poll() is None  # detaching stops the recording, not the process
    finally:
        busy.kill()
        busy.wait()
    run = run_of(daemon, run_id)
    assert run["started_at"] >= attached_at - 0.05  # from the attach, not the process start
    assert run["started_at"] > born + 0.9
    assert 1.0 < run["duration_s"] < 10
    assert run["gpu_energy_j"] > 0 and run["cpu_seconds"] > 0.3
    assert run["meta"] == {"team": "vision"}


@slow
def test_an_attached_process_that_ends_closes_its_run(daemon):
    short = busy_process(2.5)
    try:
        out = run_cli(daemon.env, "attach", str(short.pid), "--run-id", "zc-attach-end")
        assert out.returncode == 0, out.stderr
        short.wait(timeout=30)
    finally:
        short.kill()
    run = run_of(daemon, "zc-attach-end")
    assert run["status"] == "finished"  # gone as expected, not "lost"
    assert run["gpu_energy_j"] > 0 and run["duration_s"] > 0.5


@slow
def test_attach_and_detach_errors_are_one_line(daemon):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for args, says in (
        (["attach", str(gone.pid)], f"no process {gone.pid} is running"),
        (["attach", "1"], "pid 1 is not a job this can attach to"),
        (["detach", "no-such-run"], "no running run matches no-such-run"),
        (["detach"], "give a run id or pid, or --meta KEY=VALUE"),
    ):
        out = run_cli(daemon.env, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.strip().splitlines() == [f"profiler: error: {says}"] or (
            len(out.stderr.strip().splitlines()) == 1 and says in out.stderr
        ), out.stderr


# ---- Slurm --------------------------------------------------------------------------------------


@slow
def test_slurm_task_wrapper_names_the_job_in_the_run(daemon):
    env = dict(daemon.env, **FAKE_SLURM, SLURM_STEP_ID="0", ML_PROFILER=PROFILER_BIN)
    out = subprocess.run(
        ["bash", str(SLURM / "profile-task"), sys.executable, "-c", "print('task output')"],
        env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "task output\n" and "Run slurm-4242.0" in out.stderr
    run = run_of(daemon, "slurm-4242.0")
    assert run["project"] == "vision" and run["status"] == "finished"
    assert run["meta"] == {
        "slurm_job_id": "4242", "slurm_step_id": "0", "slurm_job_name": "train",
        "slurm_job_user": "ada", "slurm_job_account": "vision", "slurm_job_partition": "gpu",
    }  # fmt: skip


@slow
def test_slurm_task_prolog_attaches_the_task_and_the_epilog_closes_leftovers(daemon):
    env = dict(daemon.env, **FAKE_SLURM, ML_PROFILER=PROFILER_BIN)
    task = busy_process(2.0)
    leftover = busy_process(60)
    try:
        prolog = subprocess.run(
            ["bash", str(SLURM / "task-prolog.sh")], capture_output=True, text=True, timeout=60,
            env=dict(env, SLURM_STEP_ID="1", SLURM_TASK_PID=str(task.pid)),
        )  # fmt: skip
        assert prolog.returncode == 0, prolog.stderr
        assert prolog.stdout.splitlines() == [
            f"export PROFILER_HOME={daemon.home}",
            "export PROFILER_RUN_ID=slurm-4242.1",
        ]
        subprocess.run(
            ["bash", str(SLURM / "task-prolog.sh")], capture_output=True, timeout=60, check=True,
            env=dict(env, SLURM_STEP_ID="2", SLURM_TASK_PID=str(leftover.pid)),
        )  # fmt: skip
        task.wait(timeout=30)
        run = run_of(daemon, "slurm-4242.1")  # ended with its task
        assert run["status"] == "finished" and run["name"] == "train"
        assert run["meta"]["slurm_job_account"] == "vision" and run["gpu_energy_j"] > 0
        assert run_of(daemon, "slurm-4242.2", ended=False)["status"] == "running"
        epilog = subprocess.run(["bash", str(SLURM / "epilog.sh")], env=env, timeout=60)
        assert epilog.returncode == 0
        assert run_of(daemon, "slurm-4242.2")["status"] == "finished"
    finally:
        for proc in (task, leftover):
            proc.kill()
            proc.wait()


# ---- the parts, in-process -----------------------------------------------------------------------


def test_a_run_holds_the_gpu_its_processes_descendant_uses(tmp_path, process_tree):
    from inprocess import hello, make_daemon

    child, grandchild = process_tree
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        d, sim, clock = make_daemon(tmp_path, [[(100.0, 300.0)]])
        d.sample()
        d.handle(hello("tree", child.pid, clock.now, devices=()))
        d.handle(hello("other", sibling.pid, clock.now, devices=()))  # not in the tree
        sim.detach_process(child.pid)  # NVML lists only the grandchild (the CUDA process)
        sim.detach_process(sibling.pid)
        sim.attach_process(grandchild, 0)
        for _ in range(30):
            clock.now += 0.1
            d.sample()
    finally:
        sibling.kill()
        sibling.wait()
    assert d.runs["tree"].total_gpu_energy_j == pytest.approx(300.0 * 2.5, rel=0.05)
    assert d.runs["other"].total_gpu_energy_j == 0.0


def test_cpu_time_of_a_tree_is_counted_once(tmp_path, process_tree):
    from inprocess import hello, make_daemon

    child, grandchild = process_tree
    d, _sim, clock = make_daemon(tmp_path, [[(100.0, 300.0)]])
    d.sample()
    d.handle(hello("tree", child.pid, clock.now, devices=()))  # profiler run's child
    d.handle(hello("tree", grandchild, clock.now, devices=()))  # a hooked process inside it
    d.account_cpu()
    time.sleep(1.0)
    d.account_cpu()
    tree = process_tree_cpu_seconds(child.pid)
    assert 0.2 < d.runs["tree"].cpu_seconds <= tree + 0.05  # twice as much if double counted


def test_env_meta_reads_slurm_and_the_pod():
    env = dict(FAKE_SLURM, POD_NAME="train-0", POD_NAMESPACE="ml", SLURM_STEP_ID="")
    assert env_meta(env) == {
        "slurm_job_id": "4242", "slurm_job_name": "train", "slurm_job_user": "ada",
        "slurm_job_account": "vision", "slurm_job_partition": "gpu", "k8s_pod": "train-0",
        "k8s_namespace": "ml",
    }  # fmt: skip
    assert env_meta({}) == {}


def test_only_the_watched_process_leaves_its_bye_to_the_proxy():
    me = str(os.getpid())
    assert proxied("r", {"PROFILER_PROXY_PID": me, "PROFILER_RUN_ID": "r"})
    assert not proxied("other-run", {"PROFILER_PROXY_PID": me, "PROFILER_RUN_ID": "r"})
    assert not proxied("r", {"PROFILER_PROXY_PID": "1", "PROFILER_RUN_ID": "r"})
    assert not proxied("r", {})


def test_exit_status_and_run_names():
    assert exit_status(0) == (0, "finished")
    assert exit_status(3 << 8) == (3, "failed")
    assert exit_status(130 << 8) == (130, "interrupted")
    assert exit_status(signal.SIGINT) == (130, "interrupted")
    assert exit_status(signal.SIGTERM) == (143, "interrupted")
    assert exit_status(signal.SIGKILL) == (137, "failed")
    assert command_name(["python3", "-u", "train.py", "--lr", "3e-4"]) == "train.py"
    assert command_name(["/usr/bin/python", "-m", "torch.distributed.run"]) == (
        "torch.distributed.run"
    )
    assert command_name(["torchrun", "train.py"]) == "torchrun"


def test_autoload_chains_to_an_existing_sitecustomize(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("MARK = 'theirs'\n")
    code = (
        "import sys, sitecustomize\n"
        "print(sitecustomize.MARK, [type(f).__name__ for f in sys.meta_path][0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
        env=dict(os.environ, PYTHONPATH=f"{AUTOLOAD_DIR}{os.pathsep}{other}"),
    )  # fmt: skip
    assert out.stdout.split() == ["theirs", "_Watch"]


FORWARDING_CHECK = """
import ctypes, os, platform, signal, struct, subprocess, sys
from profiler.cli.run import FORWARDED, SI_KERNEL, exit_status, wait_forwarding

SYS_RT_SIGQUEUEINFO = {"x86_64": 129, "aarch64": 138}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)

def queue_to_self(sig, code):
    info = ctypes.create_string_buffer(128)  # siginfo_t: signo, errno, code, then si_pid = 0
    struct.pack_into("iii", info, 0, sig, 0, code)
    assert libc.syscall(SYS_RT_SIGQUEUEINFO, os.getpid(), sig, info) == 0, ctypes.get_errno()

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"])
signal.pthread_sigmask(signal.SIG_BLOCK, set(FORWARDED) | {signal.SIGCHLD})
queue_to_self(signal.SIGINT, SI_KERNEL)  # what a terminal's Ctrl-C looks like
os.kill(os.getpid(), signal.SIGUSR1)  # what `kill -USR1` looks like
forwarded = []
status = wait_forwarding(child.pid, on_signal=forwarded.append)
print(forwarded, exit_status(status))
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="syscall number")
def test_forwarding_skips_what_the_terminal_sent():
    out = subprocess.run([sys.executable, "-c", FORWARDING_CHECK], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    # the Ctrl-C (SI_KERNEL) reached the child already; the user's SIGUSR1 is forwarded
    assert out.stdout.strip() == f"[{int(signal.SIGUSR1)}] ({128 + signal.SIGUSR1}, 'failed')"
