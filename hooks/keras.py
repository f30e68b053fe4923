"""Keras one-liner: ``model.fit(..., callbacks=[EnergyCallback(name="my-run", batch_size=32)])``.

Works with Keras 3 on any backend (TensorFlow, JAX, PyTorch) and with legacy ``tf_keras``
(Keras 2, ``TF_USE_LEGACY_KERAS=1``). :class:`EnergyCallback` is a plain object with every method
either framework's ``CallbackList`` calls (Keras 3 accepts any object with the ``on_*`` methods;
tf_keras also calls the private ``_implements_*_batch_hooks`` methods, provided here), so this
module imports no framework: it tells Keras 3 from tf_keras by the model's class.

Runs: each ``fit()`` is one run. The connection to the daemon opens at ``on_train_begin`` and the
run ends with ``bye`` (status ``finished``) at ``on_train_end``. When ``fit`` raises,
``on_train_end`` never comes: the run ends as ``failed`` (``interrupted`` on Ctrl-C) at the next
``fit`` with the same callback or at interpreter exit, whichever comes first. A later ``fit`` is
a new run with a new id, unless the id was fixed by ``run_id=`` or ``PROFILER_RUN_ID``.

Steps: one step per training batch, on CLOCK_MONOTONIC (seconds), from ``on_train_batch_begin``
to ``on_train_batch_end``; validation and epoch-end work fall between steps. With
``steps_per_execution=N`` the batch hooks fire once per N batches (begin gets the first batch
index, end the last): that call counts as its N batches sharing its time evenly. Keras 3 passes
a full N for the last, partial group of an epoch; it is cut to the epoch's length when Keras
knows that length (``params["steps"]``), else (data of unknown length) it counts N.

Samples: Keras does not tell callbacks the batch size, so each step counts ``batch_size`` samples
as given (``samples_source = "argument"``): a partial last batch of an epoch counts as a full one.
Without ``batch_size`` samples are not counted (``"none"``).

Loss: ``logs["loss"]`` at each batch end (Keras's running mean over the epoch so far); a NaN or
infinite loss marks the step ``nonfinite``. Keras 3 copies logs to the host before every batch
hook anyway, so the callback gets numbers. tf_keras hands tensors to callbacks that accept them,
as this one does (``_supports_tf_logs``), and copies nothing itself unless ``verbose=1``: batch
k's step is then sent at the end of batch k+1, with its own timestamps, its loss read only after
batch k+1 has been queued (so the device has work while the host waits for batch k's value).

Devices and memory: with TensorFlow (Keras 3's TF backend or tf_keras) on a GPU, framework memory
is ``tf.config.experimental.get_memory_info("GPU:0")`` (current and peak bytes;
``memory_source = "tf.config"``). With Keras 3's torch backend on CUDA, steps are also timed with
CUDA events (``clock = "cuda_event"``) and memory comes from ``torch.cuda``, as in
:mod:`hooks.pytorch`. On CPU, or with JAX, no framework memory is reported.

Nothing here raises into training: errors are counted in :attr:`EnergyCallback.errors`.
``async_safe`` stays False, so Keras 3 calls the batch hooks in order on the training thread and
the timestamps are exact.
"""

from __future__ import annotations

import atexit
import numbers
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hooks.budget import budget_field
from hooks.client import Client
from hooks.options import RunOptions
from hooks.recorder import DeviceClock, MemoryProbe, StepRecorder

HOOK = "keras.EnergyCallback"


def _default(method: Callable) -> Callable:
    """Mark a no-op hook the way both Keras versions mark their base class's (``_is_default``),
    so it does not stop Keras 3 from dispatching other callbacks' hooks asynchronously."""
    method._is_default = True
    return method


