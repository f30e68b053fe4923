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

Unusual but legal use, all without raising into training:

- **A second** ``track()`` **replaces the first**: the first handle's run ends (``finished``,
  its steps kept) and the new handle counts the steps from then on, so no step is counted in
  two runs. When both name the same run (``run_id=``, ``PROFILER_RUN_ID``), the first hands
  over without ``bye`` and the run carries on. :class:`StepTimer` s are independent runs.
- ``stop()`` twice, from another thread or from a signal handler: the first call ends the run,
  later ones do nothing; steps after ``stop()`` are not recorded. torch's hook dicts are never
  changed while torch may be iterating them (see :class:`_GlobalHooks`).
- **Fork** (``os.fork``, multiprocessing's ``fork``): the handles a child inherits go quiet for
  good: the child's steps, its exit and its crash never reach its parent's run. A ``track()``
  in the child starts a run of its own (a new id, unless ``run_id=`` names one).
- A run id the daemon would refuse or rewrite (control characters, over 256 characters) is
  replaced, with one warning line (:func:`hooks.runid.checked_run_id`).
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from hooks.budget import budget_field
from hooks.client import Client
from hooks.options import RunOptions
from hooks.recorder import StepRecorder
from hooks.torch_cuda import CudaEventClock, cuda_device_uuid, torch_cuda_memory

FLUSH_INTERVAL_S = 0.1


def _is_last(handle: Any) -> bool:
    """Whether a torch hook handle's hook is the last in its dict: torch may remove that one
    while iterating the dict (its iterator is then already done), no other."""
    hooks = handle.hooks_dict_ref()
    return hooks is not None and next(reversed(hooks), None) == handle.id


class _GlobalHooks:
    """torch's two global optimizer-step hooks, registered once for all of this process's
    :class:`TrackHandle` s.

    torch iterates its dicts of hooks while it calls them, and a dict changed meanwhile makes
    ``optimizer.step()`` raise (``OrderedDict mutated during iteration``) unless the entry
    removed is the last one. So handles never touch torch's dicts: they join and leave
    :attr:`handles`, a tuple replaced whole (safe from a hook, another thread or a signal
    handler), and the pair removes itself once no handle is left, only where torch is not
    iterating the dict in question: the post hook removes the pre hook (and itself when it is
    the last global post hook), the pre hook the post hook, and a handle's own optimizer hook
    (:meth:`tidy`, every flush) both."""

    def __init__(self) -> None:
        self.handles: tuple[TrackHandle, ...] = ()
        self._pre: Any = None
        self._post: Any = None
        self.errors = 0  # exceptions swallowed at this boundary (also counted in a handle)
        self._left: weakref.ref[TrackHandle] | None = None  # the last handle to leave

    def join(self, handle: TrackHandle) -> None:
        self.handles = (*self.handles, handle)
        if self._pre is None:
            self._pre = register_optimizer_step_pre_hook(self._on_pre)
        if self._post is None:
            self._post = register_optimizer_step_post_hook(self._on_post)

    def leave(self, handle: TrackHandle) -> None:
        self.handles = tuple(h for h in self.handles if h is not handle)
        self._left = weakref.ref(handle)

    def _count_error(self) -> None:
        """An exception at the hook boundary: counted here and in the ``errors`` of the
        handles it concerns (those joined, else the last one to leave)."""
        self.errors += 1
        left = self._left() if self._left is not None else None
        for handle in self.handles or ((left,) if left is not None else ()):
            handle.recorder.hook_errors += 1

    def _on_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            handles = self.handles
            for handle in handles:
                handle._pre(optimizer, args, kwargs)
            if not handles:
                self._drop_post()  # torch is iterating the pre hooks now, not the post hooks
                if self._pre is not None and _is_last(self._pre):
                    self._drop_pre()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self._count_error()

    def _on_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            for handle in self.handles:
                handle._post(optimizer, args, kwargs)
            if not self.handles:
                self._drop_pre()
                if self._post is not None and _is_last(self._post):
                    self._drop_post()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self._count_error()
        for handle in self.handles:  # a budget stop: BudgetExceeded, after the step completed
            if handle.client.budget.pending and handle._optimizer == id(optimizer):
                handle.budget_stop()

    def tidy(self) -> None:
        """From an optimizer's own post hook (torch is done with the global pre hooks and has
        not begun the global post hooks): remove both if no handle is left."""
        if not self.handles:
            self._drop_pre()
            self._drop_post()

    def _drop_pre(self) -> None:
        hook, self._pre = self._pre, None
        if hook is not None:
            hook.remove()

    def _drop_post(self) -> None:
        hook, self._post = self._post, None
        if hook is not None:
            hook.remove()


_global_hooks = _GlobalHooks()
# This process's live runs (for a forked child to silence the ones it inherits).
_runs: weakref.WeakSet[TrackedRun] = weakref.WeakSet()


class TrackedRun:
    """A run in this process: the recorder, the CUDA switch-over and the run's end. The public
    base of every torch-based hook: :class:`TrackHandle`, :class:`StepTimer` and the Lightning
    and Hugging Face callbacks, which feed :attr:`recorder` themselves and call
    :meth:`check_cuda` once they know the model is on CUDA.

    The run ends once: by :meth:`stop` (or :meth:`release`), whichever comes first, from any
    thread; later calls do nothing. In a forked child an inherited run is silent for good."""

    def __init__(self, client: Client, batch_size: int | None, *, auto: bool = False) -> None:
        if not auto:  # an explicit hook: the automatic one (profiler run --hooks) steps aside
            _hand_over_auto()
        self.client = client
        self.recorder = StepRecorder(client, batch_size=batch_size)
        self._cuda_checked = False
        self._stopped = False
        self._ending = threading.Lock()  # taken once, by the call that ends the run
        atexit.register(self._at_exit)
        _runs.add(self)

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

    def check_cuda(self) -> None:
        """Once, after the first step (or at the start, for a hook that knows the model is on
        CUDA): if the training uses CUDA, time steps with CUDA events, read framework memory and
        declare the device."""
        self._cuda_checked = True
        uuid = cuda_device_uuid()
        if uuid is None:
            return
        self.recorder.device_clock = CudaEventClock()
        self.recorder.memory_probe = torch_cuda_memory
        self.client.update_hello(devices=[uuid], clock="cuda_event", memory_source="torch.cuda")

    def _remove_hooks(self) -> None:
        pass

    @property
    def stopped(self) -> bool:
        """Whether the run has ended here (stopped, released, replaced, or inherited by fork)."""
        return self._stopped

    def _end(self) -> bool:
        """Claim the run's end: True for the first caller only (any thread)."""
        if not self._ending.acquire(blocking=False):
            return False
        self._stopped = True
        atexit.unregister(self._at_exit)
        self._remove_hooks()
        return True

    def stop(self, status: str = "finished") -> None:
        """Stop tracking: send the remaining steps and ``bye`` (``status``: ``finished``,
        ``failed`` or ``interrupted``). Only the first call (from any thread) does anything."""
        if not self._end():
            return
        try:
            self.recorder.finish()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self.recorder.hook_errors += 1
        self.client.close(status)

    def release(self) -> None:
        """Stop without ``bye``: send the steps so far and leave the run to another hook of
        this process (the automatic hook handing over to an explicit one, a second
        ``track()`` in the same run)."""
        if not self._end():
            return
        try:
            self.recorder.finish()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self.recorder.hook_errors += 1
        self.client.close(send_bye=False)

    def _forget_inherited(self) -> None:
        """In a forked child: this run is the parent's; end it here without a word (the
        client is silenced by :mod:`hooks.client`'s own fork handler)."""
        if self._ending.acquire(blocking=False):
            self._stopped = True
            atexit.unregister(self._at_exit)
            self._remove_hooks()
        del self.recorder.ends[:]

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
    """For framework callbacks that start a :class:`TrackedRun` per fit/train: what a user or
    test reads. Expects ``_run``, ``base_run_id`` and ``_errors`` on the instance."""

    _run: TrackedRun | None
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


class TrackHandle(TrackedRun):
    """A run tracked through the optimizer's steps. Use as a context manager or call
    :meth:`stop`.

    The first step is seen through torch's global optimizer-step hooks, which learn which
    optimizer defines the step. From then on, on CPU, the global hooks are removed and a hook on
    that optimizer alone costs one clock read and one append to the recorder's fast lane (see
    :class:`hooks.recorder.StepRecorder`), handed to the client every :data:`FLUSH_INTERVAL_S`.
    """

    def __init__(self, client: Client, batch_size: int | None, *, auto: bool = False) -> None:
        self._due = [time.monotonic() + FLUSH_INTERVAL_S]  # the fast hook's next flush
        self._own_hook: Any = None  # the fast hook's handle on its optimizer
        super().__init__(client, batch_size, auto=auto)
        self._optimizer: int | None = None
        # On the optimizer's own hook (the steady state on CPU): off the global hooks.
        self.fast = False
        self.fast_hook = self._make_fast_hook()
        # The automatic hook feeds an auto handle from its own global hooks instead.
        if not auto:
            _global_hooks.join(self)

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
                self.check_cuda()
                if self.recorder.device_clock is None and self.recorder.memory_probe is None:
                    # torch is done with this optimizer's own post hooks for this step
                    _global_hooks.leave(self)
                    self._own_hook = optimizer.register_step_post_hook(self.fast_hook)
                    self.fast = True
        except Exception:  # noqa: BLE001 - the hook boundary
            self.recorder.hook_errors += 1

    def _make_fast_hook(self) -> Any:
        """The steady-state hook, with what it touches bound to locals. Every flush it also
        removes the idle global hooks; once the run has ended (``due`` is -inf) it drops what
        it appended and removes itself when torch allows (it is its optimizer's last hook)."""
        monotonic = time.monotonic
        ends = self.recorder.ends
        append = ends.append
        due = self._due
        recorder = self.recorder
        handle = self
        budget = self.client.budget

        def fast_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            now = monotonic()
            append(now)
            if budget.pending:  # the daemon stopped the run: raise after this completed step
                handle.budget_stop()
            if now >= due[0]:
                try:
                    if handle._stopped:
                        del ends[:]
                        handle._unhook_fast()
                        return
                    due[0] = now + FLUSH_INTERVAL_S
                    recorder.drain_ends()
                    _global_hooks.tidy()
                except Exception:  # noqa: BLE001 - the hook boundary
                    recorder.hook_errors += 1

        return fast_hook

    def budget_stop(self) -> None:
        """Raise :class:`hooks.BudgetExceeded` when the daemon's stop applies after the step
        just completed (every rank at the same step); the only exception a hook raises."""
        try:
            exceeded = self.client.budget.due(self.run_id, self.recorder.steps_seen)
        except Exception:  # noqa: BLE001 - the hook boundary
            self.recorder.hook_errors += 1
            return
        if exceeded is not None:
            raise exceeded

    def _unhook_fast(self) -> None:
        own = self._own_hook
        if own is not None and _is_last(own):
            self._own_hook = None
            own.remove()

    def _remove_hooks(self) -> None:
        """Leave the global hooks and tell the fast hook, which removes itself at its next call
        (never from here: torch may be iterating its optimizer's hooks in another thread)."""
        _global_hooks.leave(self)
        self._due[0] = -math.inf


@dataclass
class StepMark:
    """The step being timed; set ``samples`` or ``loss`` inside the ``with`` block."""

    samples: int | None = None
    loss: Any = None


class StepTimer(TrackedRun):
    """A run whose steps the code marks itself::

    with timer.step(samples=len(batch)) as step:
        loss = model(batch)
        step.loss = loss  # optional: a NaN or inf loss is flagged
    """

    @contextmanager
    def step(self, samples: int | None = None, loss: Any = None) -> Iterator[StepMark]:
        """Time one step; ``samples`` defaults to the timer's ``batch_size``. The step counts
        only if its block finishes without an exception, and not after :meth:`stop`."""
        mark = StepMark(samples, loss)
        live = not self._stopped
        try:
            if live and not self._cuda_checked and self.recorder.steps == 0:
                self.check_cuda()
            if live:
                self.recorder.begin()
        except Exception:  # noqa: BLE001 - the hook boundary
            self.recorder.hook_errors += 1
        yield mark
        if not live or self._stopped:
            return
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
        options = RunOptions(
            name=name,
            project=project,
            batch_size=batch_size,
            total_steps=total_steps,
            run_id=run_id,
            user=user,
        )
        fields = _hello(options, "pytorch.StepTimer")
        super().__init__(Client(options.job_run_id(), fields), batch_size)


def track(
    name: str | None = None,
    *,
    project: str = "",
    batch_size: int | None = None,
    total_steps: int | None = None,
    run_id: str | None = None,
    user: str | None = None,
    budget: float | None = None,
    on_exceed: str | None = None,
) -> TrackHandle:
    """Start streaming this process's optimizer steps to the profiler daemon.

    ``batch_size`` is samples per optimizer step on this rank (0/None: samples are not counted);
    ``total_steps`` lets dashboards project the end. The run id is ``run_id``, else
    ``PROFILER_RUN_ID``, ``TORCHELASTIC_RUN_ID`` or ``SLURM_JOB_ID``, else generated from the name
    (an id the daemon would refuse or rewrite is replaced, with one warning line).

    One ``track()`` run per process at a time: a second ``track()`` replaces the first, whose
    run ends ``finished`` with the steps it counted (or, when both name the same run, carries on
    in the new handle); no step is counted twice. Never raises into training, but for one
    exception: with a ``budget`` (in the pricing's currency; ``on_exceed`` ``"stop"`` or
    ``"warn"``, default ``profiler.toml [budget] on_exceed``) or a ``[budget] per_run`` with
    ``on_exceed = "stop"``, :class:`hooks.BudgetExceeded` is raised from the first
    ``optimizer.step()`` that completes after the daemon stopped the run (a warning at
    ``warn_at`` is one line on stderr).
    """
    global _current
    options = RunOptions(
        name=name,
        project=project,
        batch_size=batch_size,
        total_steps=total_steps,
        run_id=run_id,
        user=user,
    )
    fields = {**_hello(options, "pytorch.track"), **budget_field(budget, on_exceed)}
    client = Client(options.job_run_id(), fields)
    previous = _current
    if previous is not None and not previous.stopped:
        if previous.run_id == client.run_id:
            previous.release()
        else:
            previous.stop("finished")
    handle = _current = TrackHandle(client, batch_size)
    return handle


_current: TrackHandle | None = None  # the live track() handle, which a second track() replaces


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
                options = RunOptions()
                fields = _hello(options, "pytorch.auto")
                client = Client(options.job_run_id(), fields)
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


def _forget_inherited() -> None:
    """In a forked child: the runs it inherits are its parent's (see :class:`TrackedRun`); the
    automatic hook goes off (the child's steps would count twice as the parent's rank)."""
    global _current
    _current = None
    if _auto is not None:
        _auto.off = True
    for run in list(_runs):
        run._forget_inherited()


os.register_at_fork(after_in_child=_forget_inherited)


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


def _hello(options: RunOptions, hook: str) -> dict[str, Any]:
    """The ``hello`` fields of a torch hook's run (``hook``: which one)."""
    return options.hello_fields(
        framework="pytorch",
        framework_version=torch.__version__,
        hook=hook,
        samples_source="argument" if options.batch_size else "none",
    )
