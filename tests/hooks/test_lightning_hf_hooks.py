"""Lightning and transformers hooks: real trainings in subprocesses against a real daemon, and
the callbacks driven event by event in this process.

Each training runs with ``PROFILER_RUN_ID`` set (the DDP one without, to check that its rank
processes share the id chosen by the first); the run the daemon recorded must have exactly the
optimizer steps (gradient accumulation does not inflate them) and the samples of the batches.
The in-process tests check each step row the callbacks send (samples, loss) with no daemon.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import REPO, wait_for

SCRIPTS = REPO / "tests" / "scripts"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true"}


def train(env: dict[str, str], script: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        env={**env, **OFFLINE, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return out, json.loads(lines[-1]) if out.returncode == 0 and lines else {}


def finished_run(d, run_id: str) -> dict:
    def done():
        found = [r for r in d.runs() if r["id"] == run_id]
        return found[0] if found and found[0]["status"] != "running" else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


def assert_loss(run: dict, expected: float) -> None:
    assert run["last_loss"] is not None and math.isfinite(run["last_loss"])
    assert run["last_loss"] == pytest.approx(expected, rel=1e-5)
    assert run["nonfinite_loss_steps"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("package", ["lightning", "pytorch_lightning"])
def test_lightning_counts_optimizer_steps_and_batch_samples(daemon, package):
    run_id = f"it-{package}"
    # 44 samples in batches of 8: 6 batches per epoch (the last holds 4), 2 per optimizer step.
    out, summary = train(
        dict(daemon.env, PROFILER_RUN_ID=run_id),
        "train_lightning.py",
        *("--package", package, "--samples", "44", "--batch-size", "8"),
        *("--epochs", "2", "--accumulate", "2"),
    )
    assert out.returncode == 0, out.stderr
    assert summary["batches"] == 12 and summary["global_step"] == 6
    assert summary["steps"] == 6 and summary["errors"] == 0
    run = finished_run(daemon, run_id)
    assert run["framework"] == "lightning"
    assert run["status"] == "finished"
    assert run["steps"] == 6
    assert run["samples"] == 2 * 44  # read from the batches, the short ones included
    assert run["samples_source"] == "batch"
    assert run["clock"] == "host_monotonic"
    assert [(r["rank"], r["steps"], r["samples"]) for r in run["ranks"]] == [(0, 6, 88)]
    assert run["gpu_energy_j"] > 0
    # the hook reports the loss of the micro-batch that stepped, undoing Lightning's division
    assert_loss(run, summary["last_loss"])


@pytest.mark.slow
def test_lightning_failure_ends_the_run_as_failed(daemon):
    out, _ = train(
        dict(daemon.env, PROFILER_RUN_ID="it-lightning-fail"),
        "train_lightning.py",
        *("--samples", "64", "--batch-size", "8", "--accumulate", "2", "--fail-at", "7"),
    )
    assert out.returncode != 0 and "planned failure" in out.stderr
    run = finished_run(daemon, "it-lightning-fail")
    assert run["status"] == "failed"
    assert run["steps"] == 3 and run["samples"] == 3 * 2 * 8  # batch 7 never stepped


@pytest.mark.slow
def test_hf_trainer_counts_optimizer_steps_and_config_samples(daemon, tmp_path):
    # 36 samples in batches of 4: 9 micro-batches per epoch, so 5 steps (the last of 1 batch).
    out, summary = train(
        dict(daemon.env, PROFILER_RUN_ID="it-hf"),
        "train_hf.py",
        *("--samples", "36", "--batch-size", "4", "--epochs", "2", "--accumulate", "2"),
        *("--output-dir", str(tmp_path / "out")),
    )
    assert out.returncode == 0, out.stderr
    assert summary["global_step"] == 10 and summary["steps"] == 10
    assert summary["errors"] == 0 and summary["logged_losses"] == 10
    run = finished_run(daemon, "it-hf")
    assert run["framework"] == "transformers"
    assert run["status"] == "finished"
    assert run["steps"] == 10
    assert run["samples"] == 2 * 36
    assert run["samples_source"] == "config"
    assert [(r["rank"], r["steps"], r["samples"]) for r in run["ranks"]] == [(0, 10, 72)]
    assert run["gpu_energy_j"] > 0
    assert_loss(run, summary["last_loss"])  # the loss transformers logged for the last step
    assert not list((tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.slow
def test_lightning_ddp_ranks_join_the_run_the_first_process_named(daemon, tmp_path):
    env = {k: v for k, v in daemon.env.items() if k != "PROFILER_RUN_ID"}
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "train_lightning.py"),
            "--devices",
            "2",
            "--samples",
            "64",
            "--report-dir",
            str(tmp_path),
        ],  # fmt: skip
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank-*.json"))]
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    run_id = summaries[0]["run_id"]
    assert run_id.startswith("tiny-lightning-") and summaries[1]["run_id"] == run_id
    run = finished_run(daemon, run_id)
    # 64 samples split over 2 ranks: 4 batches of 8 per rank and epoch, 2 per optimizer step
    assert run["status"] == "finished" and run["steps"] == 4 and run["samples"] == 128
    assert [(r["rank"], r["steps"], r["samples"]) for r in run["ranks"]] == [(0, 4, 64), (1, 4, 64)]
    assert [r["id"] for r in daemon.runs()] == [run_id]


# ---- the callbacks event by event, no daemon ---------------------------------------------------


@pytest.fixture
def no_daemon(tmp_path, monkeypatch):
    """Hooks in this process find no daemon and start none; their run ids are fixed."""
    monkeypatch.setenv("PROFILER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROFILER_AUTOSTART", "0")
    monkeypatch.setenv("PROFILER_RUN_ID", "unit")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def capture_rows(run) -> list[list]:
    """Step rows the run's client is given, as ``[step, start, end, samples, extras]``."""
    run.client._thread.join(5)  # its connection attempt failed: closing will not wait for it
    rows: list[list] = []
    run.client.step = lambda *row: rows.append(list(row) + [None] * (5 - len(row)))
    return rows


