"""Recording a process tree from outside, with no change to its code: ``profiler run`` (and
the parts ``profiler attach``/``detach`` share with it, :mod:`profiler.cli.attach`).

``profiler run [--name N] [--project P] [--run-id ID] [--meta K=V] [--hooks] [--quiet] -- CMD``

- Starts the daemon if none runs for this home (if it cannot, says so in one line and runs the
  command anyway, unprofiled: the job matters more than its profile).
- Starts ``CMD`` (looked up on ``PATH``) with stdin, stdout, stderr, the working directory, the
  signal mask and the environment inherited, plus ``PROFILER_RUN_ID`` (so hooks in the script
  join the same run), ``PROFILER_HOME`` (the same daemon) and ``PROFILER_PROXY_PID`` (the
  child's own pid: a hook in that process leaves the run's end to this command, see
  :func:`hooks.client.proxied`). With ``--hooks``, ``hooks/autoload`` goes first on the
  child's ``PYTHONPATH`` (automatic step timing, see :mod:`hooks.autoload`).
- Tells the daemon, with a ``hello`` marked ``proxy``, that the child's pid is the run's
  process. The daemon then attributes to the run the GPUs NVML lists for the child or any of
  its descendants, the CPU time and host energy of the child's whole tree (DataLoader workers,
  torchrun ranks: each process counted once), wall time and cost.
- Forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the child, except those
  the terminal sent (``si_code`` SI_KERNEL): the child is in the same foreground process group
  and has them already, so Ctrl-C reaches it exactly once.
- When the child ends, sends ``bye`` with ``finished`` (exit 0), ``interrupted`` (killed by
  SIGINT or SIGTERM, or exit 130/143 as a shell reports them) or ``failed`` (anything else),
  prints the demo's summary to stderr once the daemon has closed the run (``--quiet``: not at
  all, and without waiting) and exits with the child's exit status: its code, or 128 + the
  signal that killed it, like a shell. A command that cannot be started exits 127 (not
  found) or 126 (not executable), with one line, and a daemon started for it is stopped.
- A ``--run-id``, ``--name``, ``--project`` or ``--meta`` the daemon would not keep as given
  (empty, over 256 characters, a control character) is refused with one line before anything
  runs; so is such a run id from ``PROFILER_RUN_ID``. Killed itself, it leaves the run to the
  daemon, which ends it (``lost``: no exit status) when the child is gone, at that time.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hooks import wire
from hooks.runid import (
    LABEL_MAX_CHARS,
    env_meta,
    label_problem,
    ranks_from_env,
    run_id_from_env,
    user_name,
    visible_mig_devices,
)
from profiler.cli.errors import CliError
from profiler.cli.run_budget import DEFAULT_GRACE_S, BudgetWatch
from profiler.cli.run_records import run_record
from profiler.config import Config
from profiler.daemon.control import ControlError, daemon_status, start_background, stop_daemon
from profiler.ledger.store import Ledger, LedgerError

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent (the terminal's Ctrl-C, hangup)
END_TIMEOUT_S = 30.0  # how long to wait for the daemon to close a run, seconds
SEND_TIMEOUT_S = 2.0  # how long a hello/bye may wait for room in the daemon's queue, seconds
AUTOLOAD_DIR = Path(wire.__file__).resolve().parent / "autoload"
META_KEYS_MAX = 32


class SpawnError(CliError):
    """The command could not be started; ``exit_code`` is the shell's (127 or 126)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---- messages on behalf of another process ------------------------------------------------------


def send(config: Config, message: dict[str, Any]) -> bool:
    """Send one message marked ``proxy`` (it names another process than the sender) to the
    daemon of ``config``; False when no daemon takes it within :data:`SEND_TIMEOUT_S`."""
    message = dict(message, proxy=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(SEND_TIMEOUT_S)
    try:
        sock.sendto(wire.encode(message), str(config.socket))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def hello_for(
    run_id: str,
    pid: int,
    *,
    name: str,
    project: str,
    meta: dict[str, str],
    hook: str,
    attach: bool = False,
    watched: bool = False,
) -> dict[str, Any]:
    """The ``hello`` naming ``pid`` as a process of ``run_id``. Only what the proxy knows:
    no framework, clock, batch size or devices (but the MIG instances ``CUDA_VISIBLE_DEVICES``
    names), which a hook in the process sends itself
    (and which this hello must not overwrite). ``attach``: nobody will say ``bye`` for the
    process (its end ends it); ``watched``: the sender will, with its exit status."""
    rank, local_rank, world_size = ranks_from_env()
    fields: dict[str, Any] = {
        "name": name,
        "project": project,
        "user": user_name(),
        "hook": hook,
        "host": socket.gethostname(),
        "rank": rank,
        "local_rank": local_rank,
        "world_size": world_size,
        "mono": time.monotonic(),
        "wall": time.time(),
    }
    if meta:
        fields["meta"] = meta
    if mig := visible_mig_devices():  # the instances CUDA_VISIBLE_DEVICES gives it
        fields["devices"] = mig
    if attach:
        fields["attach"] = True
    if watched:
        fields["watched"] = True
    return wire.hello(run_id, pid, **fields)


def check_run_id(run_id: str, flag: str = "--run-id") -> str:
    """``run_id`` as given, or CliError when the daemon would not keep it as given (empty,
    over :data:`~hooks.runid.LABEL_MAX_CHARS` characters, a control character:
    :func:`~hooks.runid.label_problem`): a run id names the run everywhere (ledger,
    ``/metrics``, other ranks), so it is refused, never changed."""
    return _checked_label(flag, run_id)


def env_run_id(name: str) -> str:
    """The run id from the environment (:func:`run_id_from_env`), refused with the variable's
    name when the daemon would change it."""
    source = next((v for v in ("PROFILER_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")
                   if os.environ.get(v)), "the run id")  # fmt: skip
    return check_run_id(run_id_from_env(name), flag=source)


def check_label(flag: str, value: str | None) -> str | None:
    """``--name``/``--project`` as given (None stays None), or CliError when the daemon would
    change it (an empty value, over LABEL_MAX_CHARS characters, a control character:
    :func:`~hooks.runid.label_problem`)."""
    return None if value is None else _checked_label(flag, value)


def _checked_label(flag: str, value: str) -> str:
    why = label_problem(value)
    if why is not None:
        raise CliError(
            f"{flag} {_shown(value)}: {why}; give 1-{LABEL_MAX_CHARS} printable characters"
        )
    return value


def _shown(text: str) -> str:
    """``text`` for a one-line message: repr (control characters escaped), cut to 40."""
    return repr(text) if len(text) <= 40 else repr(text[:40])[:-1] + "...'"


def run_meta(given: Sequence[str] | None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The scheduler's metadata from the environment (Slurm job, Kubernetes pod) with the
    ``--meta KEY=VALUE`` pairs over it; CliError on a pair without ``=``, a key not of 1-64
    printable characters (or with spaces around it), or a value the daemon would change."""
    meta = env_meta(env)
    for pair in given or ():
        key, sep, value = pair.partition("=")
        if not sep or not key or key != key.strip() or label_problem(key, 64):
            raise CliError(f"--meta {_shown(pair)}: expected KEY=VALUE (a key of 1-64 "
                           "printable characters, no spaces around it)")  # fmt: skip
        why = label_problem(value)
        if why is not None and value:  # an empty value is kept as given
            raise CliError(f"--meta {_shown(pair)}: the value has {why}")
        meta[key] = value
    if len(meta) > META_KEYS_MAX:
        raise CliError(f"--meta: at most {META_KEYS_MAX} keys in all, got {len(meta)}")
    return meta


def default_project(project: str | None, env: dict[str, str] | None = None) -> str:
    """``--project``, else the Slurm account the job is charged to, else none."""
    env = dict(os.environ) if env is None else env
    return project or env.get("SLURM_JOB_ACCOUNT", "")


def command_name(cmd: Sequence[str]) -> str:
    """A run name for a command: the script of ``python [opts] script.py ...``, the module of
    ``python -m module``, else the program's file name."""
    prog = os.path.basename(cmd[0])
    if prog.startswith("python"):
        args = list(cmd[1:])
        while args and args[0].startswith("-"):
            flag = args.pop(0)
            if flag == "-m" and args:
                return args[0]
            if flag == "-c":
                return prog
        if args:
            return os.path.basename(args[0])
    return prog or "run"


def ensure_daemon(config: Config, *, required: bool) -> tuple[dict[str, Any] | None, bool]:
    """The running daemon's status, starting one if none runs (unless
    ``PROFILER_AUTOSTART=0``), and whether this call started it. When there is none (the home
    cannot be used, the daemon cannot start): CliError if ``required``, else one warning line
    and None."""
    try:
        status = daemon_status(config)
        if status:
            return status, False
        if os.environ.get("PROFILER_AUTOSTART", "1") in ("0", "false", "no"):
            raise CliError(f"no daemon running for {config.home} (PROFILER_AUTOSTART=0)")
        return start_background(config)
    except (CliError, ControlError) as e:
        if required:
            raise
        print(f"profiler: warning: {e}; running the command without profiling", file=sys.stderr)
        return None, False


# ---- profiler run --------------------------------------------------------------------------


def exit_status(wait_status: int) -> tuple[int, str]:
    """``(exit code as a shell reports it, bye status)`` for a ``waitpid`` status."""
    code = os.waitstatus_to_exitcode(wait_status)
    if code < 0:
        sig = -code
        interrupted = sig in (signal.SIGINT, signal.SIGTERM)
        return 128 + sig, "interrupted" if interrupted else "failed"
    if code == 0:
        return 0, "finished"
    interrupted = code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    return code, "interrupted" if interrupted else "failed"


def child_env(
    config: Config, run_id: str, hooks: bool, env: dict[str, str] | None = None
) -> dict[str, str]:
    """The child's environment: ours plus ``PROFILER_RUN_ID``, ``PROFILER_HOME`` and, with
    ``hooks``, the autoload folder first on ``PYTHONPATH``. (``PROFILER_PROXY_PID`` is added in
    the child itself, once its pid exists.)"""
    out = dict(os.environ if env is None else env)
    out["PROFILER_RUN_ID"] = run_id
    out["PROFILER_HOME"] = str(config.home)
    if hooks:
        old = out.get("PYTHONPATH")
        out["PYTHONPATH"] = str(AUTOLOAD_DIR) + (os.pathsep + old if old else "")
    return out


def spawn(cmd: Sequence[str], env: dict[str, str], mask: set[signal.Signals]) -> int:
    """Fork and exec ``cmd`` (PATH lookup in ``env``) with the signal mask ``mask`` and the
    signals Python itself ignores (SIGPIPE, SIGXFSZ) back at their defaults, like
    ``subprocess``; the child gets ``PROFILER_PROXY_PID`` set to its own pid. Returns the pid;
    raises SpawnError when the exec fails (reported through a close-on-exec pipe)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        try:
            os.close(read_end)
            env = dict(env, PROFILER_PROXY_PID=str(os.getpid()))
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.execvpe(cmd[0], list(cmd), env)
        except BaseException as e:  # noqa: BLE001 - report any failure to the parent
            code = getattr(e, "errno", None) or errno.ENOEXEC
            try:
                os.write(write_end, str(code).encode())
            finally:
                os._exit(127 if code == errno.ENOENT else 126)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failure = pipe.read()
    if failure:
        os.waitpid(pid, 0)
        code = int(failure)
        raise SpawnError(
            f"cannot run {cmd[0]!r}: {os.strerror(code)}"
            + ("; check the name and PATH" if code == errno.ENOENT else ""),
            127 if code == errno.ENOENT else 126,
        )
    return pid


def wait_forwarding(
    pid: int, *, on_signal: Callable[[int], None] | None = None,
    tick: Callable[[], None] | None = None,
) -> int:  # fmt: skip
    """Wait for child ``pid`` to end, forwarding :data:`FORWARDED` signals to it; returns its
    ``waitpid`` status. The signals (and SIGCHLD) must be blocked in this thread. A signal the
    terminal sent (SI_KERNEL) or the child itself sent is not forwarded: the child has it.
    ``tick`` (the budget's replies) is called at least every 0.1 s."""
    waited = set(FORWARDED) | {signal.SIGCHLD}
    while True:
        if tick is not None:
            tick()
        info = signal.sigtimedwait(waited, 1.0 if tick is None else 0.1)
        if info is None or info.si_signo == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return status
            continue
        if info.si_code == SI_KERNEL or info.si_pid == pid:
            continue
        if on_signal is not None:
            on_signal(info.si_signo)
        try:
            os.kill(pid, info.si_signo)
        except ProcessLookupError:
            pass


def run_command(
    config: Config,
    cmd: Sequence[str],
    *,
    name: str | None = None,
    project: str | None = None,
    run_id: str | None = None,
    meta: Sequence[str] | None = None,
    hooks: bool = False,
    quiet: bool = False,
    budget: float | None = None,
    on_exceed: str | None = None,
    budget_signal: int = signal.SIGINT,
    budget_grace_s: float = DEFAULT_GRACE_S,
) -> int:
    """``profiler run``: run ``cmd`` as one recorded run; returns its exit status. With a
    ``budget`` (or a budget in profiler.toml) the daemon's stop sends the child
    ``budget_signal``, then SIGTERM after ``budget_grace_s`` (:mod:`profiler.cli.run_budget`)."""
    if not cmd:
        raise CliError("give the command to run after --, e.g. profiler run -- python train.py")
    name = check_label("--name", name) or command_name(cmd)
    project = check_label("--project", project)
    labels = run_meta(meta)
    rid = check_run_id(run_id) if run_id is not None else env_run_id(name)
    status, started = ensure_daemon(config, required=False)
    env = child_env(config, rid, hooks)
    blocked = set(FORWARDED) | {signal.SIGCHLD}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        try:
            pid = spawn(cmd, env, mask)
        except SpawnError as e:
            print(f"profiler: error: {e}", file=sys.stderr)
            if started and status is not None:  # no run for it to record: leave no trace
                _stop_unused(config, status)
            return e.exit_code
        watch = BudgetWatch(str(config.socket), rid, pid, stop_signal=budget_signal,
                            grace_s=budget_grace_s)  # fmt: skip
        hello = hello_for(rid, pid, name=name, project=default_project(project), meta=labels,
                          hook="profiler.run", watched=True)  # fmt: skip
        if budget is not None:
            hello["budget"] = budget
            if on_exceed is not None:
                hello["on_exceed"] = on_exceed
        reporting = status is not None and watch.say_hello(hello)
        if status is not None and not reporting:
            print(f"profiler: warning: the daemon at {config.socket} does not answer; "
                  "the command runs unprofiled", file=sys.stderr)  # fmt: skip
        wait_status = wait_forwarding(pid, tick=watch.tick if reporting else None)
        watch.close()
        code, bye_status = exit_status(wait_status)
        if watch.stop is not None:
            print(f"profiler: run {rid} stopped for its budget; the command exited with "
                  f"status {code}", file=sys.stderr)  # fmt: skip
        if reporting:
            send(config, wire.bye(rid, pid, bye_status, time.monotonic()))
    finally:
        _drain(blocked)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if reporting and not quiet:
        try:
            _summarise(config, rid, pid)
        except KeyboardInterrupt:
            print(f"profiler: not waiting for run {rid}; `profiler runs` shows it",
                  file=sys.stderr)  # fmt: skip
        except BrokenPipeError:  # stderr's reader is gone: the child's status still counts
            _quiet_stderr()
    return code


def _stop_unused(config: Config, status: dict[str, Any]) -> None:
    """After a command that could not start: stop the daemon this ``profiler run`` started for
    it, unless anything else has reached it since (:func:`_untouched`), so that a run another
    process began on it meanwhile goes on. A daemon that does not stop gets one warning line;
    the command's exit status (127/126) stands."""
    if not _untouched(status):
        return
    try:
        stop_daemon(config, status)
    except ControlError as e:
        print(f"profiler: warning: {e}", file=sys.stderr)


def _untouched(status: dict[str, Any]) -> bool:
    """Whether no message (a hook's, another proxy's) has reached the daemon ``status`` names:
    its ``/metrics`` counts 0 ``profiler_messages_received_total``. Unknown (no metrics URL, no
    answer in 2 s) counts as reached: the daemon is then left running. A hook that first
    reaches it in the instant between this check and the stop is not covered (it then finds no
    daemon, and starts one or warns, as for any stopped daemon)."""
    url = status.get("metrics_url")
    if not url:
        return False
    try:
        with urllib.request.urlopen(url, timeout=2.0) as r:  # noqa: S310 - the daemon's own URL
            text = r.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return False
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "profiler_messages_received_total":
            return value.strip() in ("0", "0.0")
    return False


def _quiet_stderr() -> None:
    """Point stderr at /dev/null (its reader went away), so that exit does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stderr.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _drain(signals: set[signal.Signals]) -> None:
    """Consume blocked signals still pending (SIGCHLD, or one that raced the child's end)."""
    while signal.sigtimedwait(signals, 0) is not None:
        pass


def _summarise(config: Config, run_id: str, pid: int) -> None:
    """Wait (at most :data:`END_TIMEOUT_S`) for the daemon to close the run, then print the
    demo's summary to stderr; or say why not (other processes keep the run open)."""
    from profiler.cli.demo import format_summary

    deadline = time.monotonic() + END_TIMEOUT_S
    while time.monotonic() < deadline:
        row = ledger_run(config, run_id)
        if row is not None and row["status"] != "running":
            status = daemon_status(config) or {}
            print(format_summary(run_record(row), status, config), file=sys.stderr)
            return
        if row is not None:
            pids = set(row["meta"].get("pids", {}))
            done = {str(p) for p in row["meta"].get("done_pids", [])}
            if str(pid) in done and pids - done:
                others = len(pids - done)
                print(f"profiler: run {run_id} goes on: {others} other process(es) of it still "
                      "run; `profiler runs` shows it when it ends", file=sys.stderr)  # fmt: skip
                return
        time.sleep(0.2)
    print(f"profiler: run {run_id} did not end within {END_TIMEOUT_S:g} s; "
          f"`profiler runs` shows it, {config.log_file} says why", file=sys.stderr)  # fmt: skip


def ledger_run(config: Config, run_id: str) -> dict[str, Any] | None:
    """The run's ledger row, or None (not flushed yet, or no ledger yet)."""
    try:
        ledger = Ledger(config.ledger, readonly=True)
    except LedgerError:
        return None
    try:
        return ledger.run(run_id)
    finally:
        ledger.close()


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    """``profiler run [--name N] [--project P] [--run-id ID] [--meta K=V] [--hooks] [--quiet] --
    CMD [ARGS ...]``."""
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    hooks = args.hooks or config.run_hooks
    return run_command(
        config, command, name=args.name, project=args.project, run_id=args.run_id,
        meta=args.meta, hooks=hooks, quiet=args.quiet, budget=args.budget,
        on_exceed=args.on_exceed, budget_signal=args.budget_signal,
        budget_grace_s=args.budget_grace,
    )  # fmt: skip
