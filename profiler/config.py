"""Configuration: ``profiler.toml`` then ``PROFILER_*`` environment variables, validated.

Precedence, lowest first: built-in defaults, ``<home>/profiler.toml`` (or ``--config PATH``), then
environment variables. Every problem is a :class:`ConfigError` whose message is one line naming the
key, where it came from, and what is allowed.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hooks.runid import LABEL_MAX_CHARS, label_problem
from hooks.wire import default_home, socket_path
from profiler.sensors.gpu_spec import parse_gpu_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_METRICS_PORT = 9478
CONFIG_NAME = "profiler.toml"


class ConfigError(ValueError):
    """A bad configuration value; the message is the whole one-line explanation."""


@dataclass(frozen=True)
class Config:
    """The daemon's settings. Durations in seconds, power in watts."""

    home: Path
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    sample_interval_s: float = 0.1
    flush_interval_s: float = 2.0
    gpu: str = "auto"
    finished_run_ttl_s: float = 300.0
    cpu_tdp_w: float | None = None
    rapl_root: str = "/sys/class/powercap"
    process_check_interval_s: float = 1.0
    hostname: str = ""  # the name in metrics and runs; empty: the machine's host name
    # Annotate run starts and ends in Grafana (token: $GRAFANA_TOKEN or grafana_token_file).
    grafana_url: str = ""
    grafana_token_file: str = ""
    # The socket is owner-only (0600); a group name or gid here makes it 0660 for that group.
    socket_group: str = ""
    # Runs kept in memory and in /metrics; past it the oldest finished runs leave first, and
    # a new run is refused (counted) while all are live.
    max_runs: int = 500
    # `profiler run` adds the torch/Keras step hooks to the command as if given --hooks.
    run_hooks: bool = False
    # The [cost] and [catalog] tables as written (validated by profiler.cost.pricing), and where
    # they came from, for messages.
    cost: dict[str, Any] = field(default_factory=dict)
    catalog: dict[str, Any] = field(default_factory=dict)
    # [budget]: monthly = amount; [budget.projects]: project = amount (the report currency).
    budget: dict[str, Any] = field(default_factory=dict)
    source: str = "defaults"

    @property
    def socket(self) -> Path:
        return socket_path(self.home)

    @property
    def ledger(self) -> Path:
        return self.home / "ledger.sqlite"

    @property
    def status_file(self) -> Path:
        return self.home / "daemon.json"

    @property
    def lock_file(self) -> Path:
        return self.home / "daemon.lock"

    @property
    def log_file(self) -> Path:
        return self.home / "daemon.log"


