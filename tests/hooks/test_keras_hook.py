"""hooks.keras: real Keras 3 (TensorFlow and torch backends) and tf_keras training in
subprocesses, streaming to a real daemon; and the callback's own logic driven by hand."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from conftest import REPO, wait_for

import hooks.keras as hk
from hooks.client import Client
from hooks.keras import EnergyCallback, framework_of, tf_memory_probe

TRAIN = str(REPO / "tests" / "scripts" / "train_keras.py")
slow = pytest.mark.slow


def train(env: dict[str, str], *args: str, backend: str = "tensorflow") -> str:
    env = dict(env, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, TRAIN, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def fits(stdout: str) -> list[dict[str, str]]:
    """The ``run <id> steps=.. errors=.. loss=..`` lines the script prints, one per fit."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("run "):
            _, run_id, *pairs = line.split()
            rows.append(dict(pair.split("=", 1) for pair in pairs) | {"id": run_id})
    return rows


def finished_run(d, run_id: str) -> dict:
    def done():
        found = [r for r in d.runs() if r["id"] == run_id]
        return found[0] if found and found[0]["status"] != "running" else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


def check_run(run: dict, *, steps: int, samples: int, framework: str, loss: float) -> None:
    assert run["status"] == "finished"
    assert run["framework"] == framework
    assert run["steps"] == steps
    assert run["samples"] == samples
    assert run["samples_source"] == "argument"
    assert run["clock"] == "host_monotonic"
    assert run["dropped_steps"] == 0
    assert run["gpu_energy_j"] > 0
    assert [(r["rank"], r["steps"], r["samples"]) for r in run["ranks"]] == [(0, steps, samples)]
    # the last batch's running mean is the epoch's loss in the history
    assert isinstance(run["last_loss"], float) and math.isfinite(run["last_loss"])
    assert run["last_loss"] == pytest.approx(loss, rel=1e-6)
    assert run["nonfinite_loss_steps"] == 0


# ---- real training, real daemon ------------------------------------------------------------------


@slow
def test_keras3_tensorflow_backend(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="k-tf")
    out = train(env, "--samples", "256", "--batch-size", "32", "--epochs", "2", "--validation")
    [fit] = fits(out)
    assert fit["id"] == "k-tf" and fit["steps"] == "16" and fit["errors"] == "0"
    run = finished_run(daemon, "k-tf")
    check_run(run, steps=16, samples=512, framework="keras-tensorflow", loss=float(fit["loss"]))
    assert run["name"] == "tiny-keras"


@slow
def test_keras3_torch_backend(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="k-torch")
    out = train(env, "--samples", "256", "--batch-size", "32", "--epochs", "2", backend="torch")
    [fit] = fits(out)
    assert fit["errors"] == "0"
    run = finished_run(daemon, "k-torch")
    check_run(run, steps=16, samples=512, framework="keras-torch", loss=float(fit["loss"]))


@slow
def test_steps_per_execution_counts_every_batch(daemon):
    # 10 batches an epoch in groups of 4: Keras calls the hooks for batches 0-3, 4-7, 8-11 (of
    # which only 8-9 exist); the optimizer's own count is the truth.
    env = dict(daemon.env, PROFILER_RUN_ID="k-spe")
    out = train(env, "--samples", "320", "--batch-size", "32", "--steps-per-execution", "4")
    [fit] = fits(out)
    assert "done iterations=20" in out
    run = finished_run(daemon, "k-spe")
    check_run(run, steps=20, samples=640, framework="keras-tensorflow", loss=float(fit["loss"]))


@slow
def test_legacy_tf_keras(daemon):
    # tf_keras hands tensors to the callback (one step late) and runs partial groups exactly.
    env = dict(daemon.env, PROFILER_RUN_ID="k-legacy")
    out = train(
        env, "--legacy", "--samples", "320", "--batch-size", "32", "--steps-per-execution", "4"
    )
    [fit] = fits(out)
    assert "done iterations=20" in out and fit["errors"] == "0"
    run = finished_run(daemon, "k-legacy")
    check_run(run, steps=20, samples=640, framework="tf_keras", loss=float(fit["loss"]))
    assert run["framework_version"].startswith("2.")


@slow
@pytest.mark.parametrize("legacy", [False, True], ids=["keras3-torch", "tf_keras"])
def test_nonfinite_loss_is_flagged_from_its_step(daemon, legacy):
    # Inputs of batch 5 (the 6th step) are inf: the running mean is inf from there, then the
    # weights are NaN for good.
    run_id = f"k-nan-{legacy}"
    env = dict(daemon.env, PROFILER_RUN_ID=run_id)
    args = ["--samples", "256", "--batch-size", "32", "--epochs", "2", "--inf-at-batch", "5"]
    out = train(env, *(["--legacy"] if legacy else []), *args, backend="torch")
    [fit] = fits(out)
    assert fit["errors"] == "0"
    run = finished_run(daemon, run_id)
    assert run["status"] == "finished"
    assert run["steps"] == 16
    assert run["first_nonfinite_step"] == 6
    assert run["nonfinite_loss_steps"] == 11
    assert math.isfinite(run["last_loss"])  # the last finite loss, from step 5