class FakeLightningTrainer:
    """What the Lightning callback reads from a Trainer."""

    __module__ = "lightning.pytorch.trainer.trainer"

    def __init__(self, accumulate: int) -> None:
        self.global_step = 0
        self.global_rank, self.local_rank, self.world_size = 0, 0, 1
        self.accumulate_grad_batches = accumulate
        self.estimated_stepping_batches = 3


@pytest.mark.slow
def test_lightning_callback_rows(no_daemon):
    torch = pytest.importorskip("torch")
    from hooks.lightning import EnergyCallback

    cb = EnergyCallback(batch_size=5)
    trainer = FakeLightningTrainer(accumulate=2)
    module = SimpleNamespace(device=torch.device("cpu"), automatic_optimization=True)
    cb.on_fit_start(trainer, module)
    rows = capture_rows(cb._run)
    cb.on_train_start(trainer, module)
    assert cb._run.client.hello_fields["total_steps"] == 3
    batches = [
        {"x": torch.zeros(4, 3)},  # 4 samples
        (["a", "b", "c"], torch.zeros(3)),  # 3 samples; the optimizer steps
        object(),  # unreadable: the batch_size argument (5)
        [torch.zeros(2, 7), torch.zeros(2)],  # 2 samples; the optimizer steps
        torch.zeros(6),  # the epoch ends after it without a step
        torch.zeros(1, 3),  # 1 sample; the optimizer steps (the epoch's last batch)
    ]
    for i, batch in enumerate(batches):
        if i == 5:
            cb.on_train_epoch_start(trainer, module)
        cb.on_train_batch_start(trainer, module, batch, i)
        if i in (1, 3, 5):
            trainer.global_step += 1
        if i != 4:
            cb.on_train_batch_end(trainer, module, {"loss": torch.tensor(0.25 * i)}, batch, i)
    cb.on_fit_end(trainer, module)
    assert cb.errors == 0 and cb.steps == 3
    assert cb._run.client.hello_fields["samples_source"] == "batch"
    assert [(r[0], r[3]) for r in rows] == [(1, 7), (2, 7), (3, 1)]
    # the loss of the micro-batch that stepped, Lightning's division undone
    assert [r[4]["loss"] for r in rows] == pytest.approx([0.25 * 2, 0.75 * 2, 1.25 * 2])
    assert all(r[1] <= r[2] for r in rows)
    assert cb._run.client.closed
    cb.on_fit_start(trainer, module)  # a second fit is a new run
    assert cb.run_id == "unit-2"
    cb._run.client._thread.join(5)
    cb.on_exception(trainer, module, KeyboardInterrupt())
    assert cb._run.client.closed and cb.errors == 0


@pytest.mark.slow
def test_batch_size_of():
    torch = pytest.importorskip("torch")
    from hooks.lightning import batch_size_of

    assert batch_size_of(torch.zeros(6, 2)) == 6
    assert batch_size_of({"ids": torch.zeros(3, 9), "mask": torch.zeros(3, 9)}) == 3
    assert batch_size_of(([torch.zeros(2, 1)], torch.zeros(2))) == 2
    assert batch_size_of(["x", "y", "z"]) == 3
    for unknown in (torch.tensor(1.0), None, [], {}, object()):
        assert batch_size_of(unknown) is None


@pytest.mark.slow
def test_hf_callback_rows_carry_the_logged_loss_of_their_step(no_daemon):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hooks.hf import EnergyCallback

    cb = EnergyCallback()
    args = SimpleNamespace(
        train_batch_size=4,
        gradient_accumulation_steps=2,
        process_index=1,
        local_process_index=1,
        world_size=2,
        device=torch.device("cpu"),
        n_gpu=0,
    )
    state = SimpleNamespace(max_steps=10, global_step=7)  # resumed at step 7
    control = SimpleNamespace(should_log=False)
    cb.on_train_begin(args, state, control)
    rows = capture_rows(cb._run)
    fields = cb._run.client.hello_fields
    assert (fields["total_steps"], fields["batch_size"], fields["rank"]) == (3, 8, 1)
    for step, (micro, logged) in enumerate([(2, False), (2, True), (1, True)], start=8):
        cb.on_step_begin(args, state, control)
        for _ in range(micro - 1):
            cb.on_substep_end(args, state, control)
        state.global_step = step
        control.should_log = logged
        cb.on_step_end(args, state, control)
        cb.on_log(args, state, control, logs={"loss": 1.5} if step == 9 else {"eval_loss": 9.0})
    cb.on_train_end(args, state, control)
    assert cb.errors == 0 and cb.steps == 3
    assert [(r[0], r[3]) for r in rows] == [(1, 8), (2, 8), (3, 4)]
    assert [(r[4] or {}).get("loss") for r in rows] == [None, 1.5, None]
    assert cb._run.client.closed
    cb.on_train_begin(args, state, control)
    assert cb.run_id == "unit-2"
    cb._run.client._thread.join(5)
    cb.on_train_end(args, state, control)


def test_importing_hooks_imports_no_training_framework():
    code = (
        "import sys, json, hooks, hooks.recorder, hooks.client, hooks.runid, hooks.wire; "
        "print(json.dumps([m for m in ('torch', 'lightning', 'pytorch_lightning', "
        "'transformers') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
