"""Hook overhead, measured side by side in one process against a running daemon.

Every measurement alternates blocks with and without the hook (ABBA), each step timed on
``time.perf_counter``, so machine noise hits both sides alike:

1. **PyTorch ``track()``**, minimal step: a one-parameter SGD ``optimizer.step()``; the hook's
   steady-state optimizer hook is attached and detached between blocks. Added time per step =
   median (and p99) with the hook minus without, microseconds. Target <= 2 us.
2. **PyTorch ``track()``**, real step: an MLP's forward, backward and SGD step on one CPU thread
   (about 10 ms); slowdown = median step with / without - 1. Target <= 0.5 %.
3. **Keras ``EnergyCallback``**, minimal step: ``on_train_batch_begin`` + ``on_train_batch_end``
   (with a loss in the logs, as Keras gives it) called directly, against a callback object whose
   methods do nothing (the same dispatch). Target <= 2 us.
4. **Keras ``EnergyCallback``**, real step: ``model.fit`` (Keras 3, torch backend, CPU, the same
   MLP) for one epoch of 40 steps, with ``callbacks=[timer]`` and ``[timer, EnergyCallback()]``
   alternating; the timer callback (in both) marks each batch end, and the first step of each
   ``fit`` is left out. Each ``fit`` with the callback is a run of its own. Target <= 0.5 %.

The hooks talk to a real daemon subprocess (scripted simulated GPU, :mod:`bench.sim_daemon`).
Run: ``.venv/bin/python bench/overhead.py [--smoke] [--out FILE]`` (``--quick`` = ``--smoke``).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/overhead.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, bench_main, median, pct, progress, quantile  # noqa: E402
from bench.simgpu import start_sim_daemon, training_loop  # noqa: E402

TARGET_ADDED_US = 2.0
TARGET_SLOWDOWN = 0.005


def alternate(
    step: Callable[[], None],
    attach: Callable[[], None],
    detach: Callable[[], None],
    blocks: int,
    per_block: int,
) -> tuple[list[float], list[float]]:
    """Seconds of every step: (with hook, without), in blocks alternating ABBA."""
    clock = time.perf_counter
    with_hook: list[float] = []
    without: list[float] = []
    for b in range(blocks):
        for hooked in (True, False) if b % 2 == 0 else (False, True):
            if hooked:
                attach()
            out = with_hook if hooked else without
            for _ in range(per_block):
                t0 = clock()
                step()
                out.append(clock() - t0)
            if hooked:
                detach()
    return with_hook, without


def _added(with_hook: list[float], without: list[float]) -> dict[str, float]:
    """Added time per step, microseconds: median, p99 and mean differences."""
    return {
        "with_median_us": median(with_hook) * 1e6,
        "without_median_us": median(without) * 1e6,
        "added_median_us": (median(with_hook) - median(without)) * 1e6,
        "added_p99_us": (quantile(with_hook, 0.99) - quantile(without, 0.99)) * 1e6,
        "added_mean_us": (statistics.mean(with_hook) - statistics.mean(without)) * 1e6,
        "steps_each": len(with_hook),
    }


def _slowdown(with_hook: list[float], without: list[float]) -> dict[str, float]:
    """Slowdown of a real step: median with / without - 1 (and the medians, ms)."""
    return {
        "with_median_ms": median(with_hook) * 1e3,
        "without_median_ms": median(without) * 1e3,
        "slowdown": median(with_hook) / median(without) - 1,
        "slowdown_mean": statistics.mean(with_hook) / statistics.mean(without) - 1,
        "steps_each": len(with_hook),
    }


# ---- PyTorch -------------------------------------------------------------------------------


def pytorch(smoke: bool) -> dict[str, Any]:
    import torch
    from torch import nn

    from hooks.pytorch import track

    handle = track(name="bench-overhead", batch_size=64, run_id=f"bench-overhead-{os.getpid()}")
    param = nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    tiny = torch.optim.SGD([param], lr=0.0)
    tiny.step()  # the first step switches the hook to its steady state (one hook on `tiny`)
    # From here the benchmark attaches and removes that steady-state hook itself, between
    # blocks, so the blocks without the hook run with none (the handle's own removal waits for
    # its next call, by design: torch may be iterating the optimizer's hooks).
    attached = [handle._own_hook] if handle._own_hook is not None else []
    handle._own_hook = None

    def detach() -> None:
        while attached:
            attached.pop().remove()

    detach()

    def hook_on(opt: Any) -> Callable[[], None]:
        def attach() -> None:
            attached.append(opt.register_step_post_hook(handle.fast_hook))

        return attach

    progress("overhead: PyTorch track(), minimal optimizer.step()")
    micro = alternate(tiny.step, hook_on(tiny), detach, 10 if smoke else 100, 1000)
    model = nn.Sequential(
        nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 512), torch.randint(0, 10, (64,))
    loss_fn = nn.CrossEntropyLoss()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(20):
        train_step()
    progress("overhead: PyTorch track(), MLP training step")
    real = alternate(train_step, hook_on(opt), detach, 4 if smoke else 100, 10)
    hook_on(tiny)()
    handle.stop()
    return {
        "micro": _added(*micro),
        "real": _slowdown(*real),
        "steps_sent": handle.steps,
        "steps_dropped": handle.dropped_total,
        "torch": torch.__version__,
    }


# ---- Keras -------------------------------------------------------------------------------------


class _Timer:
    """A Keras callback that marks each training batch's end (perf_counter seconds)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def set_params(self, params: dict[str, Any]) -> None:
        pass

    def set_model(self, model: Any) -> None:
        pass

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.marks.append(time.perf_counter())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return _nothing
        raise AttributeError(name)