@slow
def test_each_fit_is_a_new_run(daemon):
    out = train(daemon.env, "--fits", "2", "--epochs", "1", backend="torch")
    first, second = fits(out)
    assert first["id"] != second["id"]
    for fit in (first, second):
        run = finished_run(daemon, fit["id"])
        check_run(run, steps=8, samples=256, framework="keras-torch", loss=float(fit["loss"]))


@slow
def test_fit_that_raises_ends_the_run_as_failed(daemon):
    env = dict(daemon.env, PROFILER_RUN_ID="k-fail", KERAS_BACKEND="torch")
    out = subprocess.run(
        [sys.executable, TRAIN, "--fail-at-batch", "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "planned failure" in out.stderr
    run = finished_run(daemon, "k-fail")
    assert run["status"] == "failed"
    assert run["steps"] == 5  # batches 0..4; ours runs before the callback that raises


@slow
def test_the_callback_speaks_both_callback_protocols():
    # Every method Keras 3's and tf_keras's Callback define (and their CallbackLists call) exists,
    # with the same signature; tf_keras calls our batch hooks with tensors; our no-op hooks do not
    # stop Keras 3 from dispatching other callbacks' test/predict batch hooks asynchronously.
    code = """
import inspect, os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import keras, tf_keras
from hooks.keras import EnergyCallback
cb = EnergyCallback()
for base in (keras.callbacks.Callback, tf_keras.callbacks.Callback):
    for name, fn in inspect.getmembers(base, inspect.isfunction):
        if name.startswith(("on_", "set_", "_implements_")):
            ours = getattr(EnergyCallback, name)
            assert inspect.signature(ours).parameters.keys() == \\
                inspect.signature(fn).parameters.keys(), name
legacy = tf_keras.callbacks.CallbackList([cb])
assert legacy._should_call_train_batch_hooks and legacy._batch_hooks_support_tf_logs
assert not legacy._should_call_test_batch_hooks
current = keras.callbacks.CallbackList([cb])
assert not current._async_train and current._async_test and current._async_predict
print("ok", keras.__version__, tf_keras.__version__)
"""
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# ---- fast: no framework ------------------------------------------------------------------------


def test_importing_the_hook_imports_no_framework():
    code = (
        "import hooks.keras, sys; "
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'torch', 'jax') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


class SettledClient(Client):
    """A client whose first connection attempt is over when it is made: with no daemon, its
    connecting thread has warned and gone on to retry in the background (it keeps retrying
    until ``close``, which ends it at once). Without this, a close racing a just-started
    attempt could wait for that attempt."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        deadline = time.monotonic() + 30
        while not (self._warned or self.ready.is_set()) and self._thread.is_alive():
            assert time.monotonic() < deadline, "the connection attempt did not settle"
            time.sleep(0.01)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No daemon and no autostart: clients drop their steps, the recorder still counts them."""
    monkeypatch.setenv("PROFILER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROFILER_AUTOSTART", "0")
    monkeypatch.setenv("PROFILER_RUN_ID", "placeholder")
    monkeypatch.delenv("PROFILER_RUN_ID")  # restored (unset) after the test
    monkeypatch.setattr(hk, "Client", SettledClient)


def drive(cb: EnergyCallback, groups: list[tuple[int, int]], loss=0.5) -> None:
    for begin, end in groups:
        cb.on_train_batch_begin(begin)
        cb.on_train_batch_end(end, {"loss": loss})


def test_grouped_batches_are_cut_to_the_epoch(offline):
    cb = EnergyCallback(name="unit", batch_size=8)
    cb.set_params({"verbose": 0, "epochs": 2, "steps": 10})
    cb.on_train_begin()
    assert cb._recorder.client.hello_fields["total_steps"] == 20
    for epoch in range(2):
        cb.on_epoch_begin(epoch)
        drive(cb, [(0, 3), (4, 7), (8, 11)])
        cb.on_epoch_end(epoch, {})
    assert cb.steps == 20
    cb.on_train_end()
    assert cb._recorder.client.closed and cb.errors == 0


def test_a_fit_that_raised_is_closed_as_failed_by_the_next(offline, monkeypatch):
    closed = []
    cb = EnergyCallback(name="unit")
    cb.on_train_begin()
    first = cb._recorder.client
    monkeypatch.setattr(first, "close", lambda status="finished": closed.append(status))
    drive(cb, [(0, 0), (1, 1)])
    first_id = cb.run_id
    cb.on_train_begin()  # no on_train_end: that fit raised
    assert closed == ["failed"]
    assert cb.run_id != first_id and cb.steps == 0
    assert cb._recorder.client.hello_fields["samples_source"] == "none"
    cb.on_train_end()
    cb.on_train_end()  # a second end is a no-op
    assert cb.errors == 0


def test_hooks_outside_a_run_do_nothing_and_never_raise(offline):
    cb = EnergyCallback()
    drive(cb, [(0, 0)])
    cb.on_train_end()
    cb.on_train_batch_end("not a number", {"loss": object()})
    assert cb.steps == 0 and cb.run_id is None and cb.errors == 0
    cb.on_train_begin()
    cb.on_train_batch_begin(0)
    cb.on_train_batch_end("not a number", {})  # swallowed and counted
    assert cb.errors == 1
    cb.on_train_end()


class FakeTensor:
    """A loss that is not a host number; reading it is recorded."""

    def __init__(self, value: float, reads: list[float]) -> None:
        self.value, self.reads = value, reads

    def __float__(self) -> float:
        self.reads.append(self.value)
        return self.value


def test_tensor_losses_are_read_one_batch_late_with_their_own_steps(offline, monkeypatch):
    monkeypatch.setattr(hk, "framework_of", lambda model: ("tf_keras", "2.x"))
    monkeypatch.setattr(hk, "_device_setup", lambda framework: (None, None, {}))
    reads: list[float] = []
    cb = EnergyCallback(name="unit", batch_size=4)
    cb.set_params({"epochs": 1, "steps": 3})
    cb.on_train_begin()
    sent = []
    monkeypatch.setattr(cb._recorder.client, "step", lambda *row: sent.append(row))
    cb.on_train_batch_begin(0)
    cb.on_train_batch_end(0, {"loss": FakeTensor(1.0, reads)})
    assert reads == [] and cb.steps == 0  # held until the next batch is queued
    cb.on_train_batch_begin(1)
    cb.on_train_batch_end(1, {"loss": FakeTensor(math.inf, reads)})
    assert reads == [1.0] and cb.steps == 1
    cb.on_train_batch_begin(2)
    cb.on_train_batch_end(2, {"loss": 2.5})  # a host number goes straight out, after the held one
    assert reads == [1.0, math.inf] and cb.steps == 3
    cb.on_train_end()
    assert [row[0] for row in sent] == [1, 2, 3]
    assert [row[4] for row in sent] == [{"loss": 1.0}, {"nonfinite": 1}, {"loss": 2.5}]
    times = [t for row in sent for t in row[1:3]]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_a_held_step_still_counts_when_the_run_fails(offline, monkeypatch):
    monkeypatch.setattr(hk, "framework_of", lambda model: ("tf_keras", "2.x"))
    monkeypatch.setattr(hk, "_device_setup", lambda framework: (None, None, {}))
    reads: list[float] = []
    cb = EnergyCallback(name="unit")
    cb.on_train_begin()
    drive(cb, [(0, 0)], loss=FakeTensor(1.0, reads))
    cb._at_exit()  # interpreter exit without on_train_end
    assert cb.steps == 1 and reads == []  # the framework is left alone after a failure
    assert cb._recorder.client.closed


def test_framework_is_read_from_the_model_class():
    legacy = type("Sequential", (), {"__module__": "tf_keras.src.engine.sequential"})
    users = type("MyModel", (legacy,), {"__module__": "__main__"})  # a subclass in a script
    assert framework_of(legacy())[0] == "tf_keras"
    assert framework_of(users())[0] == "tf_keras"
    assert isinstance(framework_of(None)[0], str)  # no model: whatever Keras is imported


def test_tf_memory_probe_only_with_a_gpu():
    def fake_tf(gpus: list[str], info) -> SimpleNamespace:
        experimental = SimpleNamespace(get_memory_info=info)
        config = SimpleNamespace(list_physical_devices=lambda kind: gpus, experimental=experimental)
        return SimpleNamespace(config=config)

    assert tf_memory_probe(fake_tf([], None)) is None
    asked = []

    def info(device: str) -> dict[str, int]:
        asked.append(device)
        return {"current": 100, "peak": 250}

    probe = tf_memory_probe(fake_tf(["GPU:0"], info))
    assert probe() == (100, 250, None) and asked == ["GPU:0"]

    def broken(device: str) -> dict[str, int]:
        raise RuntimeError("no allocator")

    assert tf_memory_probe(fake_tf(["GPU:0"], broken))() is None


def test_callback_copies_carry_settings_not_runs(offline):
    import copy

    cb = EnergyCallback(name="unit", batch_size=16, run_id="fixed")
    cb.on_train_begin()
    clone = copy.deepcopy(cb)
    assert clone.batch_size == 16 and clone._run_id == "fixed"
    assert clone.run_id is None and not clone._active
    cb.on_train_end()


def test_settings_changed_after_construction_apply_at_the_next_fit(offline):
    cb = EnergyCallback(name="unit")
    cb.batch_size = 32
    cb.total_steps = 7
    cb.project = "later"
    cb.on_train_begin()
    fields = cb._recorder.client.hello_fields
    assert (fields["batch_size"], fields["total_steps"], fields["project"]) == (32, 7, "later")
    assert fields["samples_source"] == "argument" and cb.options.batch_size == 32
    assert cb._recorder.batch_size == 32
    cb.on_train_end()
