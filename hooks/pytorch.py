"""PyTorch one-liner: ``from hooks.pytorch import track; track(name="my-run", batch_size=64)``.

``track()`` registers torch's *global* optimizer-step hooks, so every ``optimizer.step()`` in the
process is seen without touching the training loop. A step is the time from the end of the
previous ``step()`` (or, for the first, the start of its ``step()`` call) to the end of this one.
When several optimizers step per iteration (a GAN, say), the first optimizer that steps defines
the training step and the others are not counted.

For loops without an optimizer (inference, evaluation), :class:`StepTimer` times explicit steps::

    timer = StepTimer(name="eval", batch_size=32)
    for batch in loader:
        with timer.step(samples=len(batch)) as step:
            step.loss = criterion(model(batch), target)  # optional
    timer.stop()

Clocks: on CPU, steps are timed on the host's monotonic clock (``clock = "host_monotonic"``).
Once CUDA is in use (initialised by the training, never by the hook), each step end records a
CUDA event and the step's duration is read later from the events, polled with ``query()``
(``clock = "cuda_event"``): the hook never synchronises the GPU. Framework memory
(``torch.cuda`` allocated, peak allocated and reserved bytes) is read at most every 0.1 s.

The run ends when the handle is stopped (``.stop()`` or leaving its ``with`` block) or at
interpreter exit (status ``failed`` when an uncaught exception ended the program,
``interrupted`` on Ctrl-C). Nothing here raises into training: errors are counted in
``handle.errors``.
"""

from __future__ import annotations

import atexit
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from hooks.client import Client
from hooks.recorder import StepRecorder
from hooks.runid import hello_fields, job_run_id

FLUSH_INTERVAL_S = 0.1


class CudaEventClock:
    """:class:`hooks.recorder.DeviceClock` on CUDA events of the current stream."""

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def done(self, token: Any) -> bool:
        return token.query()

    def elapsed_s(self, earlier: Any, later: Any) -> float:
        return earlier.elapsed_time(later) / 1000.0

    def wait(self, token: Any) -> None:
        token.synchronize()


def torch_cuda_memory() -> tuple[int | None, int | None, int | None] | None:
    """This process's CUDA caching-allocator memory on the current device, in bytes:
    ``(allocated, peak allocated, reserved)``; None before CUDA is initialised."""
    if not torch.cuda.is_initialized():
        return None
    stats = torch.cuda.memory_stats()
    return (
        stats.get("allocated_bytes.all.current"),
        stats.get("allocated_bytes.all.peak"),
        stats.get("reserved_bytes.all.current"),
    )


