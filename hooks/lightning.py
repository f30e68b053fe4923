"""Lightning one-liner: ``Trainer(callbacks=[EnergyCallback(name="my-run")])``.

The same callback works with ``lightning.pytorch.Trainer`` and ``pytorch_lightning.Trainer``: it
subclasses the ``Callback`` base of each of the two packages that is installed (Lightning checks
``isinstance``).

A run is one ``trainer.fit()``: it starts at ``on_fit_start`` (so the sanity check and checkpoint
restore are inside it) and ends at ``on_fit_end`` (``finished``) or ``on_exception`` (``failed``,
or ``interrupted`` on Ctrl-C). A later ``fit()`` with the same callback is a new run, with id
``<id>-2``, ``<id>-3``, ... (the same on every rank). The run id is chosen when the callback is
created, before Lightning launches its per-rank processes, so that every rank joins one run.

A step is one optimizer step: it begins at ``on_train_batch_start`` of its first micro-batch and
ends at the ``on_train_batch_end`` after which ``trainer.global_step`` advanced. With
``accumulate_grad_batches=k`` a step spans k micro-batches (fewer at an epoch's end); in manual
optimization a batch in which several optimizers stepped (a GAN) is one step. Validation runs
outside steps.

The samples of a step are the sizes of its micro-batches, read from each batch as seen by the
hook: the first dimension of the first tensor found in it (through dicts, lists and tuples), or
the length of a list of strings (``samples_source = "batch"``). Where a batch has no readable
size, the ``batch_size`` argument stands in for it (``"argument"``). On several ranks each rank
counts its own batches.

The loss is ``outputs["loss"]`` (or ``outputs`` itself when it is a tensor) of the micro-batch
that stepped; in automatic optimization Lightning divides it by ``accumulate_grad_batches``, and
the hook multiplies it back. It is read as a number only when the step's row is sent, after the
device finished the step, so the hook never synchronises the GPU.

On CUDA (``pl_module.device.type == "cuda"``) steps are timed with CUDA events, ``torch.cuda``
memory is sampled and the GPU is declared, as in :mod:`hooks.pytorch`. Ranks come from
``trainer.global_rank``, ``trainer.local_rank`` and ``trainer.world_size``; ``total_steps`` from
``trainer.estimated_stepping_batches`` (when finite) less the steps a resumed run already made.
Nothing raises into training: errors are counted in :attr:`EnergyCallback.errors`.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from hooks.budget import budget_field
from hooks.client import Client
from hooks.options import RunOptions
from hooks.pytorch import CallbackRuns, TrackedRun


def _callback_bases() -> tuple[type, ...]:
    bases = []
    for package in ("lightning.pytorch", "pytorch_lightning"):
        try:
            bases.append(importlib.import_module(package).Callback)
        except Exception:  # noqa: BLE001 - a missing or broken install of one package is skipped
            continue
    if not bases:
        raise ImportError("hooks.lightning needs lightning (or pytorch_lightning) installed")
    return tuple(bases)


def batch_size_of(batch: Any) -> int | None:
    """The number of samples in a batch: the first dimension of its first tensor (looking into
    dicts, lists and tuples), or the length of a list of strings/numbers; None when unknown."""
    for _ in range(8):  # nesting depth
        shape = getattr(batch, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) else None
        if isinstance(batch, Mapping):
            batch = next(iter(batch.values()), None)
        elif isinstance(batch, (list, tuple)) and batch:
            if isinstance(batch[0], (str, bytes, int, float)):
                return len(batch)
            batch = batch[0]
        else:
            return None
    return None


class _ScaledLoss:
    """A loss times a factor, converted by ``float()`` only when the step's row is sent."""

    __slots__ = ("factor", "loss")

    def __init__(self, loss: Any, factor: float) -> None:
        self.loss = loss
        self.factor = factor

    def __float__(self) -> float:
        return float(self.loss) * self.factor