class EnergyCallback:
    """Streams each ``fit()``'s training batches to the profiler daemon.

    ``batch_size`` is samples per batch on this process (0/None: samples are not counted);
    ``total_steps`` overrides the projection ``params["steps"] * params["epochs"]``. The run id is
    ``run_id``, else ``PROFILER_RUN_ID``, ``TORCHELASTIC_RUN_ID`` or ``SLURM_JOB_ID``, else
    generated from the name. ``budget`` (the pricing's currency) and ``on_exceed`` as for
    :func:`hooks.pytorch.track`: at a stop from the daemon, ``model.stop_training`` is set after
    the batch that completed, so ``fit`` ends cleanly and later callbacks (checkpoints) run.
    """

    # Keras 3: batch hooks run in order on the training thread (exact timestamps).
    async_safe = False
    # tf_keras: this callback takes tensors in logs (it reads them without blocking the device).
    _supports_tf_logs = True
    _chief_worker_only = None

    def __init__(
        self,
        name: str | None = None,
        *,
        project: str = "",
        batch_size: int | None = None,
        total_steps: int | None = None,
        run_id: str | None = None,
        user: str | None = None,
        budget: float | None = None,
        on_exceed: str | None = None,
    ) -> None:
        self.name = name
        self.budget = budget
        self.on_exceed = on_exceed
        self.budget_stopped = False  # a budget stop set model.stop_training
        self.project = project
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.user = user
        self._run_id = run_id
        self.params: dict[str, Any] = {}
        self.validation_data = None
        self._model: Any = None
        self._recorder: StepRecorder | None = None  # the current or last run's
        self._active = False
        self._defer = False  # tf_keras: send a step when the next batch ends
        self._steps_per_epoch: int | None = None
        self._begin_index: int | None = None
        self._begin_t: float | None = None
        self._pending: tuple[float | None, float, int, Any] | None = None
        self._errors = 0

    # ---- what callers read ---------------------------------------------------------------------

    @property
    def model(self) -> Any:
        return self._model

    @property
    def options(self) -> RunOptions:
        """The run arguments as they stand (the attributes ``name``, ``project``,
        ``batch_size``, ``total_steps`` and ``user`` may be changed until a ``fit`` begins)."""
        return RunOptions(
            name=self.name,
            project=self.project,
            batch_size=self.batch_size,
            total_steps=self.total_steps,
            run_id=self._run_id,
            user=self.user,
        )

    @property
    def run_id(self) -> str | None:
        """The current (or last) run's id; None before the first ``fit``."""
        return self._recorder.client.run_id if self._recorder else None

    @property
    def steps(self) -> int:
        """Steps recorded in the current (or last) run."""
        return self._recorder.steps if self._recorder else 0

    @property
    def errors(self) -> int:
        """Exceptions swallowed at the hook boundary (all runs, plus the last run's client)."""
        return self._errors + (self._recorder.errors if self._recorder else 0)

    @property
    def dropped_total(self) -> int:
        """Steps of the current (or last) run not delivered to the daemon."""
        return self._recorder.client.dropped_total if self._recorder else 0

    # ---- the callback protocol (Keras 3 and tf_keras) --------------------------------------------

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params or {}

    def set_model(self, model: Any) -> None:
        self._model = model

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            if self._active:  # the previous fit() raised before on_train_end
                self.stop("failed")
            self._start()
        except Exception:  # noqa: BLE001 - the hook boundary: never raise into training
            self._errors += 1

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        try:
            if not self._active:
                return
            self._begin_index = batch
            if self._defer:
                self._begin_t = time.monotonic()
            else:
                self._recorder.begin()
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        try:
            if not self._active:
                return
            end = time.monotonic()
            count = self._count(batch)
            loss = logs.get("loss") if logs else None
            if not self._defer:
                self._recorder.end(count=count, loss=loss, now=end)
                return
            if self._pending is not None:
                self._send_pending(read_loss=True)
            if loss is None or isinstance(loss, numbers.Real):
                self._send(self._begin_t, end, count, loss)
            else:  # a tensor: read it when the next batch has been queued
                self._pending = (self._begin_t, end, count, loss)
            self._begin_t = None
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1
        finally:
            self._check_budget()

    def _check_budget(self) -> None:
        """A budget stop from the daemon: ``model.stop_training = True`` after this batch."""
        try:
            recorder = self._recorder
            if recorder is None or not recorder.client.budget.pending:
                return
            if recorder.client.budget.due(recorder.client.run_id, recorder.steps_seen):
                self.budget_stopped = True
                self._model.stop_training = True
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        try:
            if self._pending is not None:  # tf_keras has already read the epoch's logs
                self._send_pending(read_loss=True)
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        try:
            self.stop("finished")
        except Exception:  # noqa: BLE001 - the hook boundary
            self._errors += 1

    @_default
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    @_default
    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    # tf_keras's CallbackList asks which batch hooks to call.
    def _implements_train_batch_hooks(self) -> bool:
        return True

    def _implements_test_batch_hooks(self) -> bool:
        return False

    def _implements_predict_batch_hooks(self) -> bool:
        return False

    # ---- the run ---------------------------------------------------------------------------------

    def stop(self, status: str = "finished") -> None:
        """End the current run: send the remaining steps and ``bye`` with ``status``
        (``on_train_end`` does this; call it yourself only when driving the hooks by hand)."""
        if not self._active:
            return
        self._active = False
        atexit.unregister(self._at_exit)
        recorder = self._recorder
        try:
            if self._pending is not None:
                # After a failure, leave the framework alone: the step counts, its loss not.
                self._send_pending(read_loss=status == "finished")
            recorder.finish()
        except Exception:  # noqa: BLE001 - the hook boundary
            recorder.hook_errors += 1
        recorder.client.close(status)

    def _start(self) -> None:
        framework, version = framework_of(self._model)
        steps = _positive_int(self.params.get("steps"))
        epochs = _positive_int(self.params.get("epochs"))
        self._steps_per_epoch = steps
        options = self.options
        total = options.total_steps or (steps * epochs if steps and epochs else None)
        probe, clock, device_fields = _device_setup(framework)
        fields = replace(options, total_steps=total).hello_fields(
            framework=framework,
            framework_version=version,
            hook=HOOK,
            samples_source="argument" if options.batch_size else "none",
            **device_fields,
        )
        fields.update(budget_field(self.budget, self.on_exceed))
        client = Client(options.job_run_id(), fields)
        self._recorder = StepRecorder(
            client, batch_size=options.batch_size, device_clock=clock, memory_probe=probe
        )
        self._defer = framework == "tf_keras"
        self._begin_index = None
        self._begin_t = None
        self._pending = None
        self._active = True
        atexit.register(self._at_exit)

    def _count(self, end_index: int) -> int:
        """Batches covered by the hook call ending at batch ``end_index``."""
        begin, self._begin_index = self._begin_index, None
        if begin is None or begin == end_index:  # one batch per call (steps_per_execution 1)
            return 1
        last = int(end_index)
        if self._steps_per_epoch:
            last = min(last, self._steps_per_epoch - 1)
        return max(1, last - int(begin) + 1)

    def _send(self, begin_t: float | None, end_t: float, count: int, loss: Any) -> None:
        if begin_t is not None:
            self._recorder.begin(now=begin_t)
        self._recorder.end(count=count, loss=loss, now=end_t)

    def _send_pending(self, read_loss: bool) -> None:
        begin_t, end_t, count, tensor = self._pending
        self._pending = None
        loss = None
        if read_loss:
            try:
                loss = float(tensor)
            except Exception:  # noqa: BLE001 - the hook boundary: an unreadable loss is skipped
                self._errors += 1
        self._send(begin_t, end_t, count, loss)

    def _at_exit(self) -> None:
        failure = getattr(sys, "last_value", None)
        self.stop("interrupted" if isinstance(failure, KeyboardInterrupt) else "failed")

    def __getstate__(self) -> dict[str, Any]:
        """Copies (``copy.deepcopy``, as tuners do) carry the settings, not a run in progress."""
        state = dict(self.__dict__)
        state.update(_model=None, _recorder=None, _active=False, _pending=None)
        return state