def cuda_device_uuid() -> str | None:
    """The NVML-style UUID (``GPU-...``) of the current CUDA device, if CUDA is initialised."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


class _Tracked:
    """A run in this process: the recorder, the CUDA switch-over and the run's end."""

    def __init__(self, client: Client, batch_size: int | None, *, auto: bool = False) -> None:
        if not auto:  # an explicit hook: the automatic one (profiler run --hooks) steps aside
            _hand_over_auto()
        self.client = client
        self.recorder = StepRecorder(client, batch_size=batch_size)
        self._cuda_checked = False
        self._stopped = False
        atexit.register(self._at_exit)

    @property
    def run_id(self) -> str:
        return self.client.run_id

    @property
    def steps(self) -> int:
        return self.recorder.steps_seen

    @property
    def errors(self) -> int:
        return self.recorder.errors

    @property
    def dropped_total(self) -> int:
        return self.client.dropped_total

    def _check_cuda(self) -> None:
        """Once, after the first step: if the training uses CUDA, time steps with CUDA events,
        read framework memory and declare the device."""
        self._cuda_checked = True
        uuid = cuda_device_uuid()
        if uuid is None:
            return
        self.recorder.device_clock = CudaEventClock()
        self.recorder.memory_probe = torch_cuda_memory
        self.client.update_hello(devices=[uuid], clock="cuda_event", memory_source="torch.cuda")

    def _remove_hooks(self) -> None:
        pass

    def stop(self, status: str = "finished") -> None:
        """Stop tracking: send the remaining steps and ``bye``."""
        if self._stopped:
            return
        self._stopped = True
        self._remove_hooks()
        try:
            self.recorder.finish()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self.recorder.hook_errors += 1
        self.client.close(status)

    def release(self) -> None:
        """Stop without ``bye``: send the steps so far and leave the run to another hook of
        this process (the automatic hook handing over to an explicit one)."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self._at_exit)
        self._remove_hooks()
        try:
            self.recorder.finish()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self.recorder.hook_errors += 1
        self.client.close(send_bye=False)

    def _at_exit(self) -> None:
        failure = getattr(sys, "last_value", None)
        if isinstance(failure, KeyboardInterrupt):
            self.stop("interrupted")
        else:
            self.stop("failed" if failure is not None else "finished")

    def __enter__(self) -> Any:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.stop("finished")
        else:
            self.stop("interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")


class CallbackRuns:
    """For framework callbacks that start a :class:`_Tracked` run per fit/train: what a user or
    test reads. Expects ``_run``, ``base_run_id`` and ``_errors`` on the instance."""

    _run: _Tracked | None
    base_run_id: str
    _errors: int

    @property
    def run_id(self) -> str:
        """The id of the current (or last) run."""
        return self._run.run_id if self._run else self.base_run_id

    @property
    def steps(self) -> int:
        """Steps recorded in the current (or last) run."""
        return self._run.steps if self._run else 0

    @property
    def errors(self) -> int:
        """Exceptions swallowed at the hook boundary (hook, recorder and client)."""
        return self._errors + (self._run.errors if self._run else 0)


class TrackHandle(_Tracked):
    """A run tracked through the optimizer's steps. Use as a context manager or call
    :meth:`stop`.

    The first step is seen through torch's global optimizer-step hooks, which learn which
    optimizer defines the step. From then on, on CPU, the global hooks are removed and a hook on
    that optimizer alone costs one clock read and one append to the recorder's fast lane (see
    :class:`hooks.recorder.StepRecorder`), handed to the client every :data:`FLUSH_INTERVAL_S`.
    """

    def __init__(self, client: Client, batch_size: int | None, *, auto: bool = False) -> None:
        super().__init__(client, batch_size, auto=auto)
        self._optimizer: int | None = None
        # On the optimizer's own hook (the steady state on CPU): the global hooks are gone.
        self.fast = False
        # The automatic hook feeds an auto handle from its own global hooks instead.
        self._handles = [] if auto else [
            register_optimizer_step_pre_hook(self._pre),
            register_optimizer_step_post_hook(self._post),
        ]  # fmt: skip
        self.fast_hook = self._make_fast_hook()

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            if self._optimizer is None:
                self.recorder.begin()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self.recorder.hook_errors += 1

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            if self._optimizer is None:
                self._optimizer = id(optimizer)
            elif self._optimizer != id(optimizer):
                return
            self.recorder.end()
            if not self._cuda_checked:
                self._check_cuda()
                if self.recorder.device_clock is None and self.recorder.memory_probe is None:
                    self._remove_hooks()
                    self._handles = [optimizer.register_step_post_hook(self.fast_hook)]
                    self.fast = True
        except Exception:  # noqa: BLE001 - the hook boundary
            self.recorder.hook_errors += 1

    def _make_fast_hook(self) -> Any:
        """The steady-state hook, with what it touches bound to locals."""
        monotonic = time.monotonic
        append = self.recorder.ends.append
        due = [monotonic() + FLUSH_INTERVAL_S]
        recorder = self.recorder

        def fast_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            now = monotonic()
            append(now)
            if now >= due[0]:
                due[0] = now + FLUSH_INTERVAL_S
                try:
                    recorder.drain_ends()
                except Exception:  # noqa: BLE001 - the hook boundary
                    recorder.hook_errors += 1

        return fast_hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass
class StepMark:
    """The step being timed; set ``samples`` or ``loss`` inside the ``with`` block."""

    samples: int | None = None
    loss: Any = None


class StepTimer(_Tracked):
    """A run whose steps the code marks itself::

    with timer.step(samples=len(batch)) as step:
        loss = model(batch)
        step.loss = loss  # optional: a NaN or inf loss is flagged
    """

    @contextmanager
    def step(self, samples: int | None = None, loss: Any = None) -> Iterator[StepMark]:
        """Time one step; ``samples`` defaults to the timer's ``batch_size``. The step counts
        only if its block finishes without an exception."""
        mark = StepMark(samples, loss)
        try:
            if not self._cuda_checked and self.recorder.steps == 0:
                self._check_cuda()
            self.recorder.begin()
        except Exception:  # noqa: BLE001 - the hook boundary
            self.recorder.hook_errors += 1
        yield mark
        try:
            self.recorder.end(samples=mark.samples, loss=mark.loss)
        except Exception:  # noqa: BLE001 - the hook boundary
            self.recorder.hook_errors += 1

    def __init__(
        self,
        name: str | None = None,
        *,
        project: str = "",
        batch_size: int | None = None,
        total_steps: int | None = None,
        run_id: str | None = None,
        user: str | None = None,
    ) -> None:
        fields = _fields(name, project, user, batch_size, total_steps, "pytorch.StepTimer")
        super().__init__(Client(job_run_id(fields["name"], run_id), fields), batch_size)


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

    ``batch_size`` is samples per optimizer step on this rank (0/None: samples are not counted);
    ``total_steps`` lets dashboards project the end. The run id is ``run_id``, else
    ``PROFILER_RUN_ID``, ``TORCHELASTIC_RUN_ID`` or ``SLURM_JOB_ID``, else generated from the name.
    """
    fields = _fields(name, project, user, batch_size, total_steps, "pytorch.track")
    return TrackHandle(Client(job_run_id(fields["name"], run_id), fields), batch_size)


