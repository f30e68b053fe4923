"""Fixtures for tests with real processes: a daemon on a private home and a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from profiler.cost.pricing import Pricing
    from profiler.sensors.base import GpuSensor

REPO = Path(__file__).resolve().parent.parent
# a process whose hook declares its device and steps: SECONDS DEVICE RUN_ID NAME
DECLARED_STEPS = REPO / "tests" / "scripts" / "declared_steps.py"
# a busy torch training with the one-line hook, printing steps=N: SECONDS NAME RUN_ID
BUSY_TORCH = REPO / "tests" / "scripts" / "busy_torch.py"


def profiler_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for a daemon or hook on ``home``, with its own free metrics port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")}
    env.update(
        PROFILER_HOME=str(home),
        PROFILER_METRICS_PORT="0",
        PROFILER_GPU="simulated:A100-SXM4-40GB:1",
        PROFILER_SAMPLE_INTERVAL="0.05",
        PROFILER_FLUSH_INTERVAL="0.5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "profiler", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class DaemonProcess:
    """A ``profiler daemon`` subprocess and where it serves."""

    home: Path
    env: dict[str, str]
    proc: subprocess.Popen
    status: dict

    @property
    def metrics_url(self) -> str:
        return self.status["metrics_url"]

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def runs(self) -> list[dict]:
        out = run_cli(self.env, "runs", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


def start_daemon(home: Path, **extra: str) -> DaemonProcess:
    env = profiler_env(home, **extra)
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "test-daemon.log", "ab")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen(
        [sys.executable, "-m", "profiler", "daemon"], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((home / "test-daemon.log").read_text())
        try:
            status = json.loads((home / "daemon.json").read_text())
            if status.get("pid") == proc.pid:
                return DaemonProcess(home, env, proc, status)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("daemon did not start: " + (home / "test-daemon.log").read_text())


def http_text(url: str) -> str:
    """The body of ``url`` (a ``/metrics`` page, say) as text."""
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@contextmanager
def service_in_thread(home: Path, sensor: GpuSensor, pricing: Pricing | None = None):
    """The real daemon service (socket, ``/metrics`` server, main loop on the real clock) on
    ``sensor``, on a new private ``home``, run in a thread of this process so that the test can
    read the simulator's ground truth; yields (daemon, service), stopped on exit. The service is
    started, run and shut down in that thread (the ledger's SQLite connection belongs to the
    thread that opened it)."""
    from profiler.config import Config
    from profiler.daemon.core import Daemon
    from profiler.daemon.service import Service

    home.mkdir(mode=0o700)
    config = Config(home=home, metrics_port=0, sample_interval_s=0.05, flush_interval_s=0.5,
                    finished_run_ttl_s=600.0)  # fmt: skip
    d = Daemon(config, gpu_sensor=sensor, pricing=pricing)
    service = Service(d)
    ready = threading.Event()

    def serve() -> None:
        service.start()
        ready.set()
        try:
            service.run()
        finally:
            service.shutdown()

    thread = threading.Thread(target=serve, name="daemon", daemon=True)
    thread.start()
    assert ready.wait(timeout=30), "the daemon did not start"
    try:
        yield d, service
    finally:
        service.stop_event.set()
        thread.join(timeout=30)


def start_configured_daemon(home: Path, toml: str, **extra: str) -> DaemonProcess:
    """A daemon on a new ``home`` whose ``profiler.toml`` holds ``toml`` (pricing, budgets)."""
    home.mkdir()
    (home / "profiler.toml").write_text(toml)
    return start_daemon(home, **extra)


def ended_run(d: DaemonProcess, run_id: str) -> dict:
    """Run ``run_id`` as ``profiler runs --json`` gives it, once it has ended (waits up to 30 s)."""

    def done() -> dict | None:
        found = [r for r in d.runs() if r["id"] == run_id and r["status"] != "running"]
        return found[0] if found else None

    return wait_for(done, timeout=30, what=f"run {run_id} to end")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path / "home")
    yield d
    if d.proc.poll() is None:
        d.stop()


@pytest.fixture
def process_tree():
    """A child that started a grandchild: ``(child, grandchild pid)``."""
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', "
        "'import time\\nt = time.time()\\nwhile time.time() - t < 20: pass'])\n"
        "print(p.pid, flush=True)\ntime.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    yield child, grandchild
    for pid in (grandchild, child.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child.wait()


def sleeping_processes(n: int) -> Iterator[tuple[int, ...]]:
    """``n`` living processes for a simulated GPU to attach (their loads are set by the test);
    killed and reaped afterwards."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(n)
    ]
    try:
        yield tuple(p.pid for p in procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture
def two_pids() -> Iterator[tuple[int, ...]]:
    """Two living processes (pids) for a simulated GPU to attach."""
    yield from sleeping_processes(2)


@pytest.fixture
def three_pids() -> Iterator[tuple[int, ...]]:
    """Three living processes (pids) for a simulated GPU to attach."""
    yield from sleeping_processes(3)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; that value is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in exposition text (None when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class PrometheusProcess:
    """A real ``prometheus`` on a free loopback port, scraping ``targets`` every second."""

    proc: subprocess.Popen
    base: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_prometheus(tmp_path: Path, metrics_urls: list[str]) -> PrometheusProcess:
    """Start Debian's ``prometheus`` scraping the daemons' ``/metrics`` URLs (skips the test
    when it is missing, unless PROFILER_REQUIRE_PROMTOOL is set); returns once it answers."""
    import shutil
    import socket
    import urllib.parse

    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("PROFILER_REQUIRE_PROMTOOL"):
            pytest.fail("prometheus not found: install Debian's prometheus package (make test)")
        pytest.skip("prometheus not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    targets = ", ".join(f"'{urllib.parse.urlparse(u).netloc}'" for u in metrics_urls)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n- job_name: ml-profiler\n  static_configs: [{{targets: [{targets}]}}]\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    prom = PrometheusProcess(proc, f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=30, what="prometheus to answer")
    except AssertionError:
        prom.stop()
        raise
    return prom


def promql(base: str, expr: str) -> list:
    """An instant query's result list (AssertionError with Prometheus's reason if refused)."""
    import urllib.error
    import urllib.parse

    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"prometheus refused {expr!r}: {e.read().decode()[:300]}") from e
    assert body["status"] == "success", body
    return body["data"]["result"]


def exported_series_names(home: Path) -> set[str]:
    """Every series name the exporter can emit: the exposition of an in-process daemon with a
    priced run that took steps (with loss and framework memory) and CPU energy; families with no
    samples count too."""
    import re

    from inprocess import hello, make_daemon, pricing

    from profiler.daemon.exporter import render_metrics
    from profiler.ingest.messages import StepBatch, StepExtras

    d, _sim, clock = make_daemon(home, [[(100.0, 250.0)]])
    d.set_pricing(pricing(kind="flat", gph=3.6, kwh=0.2, pue=1.5, carbon=300.0))
    d.sample()
    d.handle(hello("r", os.getpid(), clock.now))
    extras = StepExtras(loss=1.0, memory=(1, 2, 3))
    for i in range(1, 30):
        clock.now += 0.1
        d.sample()
        d.handle(StepBatch("r", os.getpid(), ((i, clock.now - 0.1, clock.now, 8, extras),), 0))
    d.cpu.energy_j = {"package-0": (100.0, "rapl")}  # as a CPU sensor would give
    text = render_metrics(d).decode()
    assert 'profiler_run_cost_total{run="r",component="gpu_time"}' in text
    names: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            names.update(name + s for s in suffixes.get(kind, []))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names
