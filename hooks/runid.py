"""Who a run is: its id (every rank of one job must name the same run), ranks, user and the
scheduler's metadata (:class:`hooks.options.RunOptions` puts them into the ``hello`` fields)."""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
import secrets
import sys
import time
import unicodedata

log = logging.getLogger("hooks")

# The daemon keeps a label value (run id, name, project, metadata value, host name) of 1 to 256
# printable characters as given (``profiler.ingest.messages.sanitize`` cuts longer ones and drops
# control
# characters), so neither the hooks nor the CLI ever send one it would change.
LABEL_MAX_CHARS = 256
RUN_ID_MAX_CHARS = LABEL_MAX_CHARS


def label_problem(text: str, most: int = LABEL_MAX_CHARS) -> str | None:
    """Why the daemon would not keep the label value ``text`` as given, as a phrase for a
    one-line message (``"empty"``, ``"300 characters, at most 256"``, ``"a control character
    '\\n'"``); ``None`` when it keeps it: 1 to ``most`` printable characters (``str.isprintable``:
    no newline, tab, escape or other control character). The one check behind the hooks' run
    ids, the CLI's ``--run-id``/``--name``/``--project``/``--meta`` and the configured host
    name."""
    if not text:
        return "empty"
    if len(text) > most:
        return f"{len(text):,} characters, at most {most}"
    bad = next((ch for ch in text if not ch.isprintable()), None)
    if bad is not None:
        control = unicodedata.category(bad) == "Cc"
        return f"{'a control' if control else 'an unprintable'} character {bad!r}"
    return None


def run_id_problem(run_id: str) -> str | None:
    """Why the daemon would refuse or rewrite ``run_id`` (``None``: it takes it as it is). A run
    id is 1 to :data:`RUN_ID_MAX_CHARS` printable characters (:func:`label_problem`)."""
    if not isinstance(run_id, str):
        return f"is a {type(run_id).__name__}, not a string"
    why = label_problem(run_id, RUN_ID_MAX_CHARS)
    if why is None:
        return None
    return "is empty" if why == "empty" else f"has {why}"


def checked_run_id(run_id: str, name: str | None = None) -> str:
    """``run_id`` if the daemon takes it as it is; else, with one warning line naming the
    problem, a valid id derived from it: its printable characters (at most 200) and 8 hex digits
    of its SHA-256, so every rank given the same invalid id still names the same run. Never
    raises."""
    if isinstance(run_id, int) and not isinstance(run_id, bool):
        run_id = str(run_id)  # run_id=1234: the same id, as the string the daemon takes
    problem = run_id_problem(run_id)
    if problem is None:
        return run_id
    text = run_id if isinstance(run_id, str) else str(run_id)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    kept = "".join(ch for ch in text[:200] if ch.isprintable()).strip() or (name or "run")[:40]
    fixed = f"{kept}-{digest}"
    shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
    log.warning(
        "profiler: run id %s %s; the daemon takes 1 to %d printable characters; recording as "
        "run id %s instead; training goes on",
        shown,
        problem,
        RUN_ID_MAX_CHARS,
        fixed,
    )
    return fixed


def run_id_from_env(name: str, env: dict[str, str] | None = None) -> str:
    """``PROFILER_RUN_ID``, else the launcher's id (``TORCHELASTIC_RUN_ID``, ``SLURM_JOB_ID``
    with ``SLURM_STEP_ID``), else a new id made from the name, the time and 4 random hex digits."""
    env = dict(os.environ) if env is None else env
    if env.get("PROFILER_RUN_ID"):
        return env["PROFILER_RUN_ID"]
    if env.get("TORCHELASTIC_RUN_ID") and env["TORCHELASTIC_RUN_ID"] != "none":
        return f"torchelastic-{env['TORCHELASTIC_RUN_ID']}"
    if env.get("SLURM_JOB_ID"):
        step = env.get("SLURM_STEP_ID")
        return f"slurm-{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "run"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# Ids this process generated and exported for the ranks it launches (not to be reused by a second
# run in this same process).
_generated_here: set[str] = set()


def not_for_new_runs(run_id: str) -> None:
    """A run that a new hook of this process must not join by inheritance (``PROFILER_RUN_ID``):
    in a forked child, the parent's runs. An explicit ``run_id=`` still joins it."""
    _generated_here.add(run_id)


def job_run_id(name: str, explicit: str | None = None) -> str:
    """The run id for a hook starting in this process: ``explicit``, else
    :func:`run_id_from_env`. A generated id is exported as ``PROFILER_RUN_ID`` so processes this
    one launches afterwards (Lightning's and Accelerate's per-rank re-runs of the script) join the
    same run; a later run in this process still gets a new id."""
    if explicit:
        return explicit
    inherited = os.environ.get("PROFILER_RUN_ID")
    if inherited and inherited not in _generated_here:
        return inherited
    env = {k: v for k, v in os.environ.items() if k != "PROFILER_RUN_ID"}
    rid = run_id_from_env(name, env)
    if rid.startswith(("torchelastic-", "slurm-")):
        return rid
    _generated_here.add(rid)
    os.environ["PROFILER_RUN_ID"] = rid
    return rid


def ranks_from_env(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the launcher's variables (torchrun's ``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, else Slurm's ``SLURM_PROCID``, ``SLURM_LOCALID``,
    ``SLURM_NTASKS``), else a single process ``(0, 0, 1)``."""
    env = dict(os.environ) if env is None else env

    def first(*keys: str, default: int) -> int:
        for key in keys:
            try:
                return int(env[key])
            except (KeyError, ValueError):
                continue
        return default

    return (
        first("RANK", "SLURM_PROCID", default=0),
        first("LOCAL_RANK", "SLURM_LOCALID", default=0),
        first("WORLD_SIZE", "SLURM_NTASKS", default=1),
    )


def visible_mig_devices(env: dict[str, str] | None = None) -> list[str]:
    """The MIG instance uuids (``MIG-...``) in ``CUDA_VISIBLE_DEVICES``, in order: the GPU
    instances a process so started runs on, declared in its ``hello`` so that its run holds
    them even when no framework names its device (``[]`` when there are none)."""
    env = dict(os.environ) if env is None else env
    entries = (d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(","))
    return [d for d in entries if d.startswith("MIG-")]


# Scheduler metadata taken from the environment into every ``hello`` (key -> variable). Slurm sets
# its variables in every job; Kubernetes sets POD_NAME/POD_NAMESPACE only when the pod spec passes
# them through the downward API (see deploy/kubernetes/training-pod-example.yaml).
ENV_META = {
    "slurm_job_id": "SLURM_JOB_ID",
    "slurm_step_id": "SLURM_STEP_ID",
    "slurm_job_name": "SLURM_JOB_NAME",
    "slurm_job_user": "SLURM_JOB_USER",
    "slurm_job_account": "SLURM_JOB_ACCOUNT",
    "slurm_job_partition": "SLURM_JOB_PARTITION",
    "k8s_pod": "POD_NAME",
    "k8s_namespace": "POD_NAMESPACE",
}


def env_meta(env: dict[str, str] | None = None) -> dict[str, str]:
    """Run metadata from the scheduler's environment (:data:`ENV_META`): the variables that are
    set and not empty, each value cut to 256 characters."""
    env = dict(os.environ) if env is None else env
    return {key: env[var][:256] for key, var in ENV_META.items() if env.get(var)}


def default_name() -> str:
    """The script's file name, for runs not given a name."""
    return os.path.basename(sys.argv[0] or "python") or "run"


def user_name() -> str:
    """Who runs this process (login name, else the numeric uid)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