class EnergyCallback(*_callback_bases(), CallbackRuns):
    """Streams a Lightning training's optimizer steps to the profiler daemon.

    ``batch_size`` (samples in one micro-batch on this rank) stands in only for batches whose size
    cannot be read from the batch. The run id
    is ``run_id``, else ``PROFILER_RUN_ID``, ``TORCHELASTIC_RUN_ID`` or ``SLURM_JOB_ID``, else
    generated from the name (and exported, so rank processes launched later join the run).
    ``budget`` and ``on_exceed`` as for :func:`hooks.pytorch.track`: at the daemon's stop,
    ``trainer.should_stop = True`` after the optimizer step that completed.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        project: str = "",
        batch_size: int | None = None,
        run_id: str | None = None,
        user: str | None = None,
        budget: float | None = None,
        on_exceed: str | None = None,
    ) -> None:
        super().__init__()
        self.budget = budget
        self.on_exceed = on_exceed
        self.budget_stopped = False  # a budget stop set trainer.should_stop
        self.name = name
        self.project = project
        self.batch_size = batch_size
        self.user = user
        self._run_id = run_id
        self.base_run_id = self.options.job_run_id()
        self.fits = 0
        self._run: TrackedRun | None = None
        self._last_global_step = 0
        self._step_open = False
        self._samples = 0
        self._source: str | None = None
        self._errors = 0

    # ---- what a user or test can read ---------------------------------------------------------

    @property
    def options(self) -> RunOptions:
        """The run arguments as they stand (the attributes ``name``, ``project``,
        ``batch_size`` and ``user`` may be changed until a fit begins; the run id is fixed at
        construction, :attr:`base_run_id`)."""
        return RunOptions(
            name=self.name,
            project=self.project,
            batch_size=self.batch_size,
            run_id=self._run_id,
            user=self.user,
        )

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the trainer and its callbacks: a live run (socket, thread) stays here.
        state = dict(self.__dict__)
        state["_run"] = None
        return state

    # ---- the run ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        try:
            if self._run is not None:
                self._run.stop("finished")  # a fit that ended without on_fit_end (the tuner's)
            self.fits += 1
            rid = self.base_run_id if self.fits == 1 else f"{self.base_run_id}-{self.fits}"
            package = type(trainer).__module__.split(".")[0]  # lightning or pytorch_lightning
            options = self.options
            batch_size = options.batch_size
            per_step = (batch_size or 0) * trainer.accumulate_grad_batches
            fields = replace(options, batch_size=per_step).hello_fields(
                framework="lightning",
                framework_version=str(getattr(sys.modules.get(package), "__version__", "")),
                hook=f"{package}.EnergyCallback",
                samples_source="argument" if batch_size else "none",
                ranks=(trainer.global_rank, trainer.local_rank, trainer.world_size),
            )
            fields.update(budget_field(self.budget, self.on_exceed))
            self._run = TrackedRun(Client(rid, fields), batch_size)
            self._source = None
            if pl_module.device.type == "cuda":
                self._run.check_cuda()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self._errors += 1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        try:
            self._last_global_step = trainer.global_step  # restored by now when resuming
            self._step_open = False
            total = trainer.estimated_stepping_batches
            if self._run is not None and math.isfinite(total) and total > 0:
                remaining = int(total) - trainer.global_step
                self._run.client.update_hello(total_steps=remaining if remaining > 0 else None)
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop("finished")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop("interrupted" if isinstance(exception, KeyboardInterrupt) else "failed")

    def _stop(self, status: str) -> None:
        try:
            if self._run is not None:
                self._run.stop(status)
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    # ---- steps --------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning steps at every epoch's last batch: nothing carries over from a batch that
        # ended an epoch early (on_train_batch_start returned -1).
        self._step_open = False

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        try:
            run = self._run
            if run is None:
                return
            if not self._step_open:
                self._step_open = True
                self._samples = 0
                run.recorder.begin()
            size = batch_size_of(batch)
            if self._source is None:
                self._source = "batch" if size is not None else "argument"
                if size is not None:
                    run.client.update_hello(samples_source="batch")
            self._samples += size if size is not None else (self.batch_size or 0)
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        try:
            run = self._run
            step = trainer.global_step
            if run is None or step == self._last_global_step:
                return  # accumulating: the optimizer has not stepped yet
            self._last_global_step = step
            self._step_open = False
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if not hasattr(loss, "detach"):
                loss = None
            elif pl_module.automatic_optimization and trainer.accumulate_grad_batches != 1:
                loss = _ScaledLoss(loss.detach(), trainer.accumulate_grad_batches)
            else:
                loss = loss.detach()
            samples, self._samples = self._samples, 0
            run.recorder.end(samples=samples, loss=loss)
            if run.client.budget.pending and run.client.budget.due(
                run.run_id, run.recorder.steps_seen
            ):  # the daemon stopped the run for its budget: end after this step
                self.budget_stopped = True
                trainer.should_stop = True
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1
