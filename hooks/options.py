"""What a user tells a hook about the run: the arguments every hook takes.

``track()``, :class:`hooks.pytorch.StepTimer`, the Keras, Lightning and Hugging Face
``EnergyCallback`` s and the automatic hooks of ``profiler run --hooks`` take the same keyword
arguments (each keeps its own signature and attributes; a hook without a use for one of them
does not take it). Each builds one :class:`RunOptions` from them when a run starts, which makes
the run id and the ``hello`` fields the same way for every hook. Standard library only.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from hooks.runid import (
    default_name,
    env_meta,
    job_run_id,
    ranks_from_env,
    user_name,
    visible_mig_devices,
)


@dataclass(frozen=True)
class RunOptions:
    """A hook's run arguments, as the user gave them (None or empty: not given).

    ``name``: the run's name (default: the script's file name, :func:`hooks.runid.default_name`).
    ``project``: a free label for reports. ``batch_size``: samples per step on this process
    (0/None: samples are not counted, unless the hook reads them elsewhere). ``total_steps``: the
    steps the run will make, for dashboards to project its end. ``run_id``: the run's id (default:
    ``PROFILER_RUN_ID``, the launcher's id, else generated from the name). ``user``: who the run
    is for (default: the login name of this process)."""

    name: str | None = None
    project: str = ""
    batch_size: int | None = None
    total_steps: int | None = None
    run_id: str | None = None
    user: str | None = None

    def job_run_id(self) -> str:
        """The run id for a hook starting now in this process (:func:`hooks.runid.job_run_id`
        on the name, or the script's file name, and ``run_id``)."""
        return job_run_id(self.name or default_name(), self.run_id)

    def hello_fields(
        self,
        *,
        framework: str,
        framework_version: str,
        hook: str,
        samples_source: str,
        clock: str = "host_monotonic",
        memory_source: str = "",
        ranks: tuple[int, int, int] | None = None,
        devices: list[str] | None = None,
    ) -> dict[str, Any]:
        """The ``hello`` fields every hook sends (see :mod:`hooks.wire`): this run's name,
        project, user, ``batch_size`` and ``total_steps``, what the hook measures and how (the
        keywords), its ``devices`` (with the MIG instances ``CUDA_VISIBLE_DEVICES`` names:
        :func:`hooks.runid.visible_mig_devices`), the host, and the scheduler's metadata
        (:func:`hooks.runid.env_meta`) under ``meta`` when there is any. A hook that announces
        other samples per step or total steps than the user gave (counted over gradient
        accumulation, projected from the framework) calls this on
        ``dataclasses.replace(options, batch_size=..., total_steps=...)``."""
        rank, local_rank, world_size = ranks or ranks_from_env()
        meta = env_meta()
        declared = list(devices or [])
        declared += [d for d in visible_mig_devices() if d not in declared]
        return {
            **({"meta": meta} if meta else {}),
            "name": self.name or default_name(),
            "project": self.project,
            "user": self.user or user_name(),
            "framework": framework,
            "framework_version": framework_version,
            "hook": hook,
            "rank": rank,
            "local_rank": local_rank,
            "world_size": world_size,
            "devices": declared,
            "host": socket.gethostname(),
            "batch_size": self.batch_size or None,
            "total_steps": self.total_steps or None,
            "clock": clock,
            "samples_source": samples_source,
            "memory_source": memory_source,
        }