KERAS_DEFAULT_BATCH_SIZE = 32  # what fit() uses for array inputs when batch_size is not given


def auto_callback(keras_module: Any) -> bool:
    """``profiler run --hooks``: make every ``fit()`` of ``keras_module.Model`` (Keras 3's
    ``keras`` or legacy ``tf_keras``; called by :mod:`hooks.autoload` when one is imported)
    add an :class:`EnergyCallback` unless its ``callbacks`` already hold one (an explicit
    callback wins, so no step is counted twice). Samples per step are ``fit``'s ``batch_size``,
    else Keras's default 32 for array inputs, else not counted (datasets, generators). Returns
    whether ``fit`` was wrapped (once per class)."""
    model = getattr(keras_module, "Model", None)
    fit = getattr(model, "fit", None)
    if fit is None or getattr(fit, "_profiler_auto", False):
        return False
    model.fit = _fit_with_callback(fit)
    return True


def _fit_with_callback(fit: Callable) -> Callable:
    import functools
    import inspect

    signature = inspect.signature(fit)

    @functools.wraps(fit)
    def fit_profiled(self: Any, *args: Any, **kwargs: Any) -> Any:
        global auto_errors
        try:
            args, kwargs = _with_callback(signature, self, args, kwargs)
        except Exception:  # noqa: BLE001 - the hook boundary: fit runs as the user called it
            auto_errors += 1
        return fit(self, *args, **kwargs)

    fit_profiled._profiler_auto = True  # type: ignore[attr-defined]
    return fit_profiled


