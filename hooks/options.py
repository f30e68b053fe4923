"""What a user tells a hook about the run: the arguments every hook takes.

``track()``, :class:`hooks.pytorch.StepTimer`, the Keras, Lightning and Hugging Face
``EnergyCallback`` s and the automatic hooks of ``profiler run --hooks`` take the same keyword
arguments (each keeps its own signature; a hook without a use for one of them does not take it).
They hold them as one :class:`RunOptions`, which also makes the run id and the user's part of
the ``hello`` fields the same way for every hook. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hooks.runid import default_name, hello_fields, job_run_id


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
        batch_size: int | None,
        total_steps: int | None,
        samples_source: str,
        clock: str = "host_monotonic",
        memory_source: str = "",
        ranks: tuple[int, int, int] | None = None,
        devices: list[str] | None = None,
    ) -> dict[str, Any]:
        """The ``hello`` fields (:func:`hooks.runid.hello_fields`) with this run's name,
        project and user; the hook says what it measures (``batch_size`` and ``total_steps``
        as it counts them, which may differ from the options')."""
        return hello_fields(
            name=self.name,
            project=self.project,
            user=self.user,
            framework=framework,
            framework_version=framework_version,
            hook=hook,
            batch_size=batch_size,
            total_steps=total_steps,
            samples_source=samples_source,
            clock=clock,
            memory_source=memory_source,
            ranks=ranks,
            devices=devices,
        )