class _NoOp:
    """The callback protocol's two batch methods, doing nothing (the dispatch baseline)."""

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def keras_part(smoke: bool) -> dict[str, Any]:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import numpy as np
    import torch

    from hooks.keras import EnergyCallback

    torch.set_num_threads(1)
    model = keras.Sequential(
        [
            keras.Input((512,)),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    # 3. minimal: the callback's two batch hooks, called directly
    cb = EnergyCallback(name="bench-overhead-keras", batch_size=64)
    cb.set_model(model)
    cb.set_params({"verbose": 0, "epochs": 1, "steps": 10**9})
    cb.on_train_begin()
    noop = _NoOp()
    current: list[Any] = [noop]
    logs = {"loss": 0.5}
    counter = [0]

    def hooks_step() -> None:
        target = current[0]
        i = counter[0]
        target.on_train_batch_begin(i, {})
        target.on_train_batch_end(i, logs)
        counter[0] = i + 1

    progress("overhead: Keras EnergyCallback, batch hooks alone")
    micro = alternate(
        hooks_step,
        lambda: current.__setitem__(0, cb),
        lambda: current.__setitem__(0, noop),
        10 if smoke else 100,
        1000,
    )
    cb.on_train_end()
    steps_sent, dropped = cb.steps, cb.dropped_total

    # 4. real: fit() with and without the callback, alternating
    per_fit = 5 if smoke else 40
    x = np.random.default_rng(0).standard_normal((64 * per_fit, 512)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 64 * per_fit)
    with_steps: list[float] = []
    without_steps: list[float] = []
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # warm up
    progress("overhead: Keras EnergyCallback, model.fit (torch backend)")
    for b in range(2 if smoke else 16):
        for hooked in (True, False) if b % 2 == 0 else (False, True):
            timer = _Timer()
            callbacks: list[Any] = [timer]
            if hooked:
                callbacks.append(EnergyCallback(name="bench-overhead-keras-fit", batch_size=64))
            model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=callbacks)
            durations = [b2 - a for a, b2 in zip(timer.marks, timer.marks[1:], strict=False)]
            (with_steps if hooked else without_steps).extend(durations)
    return {
        "micro": _added(*micro),
        "real": _slowdown(with_steps, without_steps),
        "steps_sent": steps_sent,
        "steps_dropped": dropped,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }


# ---- all of it ---------------------------------------------------------------------------------


def measure(smoke: bool = False) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="profiler-bench-overhead-"))
    d = start_sim_daemon(home, training_loop(), time.monotonic(), repeat=True)
    os.environ.update(PROFILER_HOME=str(home), PROFILER_AUTOSTART="0")
    os.environ.pop("PROFILER_RUN_ID", None)
    import torch

    torch.set_num_threads(1)
    try:
        pt = pytorch(smoke)
        try:
            ks = keras_part(smoke)
        except ImportError as e:  # Keras is optional (the test-frameworks extra)
            ks = {"skipped": f"Keras not importable ({e})"}
    finally:
        d.stop()
    return {
        "pytorch": pt,
        "keras": ks,
        "smoke": smoke,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    }


def figures(result: dict[str, Any]) -> list[Figure]:
    figs = []
    for key, name in (("pytorch", "PyTorch track()"), ("keras", "Keras EnergyCallback")):
        if "skipped" in result[key]:
            for what, unit in (("added_us", "us"), ("slowdown", "ratio")):
                figs.append(
                    Figure(
                        f"overhead_{key}_{what}",
                        f"{name}: {what}",
                        math.nan,
                        unit,
                        "n/a",
                        note=result[key]["skipped"],
                    )
                )
            continue
        micro, real = result[key]["micro"], result[key]["real"]
        added = micro["added_median_us"]
        figs.append(
            Figure(
                f"overhead_{key}_added_us",
                f"{name}: added time per minimal step, median / p99",
                added,
                "us",
                f"{added:+.2f} / {micro['added_p99_us']:+.2f} us",
                f"<= {TARGET_ADDED_US:g} us",
                added <= TARGET_ADDED_US,
                note=f"{micro['with_median_us']:.2f} vs {micro['without_median_us']:.2f} us per "
                f"step; mean {micro['added_mean_us']:+.2f} us (includes the 0.1 s sends)",
                extra=micro,
            )
        )
        slow = real["slowdown"]
        figs.append(
            Figure(
                f"overhead_{key}_slowdown",
                f"{name}: slowdown of a ~10 ms CPU training step",
                slow,
                "ratio",
                f"{slow:+.2%}",
                f"<= {pct(TARGET_SLOWDOWN, 1)}",
                slow <= TARGET_SLOWDOWN,
                note=f"median {real['with_median_ms']:.3f} vs {real['without_median_ms']:.3f} ms, "
                f"{real['steps_each']} steps each; {result[key]['steps_dropped']} of "
                f"{result[key]['steps_sent']} steps dropped",
                extra=real,
            )
        )
    return figs


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    args = ["--smoke" if a == "--quick" else a for a in args]
    return bench_main(__doc__ or "", measure, figures, args)


if __name__ == "__main__":
    sys.exit(main())
