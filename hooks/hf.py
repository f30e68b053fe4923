"""Hugging Face transformers one-liner: ``Trainer(..., callbacks=[EnergyCallback(name="my-run")])``.

A run is one ``trainer.train()``: it starts at ``on_train_begin`` and ends at ``on_train_end``
(``finished``). transformers has no exception event: a ``train()`` that raises ends its run at
interpreter exit (``failed``, or ``interrupted`` on Ctrl-C), or as ``failed`` when the next
``train()`` with the same callback begins. A later ``train()`` with the same callback is a new run,
with id ``<id>-2``, ``<id>-3``, ... (the same on every rank).

A step is one optimizer step (``state.global_step``): from ``on_step_begin`` (after the step's
micro-batches were fetched) to ``on_step_end``; with ``gradient_accumulation_steps=k`` a step spans
k micro-batches (fewer at an epoch's end). Evaluation, logging and saving run outside steps.

The samples of a step are ``args.train_batch_size`` (``per_device_train_batch_size``, times the
GPU count under ``nn.DataParallel``) times the micro-batches the step ran, counted from
``on_substep_end`` (``samples_source = "config"``): callbacks do not see the batches, so a short
last batch of an epoch (``dataloader_drop_last=False``) is counted as a full one. On several ranks
each rank counts its own batches.

The loss is what transformers logs, ``logs["loss"]`` in ``on_log`` every ``logging_steps`` steps:
the mean training loss over the steps since the previous log, averaged over ranks (transformers
synchronises for it; the hook does not). When a step is going to be logged (``control.should_log``
is set at its ``on_step_end``), the step's row waits for that ``on_log`` and carries its loss;
other steps carry none. With the default ``logging_nan_inf_filter=True`` transformers replaces a
NaN or infinite step loss by an average of finite ones, so non-finite losses are only seen with
``logging_nan_inf_filter=False``.

On CUDA (``args.device.type == "cuda"``) steps are timed with CUDA events, ``torch.cuda`` memory
is sampled and the GPU is declared (every visible GPU under ``nn.DataParallel``), as in
:mod:`hooks.pytorch`. Ranks come from ``args.process_index``, ``args.local_process_index`` and
``args.world_size``; ``total_steps`` is ``state.max_steps`` less the steps a resumed run already
made. Nothing raises into training: errors are counted in :attr:`EnergyCallback.errors`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import transformers
from transformers import TrainerCallback

from hooks.budget import budget_field
from hooks.client import Client
from hooks.options import RunOptions
from hooks.pytorch import CallbackRuns, TrackedRun
from hooks.torch_cuda import gpu_uuid


class EnergyCallback(TrainerCallback, CallbackRuns):
    """Streams a transformers ``Trainer``'s optimizer steps to the profiler daemon.

    The run id is ``run_id``, else ``PROFILER_RUN_ID``, ``TORCHELASTIC_RUN_ID`` (``torchrun``,
    ``accelerate launch``) or ``SLURM_JOB_ID``, else generated from the name. ``budget`` and
    ``on_exceed`` as for :func:`hooks.pytorch.track`: at the daemon's stop,
    ``control.should_training_stop = True`` after the optimizer step that completed (and
    ``control.should_save`` unless ``save_strategy`` is ``"no"``, so a checkpoint is saved).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        project: str = "",
        run_id: str | None = None,
        user: str | None = None,
        budget: float | None = None,
        on_exceed: str | None = None,
    ) -> None:
        self.budget = budget
        self.on_exceed = on_exceed
        self.budget_stopped = False  # a budget stop set control.should_training_stop
        self.name = name
        self.project = project
        self.user = user
        self._run_id = run_id
        self.base_run_id = self.options.job_run_id()
        self.trains = 0
        self._run: TrackedRun | None = None
        self._micro_batches = 0
        self._pending: tuple[float, int] | None = None  # (end, samples) of a step awaiting its loss
        self._errors = 0

    @property
    def options(self) -> RunOptions:
        """The run arguments as they stand (the attributes ``name``, ``project`` and ``user``
        may be changed until ``train()`` begins; the run id is fixed at construction,
        :attr:`base_run_id`)."""
        return RunOptions(name=self.name, project=self.project, run_id=self._run_id, user=self.user)

    # ---- the run ------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            if self._run is not None:
                self._run.stop("failed")  # the previous train() raised before on_train_end
            self.trains += 1
            rid = self.base_run_id if self.trains == 1 else f"{self.base_run_id}-{self.trains}"
            remaining = (state.max_steps or 0) - state.global_step
            options = replace(
                self.options,
                batch_size=args.train_batch_size * args.gradient_accumulation_steps,
                total_steps=remaining if remaining > 0 else None,
            )
            fields = options.hello_fields(
                framework="transformers",
                framework_version=transformers.__version__,
                hook="hf.EnergyCallback",
                samples_source="config",
                ranks=(args.process_index, args.local_process_index, args.world_size),
            )
            fields.update(budget_field(self.budget, self.on_exceed))
            self._run = TrackedRun(Client(rid, fields), None)
            self._micro_batches = 0
            self._pending = None
            if args.device.type == "cuda":
                self._run.check_cuda()
                if args.n_gpu > 1:  # nn.DataParallel over every visible GPU
                    devices = [gpu_uuid(i) for i in range(args.n_gpu)]
                    self._run.client.update_hello(devices=devices)
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self._errors += 1

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            if self._run is not None:
                self._end_pending(None)
                self._run.stop("finished")
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    # ---- steps --------------------------------------------------------------------------------

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            if self._run is not None:
                self._end_pending(None)  # its log never came
                self._micro_batches = 0
                self._run.recorder.begin()
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._micro_batches += 1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            if self._run is None:
                return
            end = time.monotonic()
            samples = args.train_batch_size * (self._micro_batches + 1)
            self._micro_batches = 0
            if control.should_log:  # on_log with this step's loss comes next
                self._pending = (end, samples)
            else:
                self._run.recorder.end(samples=samples, now=end)
            budget = self._run.client.budget
            if budget.pending:  # the daemon stopped the run for its budget: end after this step
                steps = self._run.recorder.steps_seen + (self._pending is not None)
                if budget.due(self._run.run_id, steps):
                    self.budget_stopped = True
                    control.should_training_stop = True
                    strategy = getattr(args, "save_strategy", "no")
                    if getattr(strategy, "value", strategy) != "no":
                        control.should_save = True
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        try:
            if self._pending is not None and logs and "loss" in logs:
                self._end_pending(logs["loss"])
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    def _end_pending(self, loss: Any) -> None:
        if self._pending is not None and self._run is not None:
            end, samples = self._pending
            self._pending = None
            self._run.recorder.end(samples=samples, loss=loss, now=end)