def _bounded(lo: float, hi: float) -> Callable[[Any], float]:
    """A number from ``lo`` to ``hi``, both included (so never NaN or infinite)."""

    def check(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("a number")
        number = float(value)
        if not lo <= number <= hi:
            raise ValueError(f"a number from {lo:g} to {hi:g}")
        return number

    check.__doc__ = f"a number from {lo:g} to {hi:g}"
    return check


def _port(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("an integer port 0-65535")
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("an integer port 0-65535 (0 picks a free port)")
    return port


def _host(value: Any) -> str:
    text = str(value)
    if text == "localhost":
        return text
    try:
        ipaddress.ip_address(text)
    except ValueError as e:
        raise ValueError("an IP address such as 127.0.0.1 or 0.0.0.0") from e
    return text


def _gpu(value: Any) -> str:
    text = str(value).strip()
    parse_gpu_spec(text)  # ValueError when not the grammar
    return text


def _optional_watts(value: Any) -> float | None:
    if value in (None, "", "auto"):
        return None
    return _bounded(1, 5000)(value)


def _url(value: Any) -> str:
    text = _text(value)
    if not text.startswith(("http://", "https://")):
        raise ValueError("an http(s) URL")
    return text.rstrip("/")


def _group(value: Any) -> str:
    from profiler.ingest.receiver import group_id

    text = str(value).strip()
    if isinstance(value, bool) or not text:
        raise ValueError("a group name or gid")
    group_id(text)  # raises ValueError for an unknown group
    return text


def _count(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"an integer from {lo} to {hi}")
        number = int(value)
        if not lo <= number <= hi:
            raise ValueError(f"an integer from {lo} to {hi}")
        return number

    return check


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _switch(value: Any) -> bool:
    """A TOML boolean, or in the environment one of 1/0, true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError("true or false")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def _hostname(value: Any) -> str:
    """A non-empty name of printable characters (it is a label on every series and shown in
    terminals), at most :data:`~hooks.runid.LABEL_MAX_CHARS` of them
    (:func:`hooks.runid.label_problem`)."""
    text = _text(value)
    if label_problem(text) is not None:
        raise ValueError("a host name of printable characters")
    return text


# key -> (validator, what is allowed, environment variable)
_KEYS: dict[str, tuple[Callable[[Any], Any], str, str]] = {
    "metrics_host": (_host, "an IP address such as 127.0.0.1", "PROFILER_METRICS_HOST"),
    "metrics_port": (
        _port,
        "an integer port 0-65535 (0 picks a free port)",
        "PROFILER_METRICS_PORT",
    ),
    "sample_interval_s": (
        _bounded(0.01, 60),
        "seconds from 0.01 to 60",
        "PROFILER_SAMPLE_INTERVAL",
    ),
    "flush_interval_s": (_bounded(0.1, 5), "seconds from 0.1 to 5", "PROFILER_FLUSH_INTERVAL"),
    "gpu": (
        _gpu,
        "auto, nvml, amdsmi, none, simulated[:MODEL[:COUNT]], or simulated-amd[:MODEL[:COUNT]]",
        "PROFILER_GPU",
    ),
    "finished_run_ttl_s": (
        _bounded(0, 86400 * 7),
        "seconds from 0 to 604800",
        "PROFILER_FINISHED_RUN_TTL",
    ),
    "cpu_tdp_w": (_optional_watts, 'watts from 1 to 5000, or "auto"', "PROFILER_CPU_TDP"),
    "rapl_root": (_text, "a directory path", "PROFILER_RAPL_ROOT"),
    "hostname": (
        _hostname,
        f"a non-empty host name of printable characters (at most {LABEL_MAX_CHARS})",
        "PROFILER_HOSTNAME",
    ),
    "grafana_url": (_url, "an http:// or https:// URL", "PROFILER_GRAFANA_URL"),
    "grafana_token_file": (_text, "a file path", "PROFILER_GRAFANA_TOKEN_FILE"),
    "socket_group": (
        _group,
        "the name or gid of a group on this machine",
        "PROFILER_SOCKET_GROUP",
    ),
    "max_runs": (_count(10, 100_000), "an integer from 10 to 100000", "PROFILER_MAX_RUNS"),
    "run_hooks": (_switch, "true or false (1/0 in the environment)", "PROFILER_RUN_HOOKS"),
}


def load_config(
    config_path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Build the effective configuration, or raise :class:`ConfigError` with a one-line reason."""
    env = os.environ if env is None else env
    home = Path(env["PROFILER_HOME"]).expanduser() if env.get("PROFILER_HOME") else default_home()
    values: dict[str, Any] = {}
    path = Path(config_path) if config_path else home / CONFIG_NAME
    if config_path and not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    if path.is_file():
        values.update(_read_toml(path))
        values["source"] = str(path)
    for key, (_check, _allowed, var) in _KEYS.items():
        if env.get(var) not in (None, ""):
            values[key] = _validate(key, env[var], f"environment variable {var}")
    return Config(home=home, **values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from e
    values: dict[str, Any] = {}
    for table in ("cost", "catalog", "budget"):
        if table in data:
            if not isinstance(data[table], dict):
                raise ConfigError(f"{path}: '{table}' must be a table ([{table}])")
            values[table] = data.pop(table)
    daemon = data.pop("daemon", {})
    if not isinstance(daemon, dict):
        raise ConfigError(f"{path}: 'daemon' must be a table ([daemon])")
    known = {f.name for f in fields(Config)} - {
        "home", "process_check_interval_s", "source", "cost", "catalog", "budget",
    }  # fmt: skip
    # keys at the top level and under [daemon] are the same keys; both places are read
    for where, section in ((str(path), data), (f"{path} [daemon]", daemon)):
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown key '{key}'{_belongs(key, known)}")
            if key in values:
                raise ConfigError(
                    f"{path}: '{key}' is set twice, at the top level and under [daemon]; keep one"
                )
            values[key] = _validate(key, value, where)
    return values


def _belongs(key: str, known: set[str]) -> str:
    """Where a misplaced key belongs, or the nearest known key, or the known keys."""
    from profiler.cost.settings import COST_KEYS, ONPREM_KEYS

    if key in COST_KEYS:
        return ": it belongs under [cost] (write [cost] above it; see `profiler prices`)"
    if key in ONPREM_KEYS:
        return ": it belongs under [cost.onprem]"
    if key in ("monthly", "projects"):
        return ": it belongs under [budget]"
    if key in ("instances", "gpus", "electricity"):
        return f": it belongs under [catalog] ([catalog.{key}...])"
    tables = {"cost": "[cost]", "catalog": "[catalog]", "budget": "[budget]", "daemon": "[daemon]"}
    close = difflib.get_close_matches(key, sorted(known | set(tables)), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {tables.get(close[0], repr(close[0]))}?)"
    return f" (known keys: {', '.join(sorted(known))})"


def _validate(key: str, value: Any, where: str) -> Any:
    check, allowed, _var = _KEYS[key]
    try:
        return check(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: '{key}' must be {allowed}, got {value!r}") from e
