"""The CLI: user mistakes end in one line that names the problem; nothing is a stack trace."""

import json

from conftest import profiler_env, run_cli


def one_line_error(out, *needles):
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("profiler: error: "), out.stderr
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_config_file_value(tmp_path):
    (tmp_path / "profiler.toml").write_text("metrics_port = -1\n")
    out = run_cli(profiler_env(tmp_path), "daemon", timeout=30)
    one_line_error(out, "metrics_port", "profiler.toml")


def test_bad_environment_value(tmp_path):
    out = run_cli(profiler_env(tmp_path, PROFILER_GPU="tpu"), "status")
    one_line_error(out, "PROFILER_GPU", "simulated[:MODEL[:COUNT]]")


def test_unknown_simulated_model_stops_the_daemon_with_one_line(tmp_path):
    out = run_cli(profiler_env(tmp_path, PROFILER_GPU="simulated:B200"), "daemon", timeout=30)
    one_line_error(out, "simulated:B200")


def test_corrupt_ledger_is_refused_not_overwritten(tmp_path):
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database" * 50)
    out = run_cli(profiler_env(tmp_path), "runs")
    one_line_error(out, "ledger.sqlite", "move it aside")
    assert (tmp_path / "ledger.sqlite").read_bytes() == b"not a database" * 50


def test_status_and_runs_without_a_daemon(tmp_path):
    out = run_cli(profiler_env(tmp_path), "status", "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["running"] is False
    out = run_cli(profiler_env(tmp_path), "runs", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_bad_flag_value_is_argparse_usage_error(tmp_path):
    out = run_cli(profiler_env(tmp_path), "runs", "--limit", "zero")
    assert out.returncode == 2 and "expected an integer" in out.stderr
    assert "Traceback" not in out.stderr
