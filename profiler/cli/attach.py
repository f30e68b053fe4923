"""``profiler attach`` and ``profiler detach``: record an already running process tree.

``profiler attach PID`` records an already running process tree as a new run from this moment
(its start is now, not the process's start); its end, or ``profiler detach``, closes the run.
An attached process's exit status cannot be known (it is not our child): the run ends as
``finished`` when the process is gone. ``profiler detach RUN_OR_PID`` (or ``--meta K=V`` for
every running run with that metadata, as the Slurm epilog does) sends ``bye`` for the run's
processes and waits for the run to end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from hooks import wire
from hooks.runid import run_id_from_env
from profiler.cli.errors import CliError
from profiler.cli.run import (
    END_TIMEOUT_S,
    check_label,
    check_run_id,
    command_name,
    default_project,
    ensure_daemon,
    hello_for,
    ledger_run,
    run_meta,
    send,
)
from profiler.cli.run_records import run_record
from profiler.config import Config
from profiler.daemon.control import daemon_status
from profiler.ledger.store import Ledger, LedgerError


def check_attachable(pid: int) -> Any:
    """The process ``pid`` if this user may record it (its owner, or root); CliError with the
    reason otherwise."""
    import psutil

    if pid <= 1 or pid == os.getpid():
        raise CliError(f"pid {pid} is not a job this can attach to; give a training process's pid")
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            raise CliError(f"pid {pid} has already exited; nothing to record")
        uid = proc.uids().real
    except psutil.NoSuchProcess:
        raise CliError(f"no process {pid} is running; check the pid (`ps -u $USER`)") from None
    except psutil.AccessDenied:
        raise CliError(f"pid {pid} is not yours: attach as its owner (or as root)") from None
    if os.geteuid() not in (0, uid):
        raise CliError(f"pid {pid} belongs to uid {uid}, not you: attach as its owner (or root)")
    return proc


def attach(
    config: Config,
    pid: int,
    *,
    name: str | None = None,
    project: str | None = None,
    run_id: str | None = None,
    meta: Sequence[str] | None = None,
    wait: bool = True,
) -> str:
    """``profiler attach``: record ``pid`` and its descendants as a run from now; returns the
    run id once the daemon has it in its ledger (CliError if it does not take it), or, with
    ``wait`` False, as soon as the daemon has the message (a Slurm task prolog)."""
    proc = check_attachable(pid)
    name, project = check_label("--name", name), check_label("--project", project)
    labels = run_meta(meta)
    if not name:
        cmdline = _cmdline(proc)
        name = command_name(cmdline) if cmdline else proc.name()
    rid = check_run_id(run_id) if run_id is not None else run_id_from_env(name, {})
    ensure_daemon(config, required=True)
    message = hello_for(rid, pid, name=name, project=default_project(project), meta=labels,
                        hook="profiler.attach", attach=True)  # fmt: skip
    if not send(config, message):
        raise CliError(f"the daemon at {config.socket} does not answer; see {config.log_file}")
    if not wait:
        return rid
    deadline = time.monotonic() + config.flush_interval_s + 5.0
    while time.monotonic() < deadline:
        row = ledger_run(config, rid)
        if row is not None and str(pid) in row["meta"].get("pids", {}):
            if row["status"] != "running":
                raise CliError(f"run {rid} has already ended; give another --run-id")
            return rid
        time.sleep(0.1)
    raise CliError(
        f"the daemon did not take pid {pid} as run {rid} (a run of another user, or a full "
        f"daemon?); see {config.log_file} and `profiler status`"
    )


def _cmdline(proc: Any) -> list[str]:
    import psutil

    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def detach(
    config: Config, target: str | None, *, meta: Sequence[str] | None = None, wait: bool = True
) -> list[dict[str, Any]]:
    """``profiler detach``: end the running runs named by ``target`` (a run id, or a pid of
    one of their processes) or carrying every ``meta`` KEY=VALUE; returns their records (as
    ended, or as last seen when ``wait`` is False or they do not end in time)."""
    if (target is None) == (not meta):
        raise CliError("give a run id or pid, or --meta KEY=VALUE (one of them)")
    if target is not None:
        check_run_id(target, flag="RUN_OR_PID")
    wanted = run_meta(meta, env={}) if meta else {}
    if not daemon_status(config):
        raise CliError(f"no daemon running for {config.home}; its runs end when it restarts")
    try:
        ledger = Ledger(config.ledger, readonly=True)
    except LedgerError as e:
        raise CliError(str(e)) from e
    try:
        running = ledger.runs(status="running")
    finally:
        ledger.close()
    if target is not None:
        chosen = [
            r for r in running if r["id"] == target or (target.isdigit() and target in
                                                        r["meta"].get("pids", {}))
        ]  # fmt: skip
    else:
        chosen = [
            r for r in running
            if all(r["meta"].get("run_meta", {}).get(k) == v for k, v in wanted.items())
        ]  # fmt: skip
    if not chosen:
        what = target if target is not None else " ".join(meta or ())
        raise CliError(f"no running run matches {what}; `profiler runs` lists the runs")
    now = time.monotonic()
    for row in chosen:
        done = {str(p) for p in row["meta"].get("done_pids", [])}
        for pid in row["meta"].get("pids", {}):
            if pid not in done:
                send(config, wire.bye(row["id"], int(pid), "finished", now))
    if not wait:
        return [run_record(r) for r in chosen]
    out = []
    deadline = time.monotonic() + END_TIMEOUT_S
    for row in chosen:
        ended = None
        while ended is None and time.monotonic() < deadline:
            found = ledger_run(config, row["id"])
            if found is not None and found["status"] != "running":
                ended = found
            else:
                time.sleep(0.1)
        out.append(run_record(ended or row))
    return out


def cmd_attach(config: Config, args: argparse.Namespace) -> int:
    """``profiler attach PID [--name N] [--project P] [--run-id ID] [--meta K=V] [--no-wait]``:
    prints the run id on stdout."""
    run_id = attach(config, args.pid, name=args.name, project=args.project,
                    run_id=args.run_id, meta=args.meta, wait=not args.no_wait)  # fmt: skip
    print(run_id)
    print(
        f"recording pid {args.pid} and its descendants as run {run_id} from now; "
        f"`profiler detach {run_id}` (or the process's end) ends it",
        file=sys.stderr,
    )
    return 0


def cmd_detach(config: Config, args: argparse.Namespace) -> int:
    """``profiler detach RUN_OR_PID`` or ``profiler detach --meta K=V``: one line per run."""
    for run in detach(config, args.target, meta=args.meta):
        print(f"run {run['id']} ({run['name']}): {run['status']}")
    return 0