auto_errors = 0  # exceptions swallowed while adding the automatic callback


def _with_callback(signature: Any, model: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``fit``'s arguments with an :class:`EnergyCallback` added to ``callbacks`` when they hold
    none (a ``CallbackList`` object is left as it is)."""
    bound = signature.bind_partial(model, *args, **kwargs)
    given = bound.arguments.get("callbacks")
    if given is not None and not isinstance(given, (list, tuple)):
        return args, kwargs
    callbacks = list(given or [])
    if any(isinstance(cb, EnergyCallback) for cb in callbacks):
        return args, kwargs
    batch_size = bound.arguments.get("batch_size")
    if batch_size is None and hasattr(bound.arguments.get("x"), "shape"):
        batch_size = KERAS_DEFAULT_BATCH_SIZE
    callbacks.append(EnergyCallback(batch_size=batch_size))
    bound.arguments["callbacks"] = callbacks
    return bound.args[1:], bound.kwargs


def framework_of(model: Any) -> tuple[str, str]:
    """``(framework, version)`` for the package the model's class comes from: ``"tf_keras"`` or
    ``"keras-<backend>"`` (``keras-tensorflow``, ``keras-torch``, ``keras-jax``). Without a model,
    from the Keras already imported; imports nothing new."""
    package = None
    for cls in type(model).__mro__ if model is not None else ():
        top = cls.__module__.split(".")[0]
        if top in ("keras", "tf_keras"):
            package = top
            break
    if package is None:
        only_legacy = "tf_keras" in sys.modules and "keras" not in sys.modules
        package = "tf_keras" if only_legacy else "keras"
    module = sys.modules.get(package)
    if module is None:
        return package, ""
    version = str(getattr(module, "__version__", ""))
    if package == "tf_keras":
        return "tf_keras", version
    try:
        return f"keras-{module.backend.backend()}", version
    except Exception:  # noqa: BLE001 - an unknown Keras: still a run
        return "keras", version


def tf_memory_probe(tf: Any) -> MemoryProbe | None:
    """A :data:`~hooks.recorder.MemoryProbe` on TensorFlow's allocator for its first GPU:
    ``(current, peak, None)`` bytes; None when TensorFlow lists no GPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    get_memory_info = tf.config.experimental.get_memory_info

    def probe() -> tuple[int | None, int | None, int | None] | None:
        try:
            info = get_memory_info("GPU:0")
        except Exception:  # noqa: BLE001 - the hook boundary: memory is optional
            return None
        return (info.get("current"), info.get("peak"), None)

    return probe


def _device_setup(framework: str) -> tuple[MemoryProbe | None, DeviceClock | None, dict[str, Any]]:
    """The memory probe, device clock and ``hello`` fields for the framework's device."""
    if framework in ("tf_keras", "keras-tensorflow"):
        import tensorflow as tf  # already imported by the model

        probe = tf_memory_probe(tf)
        return probe, None, {"memory_source": "tf.config"} if probe else {}
    if framework == "keras-torch":
        import torch  # already imported by the model

        # Keras builds the model's variables on the device before fit(), so CUDA is in use by now.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            from hooks.torch_cuda import CudaEventClock, cuda_device_uuid, torch_cuda_memory

            uuid = cuda_device_uuid()
            fields = {
                "clock": "cuda_event",
                "memory_source": "torch.cuda",
                "devices": [uuid] if uuid else None,
            }
            return torch_cuda_memory, CudaEventClock(), fields
    return None, None, {}


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