class AutoTrack:
    """``profiler run --hooks``: the optimizer-step hook installed when torch is imported, with
    no line in the script (:mod:`hooks.autoload`, through :func:`auto_track`).

    Nothing is sent until the first ``optimizer.step()``. Then a handle like :func:`track`'s
    starts with that step (no ``batch_size``: samples are not counted), fed by two global hooks
    registered once, at install (torch cannot take new global hooks while it runs them); once
    the handle moves to its optimizer's own hook (CPU), these two return at once. An explicit
    hook in the process (``track()``, ``StepTimer``, the Lightning and Hugging Face callbacks)
    takes over: the automatic handle sends the steps it saw and stops without ``bye``, so no
    step is counted twice and the explicit hook carries on in the same run. Never raises into
    training: errors are counted in :attr:`errors`.
    """

    def __init__(self) -> None:
        self.handle: TrackHandle | None = None
        self.off = False
        self.errors = 0
        self._hooks = [
            register_optimizer_step_pre_hook(self._pre),
            register_optimizer_step_post_hook(self._post),
        ]

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.off:
            return
        try:
            handle = self.handle
            if handle is None:
                fields = _fields(None, "", None, None, None, "pytorch.auto")
                client = Client(job_run_id(fields["name"]), fields)
                handle = self.handle = TrackHandle(client, None, auto=True)
            if not handle.fast:
                handle._pre(optimizer, args, kwargs)
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self.errors += 1

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        handle = self.handle
        if self.off or handle is None or handle.fast:
            return
        handle._post(optimizer, args, kwargs)

    def hand_over(self) -> None:
        """An explicit hook starts in this process: stop for good, keeping the steps seen."""
        if self.off:
            return
        self.off = True
        try:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
            if self.handle is not None:
                self.handle.release()
        except Exception:  # noqa: BLE001 - the hook boundary
            self.errors += 1


_auto: AutoTrack | None = None


def auto_track() -> AutoTrack:
    """Install the automatic optimizer-step hook once per process (``profiler run --hooks``
    calls this when torch is imported); returns it."""
    global _auto
    if _auto is None:
        _auto = AutoTrack()
    return _auto


def _hand_over_auto() -> None:
    if _auto is not None:
        _auto.hand_over()


def _fields(
    name: str | None,
    project: str,
    user: str | None,
    batch_size: int | None,
    total_steps: int | None,
    hook: str,
) -> dict[str, Any]:
    return hello_fields(
        name=name,
        project=project,
        user=user,
        framework="pytorch",
        framework_version=torch.__version__,
        hook=hook,
        batch_size=batch_size,
        total_steps=total_steps,
        samples_source="argument" if batch_size else "none",
    )
