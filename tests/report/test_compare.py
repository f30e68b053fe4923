"""`profiler compare`: the same model in Keras (TensorFlow) and in PyTorch under one daemon."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, run_cli, start_daemon, wait_for

pytestmark = pytest.mark.slow
SCRIPT = str(REPO / "tests" / "scripts" / "same_model.py")


def test_keras_and_pytorch_compared_on_the_same_model(tmp_path):
    d = start_daemon(tmp_path / "home", PROFILER_PRICING="aws:p4d.24xlarge")
    try:
        for framework in ("torch", "keras"):
            env = dict(d.env, PROFILER_RUN_ID=f"cmp-{framework}", TF_CPP_MIN_LOG_LEVEL="2")
            out = subprocess.run(
                [sys.executable, SCRIPT, "--framework", framework, "--name", f"mlp-{framework}"],
                env=env, capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr[-2000:]
            assert "steps=16" in out.stdout

        def both_ended():
            runs = {r["id"]: r for r in d.runs()}
            done = [runs.get(i) for i in ("cmp-torch", "cmp-keras")]
            return done if all(r and r["status"] != "running" for r in done) else None

        torch_run, keras_run = wait_for(both_ended, timeout=30, what="both runs to end")
        out = run_cli(d.env, "compare", "cmp-torch", "mlp-keras", "--format", "json")
        assert out.returncode == 0, out.stderr
        first, second = json.loads(out.stdout)
        assert first["id"] == "cmp-torch" and second["id"] == "cmp-keras"  # by id and by name
        assert first["framework"].startswith("pytorch") and second["framework"].startswith("keras")
        for row, run in ((first, torch_run), (second, keras_run)):
            assert row["steps"] == 16 and row["samples"] == 512
            assert row["joules_per_sample"] == pytest.approx(run["gpu_energy_j"] / 512)
            assert row["cost"] == pytest.approx(run["cost"]) and row["cost"] > 0
            assert row["cost_per_1k_samples"] == pytest.approx(run["cost"] / 512 * 1000)
            assert row["samples_per_s"] == pytest.approx(512 / run["duration_s"])
            assert row["devices"] == "NVIDIA A100-SXM4-40GB" and row["simulated"] is True
        assert second["ratios"]["steps"] == 1.0
        assert second["ratios"]["cost"] == pytest.approx(keras_run["cost"] / torch_run["cost"])
        table = run_cli(d.env, "compare", "cmp-torch", "cmp-keras")
        assert table.returncode == 0 and "cost per 1k samples" in table.stdout
        assert "simulated GPU" in table.stdout
        md = run_cli(d.env, "compare", "cmp-torch", "cmp-keras", "--format", "md")
        assert md.stdout.startswith("| ") and "|---|" in md.stdout
        missing = run_cli(d.env, "compare", "cmp-torch", "no-such-run")
        assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
        assert "no-such-run" in missing.stderr
    finally:
        d.stop()
