"""PyTorch one-liner: ``from hooks.pytorch import track; track(name="my-run", batch_size=64)``.

``track()`` registers torch's *global* optimizer-step hooks, so every ``optimizer.step()`` in the
process is seen without touching the training loop. A step is the time from the end of the
previous ``step()`` (or, for the first, the start of its ``step()`` call) to the end of this one,
read on the host's monotonic clock (``clock = "host_monotonic"``): no CUDA synchronisation. When
several optimizers step per iteration (a GAN, say), the first optimizer that steps defines the
training step and the others are not counted.

The run ends when the handle is stopped (``.stop()`` or leaving its ``with`` block) or at
interpreter exit (status ``failed`` when an uncaught exception ended the program,
``interrupted`` on Ctrl-C). Nothing here raises into training: errors are counted in
``handle.errors``.
"""

from __future__ import annotations

import atexit
import getpass
import os
import socket
import sys
import time
from typing import Any

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from hooks.client import Client
from hooks.runid import run_id_from_env


class TrackHandle:
    """A tracked run in this process. Use as a context manager or call :meth:`stop`."""

    def __init__(self, client: Client, batch_size: int | None) -> None:
        self.client = client
        self.batch_size = batch_size or 0
        self.steps = 0
        self._hook_errors = 0
        self._optimizer: int | None = None
        self._start: float | None = None
        self._devices_sent = False
        self._handles = [
            register_optimizer_step_pre_hook(self._pre),
            register_optimizer_step_post_hook(self._post),
        ]
        atexit.register(self._at_exit)

    @property
    def run_id(self) -> str:
        return self.client.run_id

    @property
    def errors(self) -> int:
        return self._hook_errors + self.client.errors

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            if self._start is None and self._optimizer in (None, id(optimizer)):
                self._start = time.monotonic()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self._hook_errors += 1

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            end = time.monotonic()
            if self._optimizer is None:
                self._optimizer = id(optimizer)
            elif self._optimizer != id(optimizer):
                return
            self.steps += 1
            start = self._start if self._start is not None else end
            self.client.step(self.steps, start, end, self.batch_size)
            self._start = end
            if not self._devices_sent:
                self._declare_devices()
        except Exception:  # noqa: BLE001 - the hook boundary
            self._hook_errors += 1

    def _declare_devices(self) -> None:
        """Tell the daemon which GPU this process uses, once CUDA is already initialised
        (never initialises CUDA itself)."""
        self._devices_sent = True
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            index = torch.cuda.current_device()
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            device = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
            self.client.update_hello(devices=[device])

    def stop(self, status: str = "finished") -> None:
        """Stop tracking: remove the hooks, send the remaining steps and ``bye``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.client.close(status)

    def _at_exit(self) -> None:
        failure = getattr(sys, "last_value", None)
        if isinstance(failure, KeyboardInterrupt):
            self.stop("interrupted")
        else:
            self.stop("failed" if failure is not None else "finished")

    def __enter__(self) -> TrackHandle:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.stop("finished")
        else:
            self.stop("interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")


def track(
    name: str | None = None,
    *,
    project: str = "",
    batch_size: int | None = None,
    total_steps: int | None = None,
    run_id: str | None = None,
    user: str | None = None,
) -> TrackHandle:
    """Start streaming this process's optimizer steps to the profiler daemon.

    ``batch_size`` is samples per optimizer step (0/None: samples are not counted);
    ``total_steps`` lets dashboards project the end. The run id is ``run_id``, else
    ``PROFILER_RUN_ID``, ``TORCHELASTIC_RUN_ID`` or ``SLURM_JOB_ID``, else generated from the name.
    """
    name = name or os.path.basename(sys.argv[0] or "python") or "run"
    rid = run_id or run_id_from_env(name)
    fields = {
        "name": name,
        "project": project,
        "user": user or _user(),
        "framework": "pytorch",
        "framework_version": torch.__version__,
        "hook": "pytorch.track",
        "rank": _env_int("RANK", 0),
        "local_rank": _env_int("LOCAL_RANK", 0),
        "world_size": _env_int("WORLD_SIZE", 1),
        "devices": [],
        "host": socket.gethostname(),
        "batch_size": batch_size or None,
        "total_steps": total_steps or None,
        "clock": "host_monotonic",
    }
    return TrackHandle(Client(rid, fields), batch_size)


def _env_int(key: str, default: int) -> int:
    try:
        return int(os.environ.get(key, default))
    except ValueError:
        return default


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
