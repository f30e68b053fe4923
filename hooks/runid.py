"""Run ids: every rank of one job must name the same run."""

from __future__ import annotations

import os
import re
import secrets
import time


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
