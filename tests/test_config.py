"""Config: defaults, file, environment precedence, and one-line errors that name the key."""

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
        ('gpu = "cuda"', "'gpu' must be auto, nvml, none, or simulated[:MODEL[:COUNT]]"),
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
