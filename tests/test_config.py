"""Config: defaults, file, environment precedence, and one-line errors that name the key."""

import json
from pathlib import Path

import pytest

from profiler.config import DEFAULT_METRICS_PORT, ConfigError, load_config


def test_defaults(tmp_path: Path):
    c = load_config(env={"PROFILER_HOME": str(tmp_path)})
    assert c.home == tmp_path
    assert (c.metrics_host, c.metrics_port) == ("127.0.0.1", DEFAULT_METRICS_PORT)
    assert c.sample_interval_s == 0.1 and c.gpu == "auto"
    assert c.socket == tmp_path / "daemon.sock" and c.ledger == tmp_path / "ledger.sqlite"


def test_file_then_environment(tmp_path: Path):
    (tmp_path / "profiler.toml").write_text(
        'metrics_port = 9999\nsample_interval_s = 0.5\ngpu = "simulated:H100-SXM5-80GB:2"\n'
    )
    c = load_config(env={"PROFILER_HOME": str(tmp_path), "PROFILER_METRICS_PORT": "0"})
    assert c.metrics_port == 0  # the environment wins
    assert c.sample_interval_s == 0.5
    assert c.gpu == "simulated:H100-SXM5-80GB:2"


def test_daemon_table_is_accepted(tmp_path: Path):
    (tmp_path / "profiler.toml").write_text("[daemon]\nflush_interval_s = 1\n")
    assert load_config(env={"PROFILER_HOME": str(tmp_path)}).flush_interval_s == 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("metrics_port = 70000", "'metrics_port' must be an integer port 0-65535"),
        ('sample_interval_s = "fast"', "'sample_interval_s' must be seconds from 0.01 to 60"),
        ("sample_interval_s = 0", "'sample_interval_s' must be seconds from 0.01 to 60"),
        (
            'gpu = "cuda"',
            "'gpu' must be auto, nvml, amdsmi, none, simulated[:MODEL[:COUNT]], or "
            "simulated-amd[:MODEL[:COUNT]]",
        ),
        ("flush_interval_s = 30", "'flush_interval_s' must be seconds from 0.1 to 5"),
        ("colour = 3", "unknown key 'colour'"),
        ("metrics_port = ", "not valid TOML"),
    ],
)
def test_bad_file_values_fail_with_one_line_naming_key_and_file(tmp_path, text, expected):
    (tmp_path / "profiler.toml").write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(env={"PROFILER_HOME": str(tmp_path)})
    message = str(e.value)
    assert expected in message and str(tmp_path / "profiler.toml") in message
    assert "\n" not in message


def test_bad_environment_value_names_the_variable(tmp_path: Path):
    with pytest.raises(ConfigError, match="environment variable PROFILER_METRICS_PORT: "):
        load_config(env={"PROFILER_HOME": str(tmp_path), "PROFILER_METRICS_PORT": "http"})
    with pytest.raises(ConfigError, match="PROFILER_METRICS_HOST"):
        load_config(env={"PROFILER_HOME": str(tmp_path), "PROFILER_METRICS_HOST": "my host"})


def test_missing_explicit_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml", env={"PROFILER_HOME": str(tmp_path)})


# One invalid value per key; every key of the daemon's configuration is covered.
BAD_VALUES = {
    "metrics_host": "not-an-address",
    "metrics_port": 70000,
    "sample_interval_s": 0,
    "flush_interval_s": 99,
    "gpu": "tpu",
    "finished_run_ttl_s": -1,
    "cpu_tdp_w": 9999,
    "rapl_root": "",
    "hostname": "",
    "grafana_url": "ftp://grafana",
    "grafana_token_file": "",
    "socket_group": "no-such-group-here",
    "max_runs": 5,
    "run_hooks": "maybe",
}


def test_every_key_has_a_bad_value_case():
    from profiler.config import _KEYS

    assert set(BAD_VALUES) == set(_KEYS)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_every_bad_value_is_one_line_naming_the_key_and_what_is_allowed(tmp_path, key):
    from conftest import profiler_env, run_cli

    from profiler.config import _KEYS

    _check, allowed, var = _KEYS[key]
    bad = BAD_VALUES[key]
    (tmp_path / "profiler.toml").write_text(f"{key} = {json.dumps(bad)}\n")
    out = run_cli(profiler_env(tmp_path), "status")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"'{key}' must be {allowed}" in out.stderr and "Traceback" not in out.stderr
    if bad != "":  # an empty environment variable means "not set"
        (tmp_path / "profiler.toml").unlink()
        out = run_cli(profiler_env(tmp_path, **{var: str(bad)}), "status")
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert f"environment variable {var}" in out.stderr and allowed in out.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["runs", "--limit", "zero"], "--limit: expected an integer"),
        (["report", "--format", "pdf"], "--format: invalid choice: 'pdf'"),
        (["watch", "--interval", "-1"], "--interval"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(tmp_path, args, expected):
    from conftest import profiler_env, run_cli

    out = run_cli(profiler_env(tmp_path), *args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr
