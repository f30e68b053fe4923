"""Unknown is null, never zero: a run no hook times has steps and samples null, a Keras fit with no
batch size has samples null, through the ledger, `profiler runs --json`, the runs table, the
end-of-run summary, /metrics (the series left out) and the monthly report. Real daemon, real
processes, real training."""

from __future__ import annotations

import datetime
import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from conftest import run_cli, sample_value, start_daemon, wait_for

slow = pytest.mark.slow

NO_OPTIMIZER = """
import torch
model = torch.nn.Linear(8, 2)
with torch.no_grad():
    for _ in range(20):
        model(torch.randn(4, 8))
print("done", flush=True)
"""

KERAS_NO_BATCH_SIZE = """
import numpy as np, keras
from hooks.keras import EnergyCallback
x = np.zeros((64, 4), dtype="float32"); y = np.zeros((64, 1), dtype="float32")
model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
cb = EnergyCallback(name="keras-no-bs")
model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
print("run_id=" + cb.run_id if hasattr(cb, "run_id") else "done", flush=True)
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    d = start_daemon(tmp_path_factory.mktemp("unknown-null") / "home")
    yield d
    if d.proc.poll() is None:
        d.stop()


def ended_run(d, run_id: str) -> dict:
    def found():
        runs = [r for r in d.runs() if r["id"] == run_id]
        return runs[0] if runs and runs[0]["status"] != "running" else None

    return wait_for(found, timeout=30, what=f"run {run_id}")


def profiler_run(d, tmp_path, script: str, *args: str, **env: str):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.run(
        [sys.executable, "-m", "profiler", "run", *args, "--", sys.executable, str(path)],
        env=dict(d.env, **env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@slow
@pytest.mark.parametrize("hooks", [False, True], ids=["no-hooks", "hooks"])
def test_a_run_with_no_optimizer_has_null_steps_and_samples(daemon, tmp_path, hooks):
    run_id = f"no-opt-{'hooks' if hooks else 'plain'}"
    extra = ("--hooks",) if hooks else ()
    out = profiler_run(daemon, tmp_path, NO_OPTIMIZER, "--run-id", run_id, *extra)
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout
    run = ended_run(daemon, run_id)
    # JSON: null, not 0 (energy is still measured: the process tree ran on the simulated GPU)
    assert run["steps"] is None and run["samples"] is None
    assert run["step_time_mean_s"] is None
    # the summary says so, and prints no "steps 0"
    assert "steps          not timed" in out.stderr
    assert "steps          0" not in out.stderr
    # the runs table shows "-"
    table = run_cli(daemon.env, "runs")
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith(run_id))
    assert line.split("finished", 1)[1].split()[0:2] == ["-", "-"]
    # /metrics leaves the series out for this run (the finished run stays listed)
    text = daemon.metrics()
    assert f'run="{run_id}"' in text
    assert sample_value(text, "profiler_run_steps_total", run=run_id) is None
    assert sample_value(text, "profiler_run_samples_total", run=run_id) is None
    # the ledger column is NULL
    db = sqlite3.connect(daemon.home / "ledger.sqlite")
    try:
        row = db.execute("SELECT steps, samples FROM runs WHERE id = ?", (run_id,)).fetchone()
    finally:
        db.close()
    assert row == (None, None)


@slow
def test_keras_fit_with_no_batch_size_has_null_samples(daemon, tmp_path):
    out = profiler_run(
        daemon, tmp_path, KERAS_NO_BATCH_SIZE, "--run-id", "keras-no-bs",
        KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = ended_run(daemon, "keras-no-bs")
    assert run["steps"] == 8  # 2 epochs x 64 / 16: steps are known exactly
    assert run["samples"] is None and run["samples_source"] == "none"
    assert all(r["samples"] is None for r in run["ranks"])
    assert "samples unknown (no batch size)" in out.stderr
    assert "samples 0" not in out.stderr
    text = daemon.metrics()
    assert sample_value(text, "profiler_run_steps_total", run="keras-no-bs") == 8
    assert sample_value(text, "profiler_run_samples_total", run="keras-no-bs") is None


@slow
def test_report_counts_unknown_runs_instead_of_adding_zero(daemon, tmp_path):
    # after the two tests above: a report over this month's runs says how many are unknown
    runs = {r["id"]: r for r in daemon.runs()}
    if "keras-no-bs" not in runs or "no-opt-plain" not in runs:
        pytest.skip("needs the runs of the tests above")
    month = datetime.datetime.fromtimestamp(runs["keras-no-bs"]["started_at"], datetime.UTC)
    args = ("report", "--month", month.strftime("%Y-%m"))
    out = run_cli(daemon.env, *args, "--format", "json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    by_id = {r["id"]: r for r in body["runs"]}
    assert by_id["no-opt-plain"]["steps"] is None and by_id["no-opt-plain"]["samples"] is None
    assert by_id["keras-no-bs"]["steps"] == 8 and by_id["keras-no-bs"]["samples"] is None
    assert by_id["keras-no-bs"]["joules_per_sample"] is None
    totals = body["totals"]
    assert totals["samples_unknown_runs"] >= 3 and totals["steps_unknown_runs"] >= 2
    assert totals["cost_per_1k_samples"] is None and totals["joules_per_sample"] is None
    md = run_cli(daemon.env, *args, "--format", "md")
    assert md.returncode == 0, md.stderr
    samples_row = next(ln for ln in md.stdout.splitlines() if ln.startswith("| samples |"))
    assert "unknown" in samples_row
    html = run_cli(daemon.env, *args, "--format", "html")
    assert html.returncode == 0, html.stderr
    assert "unknown" in html.stdout
    csv_out = run_cli(daemon.env, *args, "--format", "csv")
    assert csv_out.returncode == 0, csv_out.stderr
    row = next(ln for ln in csv_out.stdout.splitlines() if ",no-opt-plain," in ln)
    assert ",,," in row  # steps, samples and the per-sample figures are empty, not 0
